"""Response shapes, for the OpenAPI document (handlers return plain JSON of the same shape)."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ModelRef(BaseModel):
    name: str
    version: int


class ImageSize(BaseModel):
    width: int
    height: int


class PersonOut(BaseModel):
    bbox: list[float] = Field(description="x1, y1, x2, y2 in image pixels")
    score: float = Field(description="mean keypoint score")
    keypoints: list[list[float]] = Field(description="17 × [x, y, score], COCO-17 order, image pixels")


class PoseResponse(BaseModel):
    id: str
    model: ModelRef
    detector: ModelRef | None
    image: ImageSize
    keypoint_names: list[str]
    people: list[PersonOut]
    timing_ms: dict[str, float]


class BatchResponse(BaseModel):
    results: list[PoseResponse]
    timing_ms: dict[str, float]


class ErrorBody(BaseModel):
    code: str = Field(description="stable, machine-readable (see the README's error table)")
    message: str = Field(description="for people")
    request_id: str = Field(description="the request's X-Request-ID, also in the service log")


class ErrorResponse(BaseModel):
    error: ErrorBody


class AliasUpdate(BaseModel):
    version: int = Field(ge=1)


class ModelsResponse(BaseModel):
    models: list[dict[str, Any]]
