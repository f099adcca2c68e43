"""The demo page at ``/``: plain HTML, CSS and JavaScript shipped in the package (``static/demo``), no
build step and no CDN. It calls the public API like any client and draws the answers."""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

DEMO = Path(__file__).resolve().parent / "static" / "demo"


def mount(app: FastAPI) -> None:
    app.mount("/static/demo", StaticFiles(directory=DEMO), name="demo")

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(DEMO / "index.html", media_type="text/html")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():  # browsers ask for it on every page; an SVG icon, so no 404 in the logs
        return FileResponse(DEMO / "favicon.svg", media_type="image/svg+xml")
