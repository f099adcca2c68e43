"""Using PoseKD from Python: the HTTP client (sync and async) and the in-process estimator, with the
same typed results. Public as the ``posekd`` package."""
from .http import APIError, AsyncClient, Client
from .local import Estimator, load
from .types import Person, PoseResult, VideoResult

__all__ = ["APIError", "AsyncClient", "Client", "Estimator", "Person", "PoseResult", "VideoResult", "load"]
