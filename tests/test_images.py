import cv2
import numpy as np
import pytest

from service.errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType
from service.images import decode_image, image_size, sniff

from .helpers import blob_image, encode, jpeg_with_orientation, png_bomb

LIMITS = {"max_bytes": 5_000_000, "max_pixels": 10_000_000}


@pytest.mark.parametrize("ext,kind", [(".jpg", "jpeg"), (".png", "png"), (".webp", "webp"), (".bmp", "bmp")])
def test_formats_decode_with_header_size(ext, kind):
    img = blob_image(w=123, h=77)
    data = encode(img, ext)
    assert sniff(data) == kind
    assert image_size(kind, data) == (123, 77)
    assert decode_image(data, **LIMITS)[0].shape == (77, 123, 3)


def test_exif_orientation_is_applied():
    img = blob_image(w=160, h=90, at=(20, 20))
    out = decode_image(jpeg_with_orientation(img, 6), **LIMITS).image
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


def test_large_jpeg_is_decoded_reduced_and_reports_its_factor():
    img = blob_image(w=1600, h=1000, at=(800, 500), sigma=40)
    data = encode(img, ".jpg")
    full, f1, size1, _ = decode_image(data, **LIMITS)
    small, f4, size4, _ = decode_image(data, **LIMITS, max_side=400)
    assert (full.shape, f1, size1) == ((1000, 1600, 3), 1.0, (1600, 1000))
    assert (small.shape, f4, size4) == ((250, 400, 3), 4.0, (1600, 1000))
    y, x = np.unravel_index(small[:, :, 0].argmax(), small.shape[:2])
    assert abs(x * f4 - 800) <= 8 and abs(y * f4 - 500) <= 8
    rotated, fr, size_r, _ = decode_image(jpeg_with_orientation(img, 6), **LIMITS, max_side=400)
    assert (rotated.shape, fr, size_r) == ((400, 250, 3), 4.0, (1000, 1600))  # EXIF orientation still applied


def test_other_formats_are_reduced_right_after_decoding():
    img = blob_image(w=1600, h=1000, at=(800, 500), sigma=40)
    png, fp, size, _ = decode_image(encode(img, ".png"), **LIMITS, max_side=400)
    assert png.shape == (250, 400, 3) and fp == 4.0 and size == (1600, 1000)
    y, x = np.unravel_index(png[:, :, 0].argmax(), png.shape[:2])
    assert abs(x * fp - 800) <= 8 and abs(y * fp - 500) <= 8
    same, f1, _, _ = decode_image(encode(img, ".png"), **LIMITS, max_side=1400)  # within 1.25 × max_side: kept
    assert same.shape == (1000, 1600, 3) and f1 == 1.0


def test_the_pixel_budget_admits_waits_and_refuses():
    import threading

    from service.errors import Overloaded, PayloadTooLarge
    from service.images import PixelBudget

    budget = PixelBudget(100, wait_s=0.2)
    with pytest.raises(PayloadTooLarge):
        with budget.hold(101):
            pass
    with budget.hold(60):
        with pytest.raises(Overloaded) as err:  # 60 + 60 > 100, and nobody frees it within 0.2 s
            with budget.hold(60):
                pass
        assert err.value.status == 503 and err.value.retry_after
    released = threading.Event()

    def hold_then_release():
        with budget.hold(90):
            released.wait(5)

    t = threading.Thread(target=hold_then_release)
    t.start()
    while budget.in_use == 0:
        pass
    threading.Timer(0.05, released.set).start()
    budget.wait_s = 5
    with budget.hold(50):  # waits for the other decode to finish, then goes ahead
        assert budget.in_use == 50
    t.join()
    assert budget.in_use == 0 and budget.peak == 90


def test_a_progressive_jpeg_is_charged_its_full_size_however_much_it_is_reduced():
    from service.images import PixelBudget

    img = blob_image(w=1600, h=1200, at=(800, 600), sigma=40)
    baseline = encode(img, ".jpg")
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok
    peaks = {}
    for name, data in (("baseline", baseline), ("progressive", buf.tobytes())):
        budget = PixelBudget(10_000_000)
        d = decode_image(data, **LIMITS, max_side=400, budget=budget)
        assert d.image.shape[:2] == (300, 400)  # libjpeg reduced it by 4
        peaks[name] = budget.peak
        budget.release(d.held)
    assert peaks == {"baseline": 4 * 400 * 300, "progressive": int(1.25 * 1600 * 1200)}


def test_decode_keeps_only_the_reduced_image_on_the_budget():
    from service.errors import InvalidImage
    from service.images import PixelBudget

    budget = PixelBudget(10_000_000)
    img = blob_image(w=1600, h=1000, at=(800, 500), sigma=40)
    d = decode_image(encode(img, ".png"), **LIMITS, max_side=400, budget=budget)
    # charged the decode's measured peak (a PNG: 2.2 × its pixels) while it ran, the reduced image after
    assert d.held == 400 * 250 and budget.in_use == d.held and budget.peak == int(2.2 * 1600 * 1000)
    budget.release(d.held)
    with pytest.raises(InvalidImage):
        decode_image(encode(img, ".png")[:200], **LIMITS, budget=budget)
    assert budget.in_use == 0  # a failed decode gives everything back


def test_an_os2_bmp_reads_its_16_bit_header():
    """OS/2 1.x BMPs have a 12-byte header with 16-bit sizes: not '1048592×1572865 pixels'."""
    import struct

    from service.images import decode_image, image_size

    w, h = 5, 3
    row = (w * 3 + 3) // 4 * 4
    pixels = b"".join(bytes([10, 20, 200] * w) + b"\0" * (row - w * 3) for _ in range(h))
    data = b"BM" + struct.pack("<IHHI", 26 + len(pixels), 0, 0, 26) + struct.pack("<IHHHH", 12, w, h, 1, 24) + pixels
    assert image_size("bmp", data) == (5, 3)
    image = decode_image(data, max_bytes=10**6, max_pixels=100, max_side=1280)[0]
    assert image.shape == (3, 5, 3) and tuple(image[0, 0]) == (10, 20, 200)
