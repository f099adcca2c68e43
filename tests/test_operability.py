"""What an operator relies on: request ids everywhere, CORS, compression, warm-up, offline docs, the
access log and the version."""
from __future__ import annotations

import json
import logging
import re

import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.cli import main

from .helpers import blob_image, encode

PNG = encode(blob_image(at=(90, 100)))


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings)) as c:
        yield c


def test_a_request_id_is_generated_or_echoed_and_sits_in_errors_and_logs(settings, caplog):
    settings.access_log = "json"
    with TestClient(create_app(settings)) as client, caplog.at_level(logging.INFO, logger="posekd.access"):
        ok = client.post("/v1/pose", content=PNG, headers={"content-type": "image/png"})
        generated = ok.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", generated)
        mine = client.post("/v1/pose", content=b"junk", headers={"content-type": "image/png",
                                                                 "x-request-id": "trace-42.a"})
        assert mine.headers["x-request-id"] == "trace-42.a"
        assert mine.json()["error"]["request_id"] == "trace-42.a"  # the error names the request
        hostile = client.get("/healthz", headers={"x-request-id": "x" * 500})  # not echoed: replaced
        assert hostile.headers["x-request-id"] != "x" * 500
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "posekd.access"]
    by_id = {line["request_id"]: line for line in lines}
    assert by_id[generated]["status"] == 200 and by_id[generated]["path"] == "/v1/pose"
    assert by_id["trace-42.a"]["status"] == 415 and by_id["trace-42.a"]["ms"] >= 0


def test_log_lines_carry_the_request_id():
    from service.logs import REQUEST_ID, RequestIdFilter

    record = logging.LogRecord("posekd", logging.INFO, __file__, 1, "hello", None, None)
    token = REQUEST_ID.set("abc123")
    try:
        assert RequestIdFilter().filter(record) and record.request_id == "abc123"
    finally:
        REQUEST_ID.reset(token)
    outside = logging.LogRecord("posekd", logging.INFO, __file__, 1, "hello", None, None)
    RequestIdFilter().filter(outside)
    assert outside.request_id == "-"


def test_cors_origins_are_a_setting(settings):
    with TestClient(create_app(settings)) as client:  # default: no CORS headers at all
        r = client.options("/v1/pose", headers={"origin": "http://app.example",
                                                "access-control-request-method": "POST"})
        assert "access-control-allow-origin" not in r.headers
    settings.cors_origins = ["http://app.example"]
    with TestClient(create_app(settings)) as client:
        pre = client.options("/v1/pose", headers={"origin": "http://app.example",
                                                  "access-control-request-method": "POST",
                                                  "access-control-request-headers": "content-type,x-api-key"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://app.example"
        r = client.post("/v1/pose", content=PNG, headers={"content-type": "image/png", "origin": "http://app.example"})
        assert r.headers["access-control-allow-origin"] == "http://app.example"
        assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
        other = client.options("/v1/pose", headers={"origin": "http://evil.example",
                                                    "access-control-request-method": "POST"})
        assert other.headers.get("access-control-allow-origin") != "http://evil.example"


def test_cors_origins_parse_from_the_environment(monkeypatch):
    from service.settings import Settings
    monkeypatch.setenv("POSEKD_CORS_ORIGINS", "http://a.example, http://b.example")
    assert Settings().cors_origins == ["http://a.example", "http://b.example"]


def test_large_json_is_gzipped_for_clients_that_accept_it(client):
    files = [("images", (f"{i}.png", PNG, "image/png")) for i in range(10)]
    zipped = client.post("/v1/pose/batch", files=files, headers={"accept-encoding": "gzip"})
    assert zipped.headers.get("content-encoding") == "gzip" and len(zipped.json()["results"]) == 10
    plain = client.post("/v1/pose/batch", files=files, headers={"accept-encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.json()["results"][0]["people"]
    small = client.get("/healthz", headers={"accept-encoding": "gzip"})
    assert "content-encoding" not in small.headers  # below POSEKD_GZIP_MIN_BYTES: not worth it


def test_warm_up_runs_every_served_model_at_start(settings, store):
    from service.store.importer import import_model

    from .helpers import POSE_FIELDS, tiny_pose_onnx
    import_model(store, tiny_pose_onnx(store.root.parent / "other.onnx"), {**POSE_FIELDS, "name": "other-pose"})
    with TestClient(create_app(settings)) as client:  # defaults: the two default models only
        state = client.app.state.service
        assert sorted(state.warmed) == ["tiny-det:1", "tiny-pose:1"]
        assert "other-pose" not in {m.name for m in state.registry.loaded()}
    settings.warm_up = "all"
    with TestClient(create_app(settings)) as client:
        state = client.app.state.service
        assert sorted(state.warmed) == ["other-pose:1", "tiny-det:1", "tiny-pose:1"]
        r = client.post("/v1/pose", content=PNG, headers={"content-type": "image/png"}, params={"model": "other-pose"})
        assert r.status_code == 200
    settings.warm_up = "none"
    with TestClient(create_app(settings)) as client:
        assert client.app.state.service.warmed == []


def test_docs_and_redoc_load_from_packaged_assets(client):
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assert "cdn." not in html and "googleapis" not in html, page
        for src in re.findall(r'(?:src|href)="([^"]+)"', html):
            if src.startswith("/static/"):
                asset = client.get(src)
                assert asset.status_code == 200 and len(asset.content) > 1000, src
    assert client.get("/static/docs/swagger-ui-bundle.js").status_code == 200
    assert client.get("/static/docs/redoc.standalone.js").status_code == 200
    # the ReDoc bundle links a logo on Redocly's CDN: the page forbids images from elsewhere
    assert "img-src 'self' data:" in client.get("/redoc").headers["content-security-policy"]


def test_version_flag(capsys):
    from service import __version__
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"posekd {__version__}"


def test_every_cli_option_has_help():
    import argparse

    from service.cli import build_parser

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, path + [name])
            elif action.dest not in ("help", "version") and not action.help:
                yield " ".join(path) + " " + "/".join(action.option_strings or [action.dest])

    missing = list(walk(build_parser(), ["posekd"]))
    assert not missing, missing


def test_every_json_response_in_the_openapi_document_is_typed(client):
    spec = client.get("/openapi.json").json()
    untyped, seen = [], 0
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for code, response in op["responses"].items():
                for media, content in (response.get("content") or {}).items():
                    seen += 1
                    if media == "application/json" and not content.get("schema"):
                        untyped.append(f"{method.upper()} {path} {code}")
    assert seen > 40 and not untyped, untyped
    assert "text/plain" in spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert "video/mp4" in spec["paths"]["/v1/jobs/{job_id}/video"]["get"]["responses"]["200"]["content"]
    assert "429" not in spec["paths"]["/v1/pose"]["post"]["responses"]  # only codes a route can send
    assert "413" not in spec["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]
