"""Domain errors. Each carries a stable ``code`` and the HTTP status the API answers with;
only ``service.api`` turns them into responses."""
from __future__ import annotations


class PoseKDError(Exception):
    code = "internal_error"
    status = 500

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.retry_after = retry_after


class InvalidImage(PoseKDError):
    code, status = "invalid_image", 400


class UnsupportedMediaType(PoseKDError):
    code, status = "unsupported_media_type", 415


class PayloadTooLarge(PoseKDError):
    code, status = "payload_too_large", 413


class InvalidParameter(PoseKDError):
    code, status = "invalid_parameter", 422


class ModelNotFound(PoseKDError):
    code, status = "model_not_found", 404


class ModelUnavailable(PoseKDError):
    """The model exists but cannot be served (failed verification, failed to load)."""
    code, status = "model_unavailable", 409


class ManifestError(PoseKDError):
    code, status = "invalid_manifest", 422


class Unauthorized(PoseKDError):
    code, status = "unauthorized", 401


class Forbidden(PoseKDError):
    code, status = "forbidden", 403


class Overloaded(PoseKDError):
    code, status = "overloaded", 503

    def __init__(self, message: str, retry_after: float = 1.0, **kw):
        super().__init__(message, retry_after=retry_after, **kw)


class Timeout(PoseKDError):
    code, status = "timeout", 504
