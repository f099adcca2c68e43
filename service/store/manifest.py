"""The model manifest (``model.json``): what it takes to run a model and to trust it."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..keypoints import COCO17, SKELETON

POSE_DECODERS = ("heatmap", "movenet_heads", "keypoints")
DETECTION_DECODERS = ("multipose", "centernet", "boxes")


class InputSpec(BaseModel):
    """How an image (or crop) becomes the model's input tensor:
    ``value = (pixel_rgb_or_bgr * scale - mean) / std`` cast to ``dtype``, laid out as ``layout``."""
    model_config = ConfigDict(extra="forbid")

    name: str
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    dtype: Literal["float32", "float16", "uint8", "int32"] = "float32"
    height: int = Field(gt=0)
    width: int = Field(gt=0)
    color: Literal["RGB", "BGR"] = "RGB"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # detectors: keep the aspect ratio and pad right/bottom ("letterbox") or stretch to the input size
    resize: Literal["letterbox", "stretch"] = "letterbox"
    # the ONNX graph takes this many images per call at most (1 for graphs with a fixed batch); 0: any
    max_batch: int = Field(default=0, ge=0)
    # letterboxed detectors whose graph takes any height and width that are multiples of this (0: exactly
    # height x width): the view keeps the image's aspect within height x width and is padded only to the
    # next multiple, so a 640x480 photo runs at 256x192 instead of 256x256
    size_multiple: int = Field(default=0, ge=0, le=1024)

    @field_validator("std")
    @classmethod
    def _nonzero_std(cls, v):
        if any(s == 0 for s in v):
            raise ValueError("std must not contain zeros")
        return v

    @model_validator(mode="after")
    def _whole_multiples(self):
        k = self.size_multiple
        if k and (self.resize != "letterbox" or self.height % k or self.width % k):
            raise ValueError(f"size_multiple {k} needs resize 'letterbox' and a height and width that are "
                             "multiples of it")
        return self


class OutputSpec(BaseModel):
    """How the model's outputs are decoded. ``decoder`` picks the code path; ``params`` tune it."""
    model_config = ConfigDict(extra="forbid")

    decoder: str
    names: list[str] = Field(default_factory=list)  # output tensor names, in the order the decoder wants
    params: dict[str, Any] = Field(default_factory=dict)


class CropSpec(BaseModel):
    """Top-down crops: the person box is squared to the input's aspect and enlarged by ``margin``."""
    model_config = ConfigDict(extra="forbid")
    margin: float = Field(default=1.25, ge=1.0, le=3.0)


class Lineage(BaseModel):
    model_config = ConfigDict(extra="allow")
    source: str | None = None  # where the ONNX file came from (a path, a package, a training run)
    teacher: str | None = None
    recipe: str | None = None
    data: list[str] = Field(default_factory=list)
    command: str | None = None
    git_commit: str | None = None
    license: str | None = None


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    version: int = Field(ge=1)
    task: Literal["pose", "person_detection"]
    description: str = ""
    file: str = "model.onnx"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    input: InputSpec
    output: OutputSpec
    crop: CropSpec = Field(default_factory=CropSpec)
    keypoint_names: list[str] = Field(default_factory=lambda: list(COCO17))
    skeleton: list[tuple[int, int]] = Field(default_factory=lambda: [(a, b) for a, b in SKELETON])
    params: int | None = None
    gflops: float | None = None
    lineage: Lineage = Field(default_factory=Lineage)
    metrics: dict[str, Any] = Field(default_factory=dict)
    created_at: str | None = None

    @model_validator(mode="after")
    def _decoder_fits_task(self):
        allowed = POSE_DECODERS if self.task == "pose" else DETECTION_DECODERS
        if self.output.decoder not in allowed:
            raise ValueError(f"decoder {self.output.decoder!r} does not fit task {self.task!r}; "
                             f"choose one of {', '.join(allowed)}")
        if self.task == "pose" and len(self.keypoint_names) != len(COCO17):
            raise ValueError("pose models must predict the 17 COCO keypoints")
        if "/" in self.file or self.file.startswith("."):
            raise ValueError("file must be a plain file name inside the version folder")
        return self


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def graph_outputs(manifest: Manifest, session) -> list[str]:
    """The output names to fetch from an ONNX Runtime session for this manifest (all of the graph's
    when the manifest names none); ValueError when the graph lacks the manifest's input or outputs.
    Used by the importer (validation) and by the runtime (loading), so both apply one rule."""
    inputs = [i.name for i in session.get_inputs()]
    if manifest.input.name not in inputs:
        raise ValueError(f"the graph has no input {manifest.input.name!r} (it has {sorted(inputs)})")
    available = [o.name for o in session.get_outputs()]
    names = list(manifest.output.names) or available
    missing = [n for n in names if n not in available]
    if missing:
        raise ValueError(f"the graph has no outputs {missing} (it has {available})")
    return names


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
