"""Brokers between the API and the workers that batch and run the pipeline."""
from .base import Broker, JobResult, PoseJob
from .local import LocalBroker

__all__ = ["Broker", "JobResult", "LocalBroker", "PoseJob"]
