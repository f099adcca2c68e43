"""The overlay MP4: frames drawn by :func:`service.drawing.draw`, encoded with H.264 through libx264 when
PyAV's FFmpeg has it, MPEG-4 part 2 otherwise."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import numpy as np


class Mp4Writer:
    """Encodes BGR frames to an MP4 file, one at a time, with the clip's timestamps."""

    def __init__(self, path: Path, width: int, height: int, fps: float, sample_aspect=(1, 1)):
        import av
        self.container = av.open(str(path), mode="w", format="mp4")
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        rate = Fraction(fps).limit_denominator(1001) if fps > 0 else Fraction(25)
        self.stream: Any = cast(Any, self.container.add_stream(codec, rate=rate))  # PyAV types it as a union
        self.stream.width, self.stream.height = width - width % 2, height - height % 2
        self.stream.pix_fmt = "yuv420p"
        if tuple(sample_aspect) != (1, 1):  # keep the clip's pixel shape: the overlay plays unsquashed
            self.stream.codec_context.sample_aspect_ratio = Fraction(*sample_aspect)
        if codec == "libx264":
            self.stream.options = {"preset": "veryfast", "crf": "23"}
        self.codec = codec
        self._av = av

    def write(self, image: np.ndarray) -> None:
        h, w = self.stream.height, self.stream.width
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:h, :w]), format="bgr24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
