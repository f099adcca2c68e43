"""Inference pipeline: ONNX Runtime models, pre-processing, decoders and the top-down pipeline."""
from ..person import Person
from .pipeline import ImageResult, ImageTask, PosePipeline

__all__ = ["ImageResult", "ImageTask", "Person", "PosePipeline"]
