import numpy as np
import pytest

from service.api.images import decode_image, image_size, sniff
from service.errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType

from .helpers import blob_image, encode, jpeg_with_orientation, png_bomb

LIMITS = {"max_bytes": 5_000_000, "max_pixels": 10_000_000}


@pytest.mark.parametrize("ext,kind", [(".jpg", "jpeg"), (".png", "png"), (".webp", "webp"), (".bmp", "bmp")])
def test_formats_decode_with_header_size(ext, kind):
    img = blob_image(w=123, h=77)
    data = encode(img, ext)
    assert sniff(data) == kind
    assert image_size(kind, data) == (123, 77)
    assert decode_image(data, **LIMITS).shape == (77, 123, 3)


def test_exif_orientation_is_applied():
    img = blob_image(w=160, h=90, at=(20, 20))
    out = decode_image(jpeg_with_orientation(img, 6), **LIMITS)
    assert out.shape == (160, 90, 3)  # rotated 90°: the blob moves from top-left to top-right
    assert out[:, :, 0].argmax() % 90 > 45


@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp", ".bmp"])
@pytest.mark.parametrize("keep", [0.98, 0.6, 0.05])
def test_truncated_images_are_invalid(ext, keep):
    data = encode(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8), ext)
    with pytest.raises(InvalidImage):
        decode_image(data[: int(len(data) * keep)], **LIMITS)


def test_decompression_bomb_is_refused_before_decoding():
    bomb = png_bomb(20000, 20000)
    assert len(bomb) < 2_000_000
    with pytest.raises(PayloadTooLarge, match="20000×20000"):
        decode_image(bomb, **LIMITS)


def test_bytes_limit_and_empty_and_garbage():
    with pytest.raises(PayloadTooLarge):
        decode_image(b"\xff\xd8\xff" + b"0" * 100, max_bytes=50, max_pixels=10)
    with pytest.raises(InvalidImage, match="empty"):
        decode_image(b"", **LIMITS)
    with pytest.raises(UnsupportedMediaType):
        decode_image(b"hello, this is text", **LIMITS)
    with pytest.raises(UnsupportedMediaType, match="GIF"):
        decode_image(b"GIF89a" + b"\x00" * 50, **LIMITS)
    with pytest.raises(InvalidImage):
        decode_image(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, **LIMITS)
