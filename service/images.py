"""Uploaded image bytes → BGR pixels, with the checks that keep bad input out of the workers:
media type sniffed from the bytes (JPEG, PNG, WebP, BMP), byte and decoded-pixel limits checked on
the header before decoding (decompression bombs), EXIF orientation applied by the decoder.

Memory: decoding is admitted by a process-wide :class:`PixelBudget` (decoded pixels in flight across
all concurrent requests), and a large image is reduced as early as the format allows — JPEGs inside
libjpeg (1/2, 1/4, 1/8), other formats right after decoding — so what a request keeps while it waits
for the models is at most about ``max_side``² pixels per image, whatever was uploaded. Used by the API
(embedded mode) and by workers (Redis mode) alike; it knows nothing of either."""
from __future__ import annotations

import contextlib
import struct
import threading
import time
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from .errors import InvalidImage, Overloaded, PayloadTooLarge, UnsupportedMediaType
from .mediatypes import sniff

if TYPE_CHECKING:
    from .settings import ImageLimits


class PixelBudget:
    """At most ``limit`` decoded pixels being decoded at once in this process; a decode that would pass
    it waits up to ``wait_s`` for others to finish, then is refused with 503 (``Retry-After``). One
    image larger than the whole budget is refused with 413 (its own limit is ``max_image_pixels``)."""

    _shared: dict[tuple[int, float], PixelBudget] = {}
    _shared_lock = threading.Lock()

    def __init__(self, limit: int, wait_s: float = 10.0):
        self.limit, self.wait_s = int(limit), float(wait_s)
        self.in_use = 0
        self.peak = 0
        self._cond = threading.Condition()

    @classmethod
    def shared(cls, limit: int, wait_s: float = 10.0) -> PixelBudget:
        """The process-wide budget for these settings (the API's threads and a worker's decoders share it)."""
        with cls._shared_lock:
            key = (int(limit), float(wait_s))
            if key not in cls._shared:
                cls._shared[key] = cls(limit, wait_s)
            return cls._shared[key]

    def acquire(self, pixels: int) -> int:
        """Take ``pixels`` from the budget, waiting up to ``wait_s`` (then 503); returns what was taken
        (0 when the budget is off), to give back with :meth:`release`."""
        if self.limit <= 0:
            return 0
        if pixels > self.limit:
            raise PayloadTooLarge(f"decoding this image needs {pixels} pixels at once; the budget of the "
                                  f"whole service is {self.limit} (POSEKD_MAX_DECODE_PIXELS)")
        deadline = time.monotonic() + self.wait_s
        with self._cond:
            while self.in_use + pixels > self.limit:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Overloaded("too many large images are in flight at once; retry shortly", retry_after=1)
                self._cond.wait(left)
            self.in_use += pixels
            self.peak = max(self.peak, self.in_use)
        return pixels

    def release(self, pixels: int) -> None:
        if pixels <= 0:
            return
        with self._cond:
            self.in_use -= pixels
            self._cond.notify_all()

    @contextlib.contextmanager
    def hold(self, pixels: int):
        taken = self.acquire(pixels)
        try:
            yield
        finally:
            self.release(taken)


class Decoded(NamedTuple):
    image: np.ndarray  # BGR uint8, possibly reduced
    scale: float  # original pixels per pixel of ``image``
    size: tuple[int, int]  # the original (width, height), after EXIF orientation
    held: int = 0  # pixels still taken from the budget for ``image``: the caller releases them when done

SUPPORTED = ("jpeg", "png", "webp", "bmp")
DECLARED_TYPES = {"image/jpeg", "image/jpg", "image/pjpeg", "image/png", "image/webp", "image/bmp",
                  "image/x-bmp", "image/x-ms-bmp", "application/octet-stream"}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > n:
                return None
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return w, h
        i += 2 + length
    return None


def _jpeg_frame_marker(data: bytes) -> int | None:
    """The JPEG's start-of-frame marker (0xC0 baseline, 0xC2 progressive, …), None when not found."""
    i, n = 2, len(data)
    while i + 4 <= n and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF or marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 1 if marker == 0xFF else 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return marker
        i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    return None


# peak memory of a decode, in decoded-picture units, measured with OpenCV 4 on a 4000² picture (VmHWM of a
# fresh process): PNG 2.1×, BMP 2.1×, WebP 2.4× the picture (the decoder's buffer, then the BGR copy);
# a progressive JPEG 1.1× the full picture whatever the reduction (libjpeg keeps every DCT coefficient);
# a baseline JPEG reduced by libjpeg about 4× its reduced output
DECODE_PEAK = {"png": 2.2, "bmp": 2.2, "webp": 2.5, "jpeg": 1.25, "progressive": 1.25, "reduced_jpeg": 4.0}


def decode_cost(kind: str, data: bytes, w: int, h: int, factor: int) -> int:
    """The memory a decode occupies at its peak, in pixels (3 bytes each): what the pixel budget is
    charged while it runs (:data:`DECODE_PEAK`)."""
    reduced = -(-w // factor) * -(-h // factor)
    if kind == "jpeg":
        if _jpeg_frame_marker(data) in (0xC2, 0xC6, 0xCA, 0xCE):
            return int(DECODE_PEAK["progressive"] * w * h)
        return int(DECODE_PEAK["reduced_jpeg" if factor > 1 else "jpeg"] * reduced)
    return int(DECODE_PEAK.get(kind, 2.5) * w * h)


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        w = 1 + int.from_bytes(data[24:27], "little")
        h = 1 + int.from_bytes(data[27:30], "little")
        return w, h
    if chunk == b"VP8 " and len(data) >= 30:
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:
        b = int.from_bytes(data[21:25], "little")
        return 1 + (b & 0x3FFF), 1 + ((b >> 14) & 0x3FFF)
    return None


def image_size(kind: str, data: bytes) -> tuple[int, int] | None:
    """(width, height) read from the header, without decoding; None when the header is unreadable."""
    try:
        if kind == "png" and len(data) >= 24 and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if kind == "bmp" and len(data) >= 26:
            (info_size,) = struct.unpack("<I", data[14:18])
            if info_size == 12:  # OS/2 1.x BITMAPCOREHEADER: 16-bit width and height
                w, h = struct.unpack("<HH", data[18:22])
            else:  # BITMAPINFOHEADER and its successors (40, 52, 56, 64, 108, 124 bytes): 32-bit, signed
                w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)
        if kind == "jpeg":
            return _jpeg_size(data)
        if kind == "webp":
            return _webp_size(data)
    except struct.error:
        return None
    return None


def check_declared_type(content_type: str | None) -> None:
    """A declared type that is not an image we read is refused before the body is looked at."""
    if not content_type:
        return
    base = content_type.split(";")[0].strip().lower()
    if base and base not in DECLARED_TYPES:
        raise UnsupportedMediaType(f"content type {base!r} is not supported; send JPEG, PNG, WebP or BMP")


_REDUCED = {2: "IMREAD_REDUCED_COLOR_2", 4: "IMREAD_REDUCED_COLOR_4", 8: "IMREAD_REDUCED_COLOR_8"}


def reduction_for(kind: str, w: int, h: int, max_side: int) -> int:
    """How much smaller a JPEG may be decoded (libjpeg scales by 2, 4 or 8 during decoding, nearly
    for free) while its long side stays at least ``max_side``; 1 for other formats or ``max_side`` 0."""
    if kind != "jpeg" or max_side <= 0:
        return 1
    factor = 1
    for f in (2, 4, 8):
        if max(w, h) / f >= max_side:
            factor = f
    return factor


def inspect_image(data: bytes, *, max_bytes: int, max_pixels: int) -> tuple[str, int, int]:
    """(format, width, height) from the bytes and the header alone, with every limit checked: what
    the API does before an upload goes to a worker that decodes it."""
    if not data:
        raise InvalidImage("the image is empty")
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"the image has {len(data)} bytes; the limit is {max_bytes}")
    kind = sniff(data)
    if kind is None:
        raise UnsupportedMediaType("the body is not a JPEG, PNG, WebP or BMP image")
    if kind not in SUPPORTED:
        raise UnsupportedMediaType(f"{kind.upper()} images are not supported; send JPEG, PNG, WebP or BMP")
    size = image_size(kind, data)
    if size is None:
        raise InvalidImage(f"the {kind.upper()} header is unreadable (truncated or corrupt)")
    w, h = size
    if w <= 0 or h <= 0:
        raise InvalidImage(f"the image claims a size of {w}×{h}")
    if w * h > max_pixels:
        raise PayloadTooLarge(f"the image is {w}×{h} = {w * h} pixels; the limit is {max_pixels}")
    return kind, w, h


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int, max_side: int = 0,
                 budget: PixelBudget | None = None) -> Decoded:
    """The decoded BGR image, reduced when its long side passes ``max_side`` (0: never): a JPEG first by
    libjpeg during decoding (see :func:`reduction_for`), then any image whose long side still passes
    1.25 × ``max_side`` right after decoding (area-averaged to a long side of ``max_side``). ``budget``
    admits the decode at its peak cost (:func:`decode_cost`); what the reduced image occupies stays taken
    (``Decoded.held``) until the caller releases it."""
    import cv2

    kind, w, h = inspect_image(data, max_bytes=max_bytes, max_pixels=max_pixels)
    factor = reduction_for(kind, w, h, max_side)
    flag = getattr(cv2, _REDUCED[factor]) if factor > 1 else cv2.IMREAD_COLOR
    taken = budget.acquire(decode_cost(kind, data, w, h, factor)) if budget is not None else 0
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)  # applies EXIF orientation
        if image is None or image.size == 0:
            raise InvalidImage(f"the {kind.upper()} image could not be decoded (truncated or corrupt)")
        expected = (-(-w // factor), -(-h // factor))
        got = (image.shape[1], image.shape[0])
        if got == expected[::-1] and got != expected:  # EXIF turned it by 90°
            w, h = h, w
        elif got != expected:  # the data is not the picture the header announced (and was admitted for)
            raise InvalidImage(f"the {kind.upper()} header says {w}×{h} but its data decodes to "
                               f"{got[0] * factor}×{got[1] * factor}")
        long_side = max(image.shape[:2])
        if max_side > 0 and long_side > max_side * 1.25:  # (a JPEG libjpeg reduced can still be up to 2×)
            r = max_side / long_side
            image = cv2.resize(image, (max(1, round(image.shape[1] * r)), max(1, round(image.shape[0] * r))),
                               interpolation=cv2.INTER_AREA)
    except BaseException:
        if budget is not None:
            budget.release(taken)
        raise
    kept = min(taken, image.shape[0] * image.shape[1])  # the reduced image stays in flight until answered
    if budget is not None:
        budget.release(taken - kept)
    return Decoded(image, w / image.shape[1], (w, h), kept)


def budget_for(limits: ImageLimits) -> PixelBudget:
    """The process-wide pixel budget of these limits (``POSEKD_MAX_DECODE_PIXELS``, ``…_DECODE_WAIT_S``)."""
    return PixelBudget.shared(limits.max_decode_pixels, limits.decode_wait_s)


def decode_upload(data: bytes, limits: ImageLimits) -> Decoded:
    """:func:`decode_image` with the service's limits and its process-wide budget; the caller releases
    ``Decoded.held`` on ``budget_for(limits)`` when done with the image."""
    return decode_image(data, max_bytes=limits.max_bytes, max_pixels=limits.max_pixels,
                        max_side=limits.decode_max_side, budget=budget_for(limits))
