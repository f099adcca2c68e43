"""Brokers between the API and the workers that batch and run the pipeline."""
from .base import Broker, PoseAnswer, PoseRequest
from .local import LocalBroker

__all__ = ["Broker", "PoseAnswer", "LocalBroker", "PoseRequest"]
