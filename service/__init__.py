"""PoseKD runtime: model store, inference pipeline, broker and HTTP API. Never imports torch."""

__version__ = "0.1.0"
