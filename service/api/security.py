"""Optional API keys: ``X-API-Key: KEY`` or ``Authorization: Bearer KEY``."""
from __future__ import annotations

import hashlib
import hmac

from fastapi import Depends, Request

from ..errors import Forbidden, Unauthorized
from .state import service_of


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


LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def _check(request: Request, admin: bool) -> None:
    settings = service_of(request).settings
    if not settings.auth_enabled:
        if admin and not settings.open_admin and not (settings.host in LOOPBACK or settings.host.startswith("127.")):
            # no keys and reachable from other machines: anyone could move the production aliases
            raise Forbidden(f"admin routes are closed: the service listens on {settings.host} with no admin key; set "
                            f"POSEKD_ADMIN_API_KEYS (or POSEKD_OPEN_ADMIN=true to open them without a key)")
        return
    key = _presented(request)
    if not key:
        raise Unauthorized("this route needs an admin API key" if admin else
                           "an API key is required (X-API-Key header or Authorization: Bearer)")
    allowed = (settings.admin_api_keys or settings.api_keys) if admin else settings.api_keys + settings.admin_api_keys
    if not _matches(key, allowed):
        raise Forbidden("this route needs an admin API key" if admin else "the API key is not valid")


def owner_of(request: Request) -> str | None:
    """Who a request acts for, as stored with what it creates: a digest of its API key (never the key
    itself); None with keys off."""
    if not service_of(request).settings.auth_enabled:
        return None
    key = _presented(request)
    return hashlib.sha256(key.encode()).hexdigest()[:24] if key else None


def may_see(request: Request, owner: str | None) -> bool:
    """Whether the request's key may read or delete something ``owner`` created: its own, or any with
    an admin key; everything with keys off."""
    settings = service_of(request).settings
    if not settings.auth_enabled or owner is None:
        return True
    key = _presented(request)
    if key and settings.admin_api_keys and _matches(key, settings.admin_api_keys):
        return True
    return owner_of(request) == owner


def require_key(request: Request) -> None:
    _check(request, admin=False)


def require_admin(request: Request) -> None:
    _check(request, admin=True)


RequireKey = Depends(require_key)
RequireAdmin = Depends(require_admin)
