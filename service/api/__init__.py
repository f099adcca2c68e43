"""HTTP API (FastAPI). The only package that speaks HTTP."""
from .app import create_app

__all__ = ["create_app"]
