"""Optional API keys: ``X-API-Key: KEY`` or ``Authorization: Bearer KEY``."""
from __future__ import annotations

import hmac

from fastapi import Depends, Request

from ..errors import Forbidden, Unauthorized


def _presented(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return None


def _matches(key: str, keys: list[str]) -> bool:
    return any(hmac.compare_digest(key.encode(), k.encode()) for k in keys)


def require_key(request: Request) -> None:
    settings = request.app.state.service.settings
    if not settings.auth_enabled:
        return
    key = _presented(request)
    if not key:
        raise Unauthorized("an API key is required (X-API-Key header or Authorization: Bearer)")
    if not _matches(key, settings.api_keys + settings.admin_api_keys):
        raise Forbidden("the API key is not valid")


def require_admin(request: Request) -> None:
    settings = request.app.state.service.settings
    if not settings.auth_enabled:
        return
    key = _presented(request)
    if not key:
        raise Unauthorized("this route needs an admin API key")
    admins = settings.admin_api_keys or settings.api_keys
    if not _matches(key, admins):
        raise Forbidden("this route needs an admin API key")


RequireKey = Depends(require_key)
RequireAdmin = Depends(require_admin)
