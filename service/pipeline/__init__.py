"""Inference pipeline: ONNX Runtime models, pre-processing, decoders and the top-down pipeline."""
from .pipeline import ImageResult, ImageTask, Person, PosePipeline

__all__ = ["ImageResult", "ImageTask", "Person", "PosePipeline"]
