"""Swagger UI at ``/docs`` and ReDoc at ``/redoc``, served from assets installed with the package
(the ``fastapi-offline`` distribution carries the swagger-ui and redoc bundles): both pages work on a
host with no network, unlike FastAPI's defaults, which load them from a CDN."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles

ASSETS = "/static/docs"
# images, fonts and fetches from this origin only (inline styles and the bundle's own blob workers allowed)
OFFLINE_POLICY = "img-src 'self' data:; font-src 'self' data:; connect-src 'self'"


def assets_dir() -> Path | None:
    try:
        folder = Path(str(resources.files("fastapi_offline") / "static"))
    except ModuleNotFoundError:
        return None
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def mount(app: FastAPI) -> None:
    folder = assets_dir()
    if folder is None:  # the package is missing: no documentation pages rather than pages that need a CDN
        return
    app.mount(ASSETS, StaticFiles(directory=folder), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger():
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title="PoseKD API",
                                   swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{ASSETS}/favicon.png")

    @app.get("/redoc", include_in_schema=False)
    async def redoc():
        page = get_redoc_html(openapi_url=app.openapi_url or "/openapi.json", title="PoseKD API",
                              redoc_js_url=f"{ASSETS}/redoc.standalone.js", redoc_favicon_url=f"{ASSETS}/favicon.png",
                              with_google_fonts=False)
        # the bundle's footer shows a logo from Redocly's CDN: the browser is told not to fetch it
        page.headers["Content-Security-Policy"] = OFFLINE_POLICY
        return page
