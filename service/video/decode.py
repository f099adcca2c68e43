"""Streaming decode with PyAV (FFmpeg): frames one at a time with their presentation timestamps, so
variable-frame-rate clips keep their real times, and the display rotation applied. PyAV rather than
OpenCV because OpenCV's VideoCapture gives no reliable per-frame timestamps for VFR clips, reads only
from paths through its own FFmpeg build without the rotation side data everywhere, and its pip wheel
cannot write H.264; PyAV's wheel carries FFmpeg with libx264 for the overlay too."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import PayloadTooLarge, PoseKDError

CONTAINERS = {"mp4", "mov", "avi", "webm", "matroska", "mkv"}  # MP4/MOV share demuxer "mov,mp4,..."


class InvalidVideo(PoseKDError):
    code, status = "invalid_video", 400


@dataclass
class VideoInfo:
    width: int  # after rotation
    height: int
    fps: float
    frames: int  # from the container; an estimate when the container does not say
    duration: float  # seconds
    codec: str
    rotation: int  # degrees the frames are turned to display upright
    # the width of a pixel over its height ([1, 1]: square), e.g. [1024, 765] for a clip shown wider than
    # its pixel count; results stay in coded pixels, players stretch x by this
    sample_aspect: tuple[int, int] | list[int] = (1, 1)

    def as_dict(self) -> dict:
        out: dict = {"width": self.width, "height": self.height, "fps": round(self.fps, 3), "frames": self.frames}
        if tuple(self.sample_aspect) != (1, 1):
            out["sample_aspect_ratio"] = list(self.sample_aspect)
        return out


def _open(path: Path):
    import av
    try:
        return av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise InvalidVideo(f"the file is not a readable video ({exc.__class__.__name__})") from None


def _check_limits(w: int, h: int, duration: float, frames: int, *, max_seconds: float, max_frames: int,
                  max_pixels: int) -> None:
    if w * h > max_pixels:
        raise PayloadTooLarge(f"the video is {w}×{h}; the limit is {max_pixels} pixels per frame")
    if duration > max_seconds:
        raise PayloadTooLarge(f"the video lasts {duration:.1f} s; the limit is {max_seconds:g} s")
    if frames > max_frames:
        raise PayloadTooLarge(f"the video has {frames} frames; the limit is {max_frames}")


def probe(path: Path, *, max_seconds: float, max_frames: int, max_pixels: int) -> VideoInfo:
    """Read the header (and the first frame, to be sure the codec decodes) and check every limit."""
    container = _open(path)
    try:
        fmt = set(container.format.name.split(","))
        if not fmt & CONTAINERS:
            raise PoseKDError(f"container {container.format.name!r} is not supported; send MP4, MOV, AVI or WebM",
                              code="unsupported_media_type", status=415)
        if not container.streams.video:
            raise InvalidVideo("the file has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or 0
        fps = float(rate) if rate else 0.0
        duration = 0.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / 1_000_000
        frames = int(stream.frames) or int(round(duration * fps))
        # every limit the header can tell is checked before a frame is decoded (a 16000² frame would
        # cost hundreds of MB just to be refused)
        _check_limits(stream.codec_context.width or 0, stream.codec_context.height or 0, duration, frames,
                      max_seconds=max_seconds, max_frames=max_frames, max_pixels=max_pixels)
        first = next(iter(container.decode(stream)), None)
        if first is None:
            raise InvalidVideo("the video has no frames")
        rotation = int(getattr(first, "rotation", 0) or 0) % 360
        sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
        aspect = (sar.numerator, sar.denominator) if sar and sar.numerator > 0 else (1, 1)
        if rotation in (90, 270):
            aspect = aspect[::-1]
        w, h = first.width, first.height
        if rotation in (90, 270):
            w, h = h, w
        if not fps:
            fps = 1.0 / float(first.time_base) if first.time_base else 25.0
    except PoseKDError:
        raise
    except Exception as exc:  # FFmpeg errors on a broken stream
        raise InvalidVideo(f"the video could not be decoded: {exc}") from None
    finally:
        container.close()
    _check_limits(w, h, duration, frames, max_seconds=max_seconds, max_frames=max_frames, max_pixels=max_pixels)
    return VideoInfo(w, h, fps, frames, duration, stream.codec_context.name, rotation, aspect)


def upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """Turn a decoded frame the way its display matrix says (counter-clockwise degrees)."""
    if rotation == 90:
        return np.ascontiguousarray(np.rot90(image, 1))
    if rotation == 180:
        return np.ascontiguousarray(image[::-1, ::-1])
    if rotation == 270:
        return np.ascontiguousarray(np.rot90(image, -1))
    return image


def frames(path: Path, max_frames: int) -> Iterator[tuple[int, float, np.ndarray]]:
    """(index, seconds, BGR frame) one at a time; never more than ``max_frames`` (a container may
    understate its length)."""
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        start = None
        for i, frame in enumerate(container.decode(stream)):
            if i >= max_frames:
                raise PayloadTooLarge(f"the video has more than {max_frames} frames")
            t = float(frame.time) if frame.time is not None else i / float(stream.average_rate or 25)
            start = t if start is None else start
            image = upright(frame.to_ndarray(format="bgr24"), int(getattr(frame, "rotation", 0) or 0) % 360)
            yield i, t - start, image
    except PoseKDError:
        raise
    except Exception as exc:
        raise InvalidVideo(f"decoding failed: {exc}") from None
    finally:
        container.close()
