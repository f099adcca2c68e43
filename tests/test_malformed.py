"""The malformed-input corpus: every class of bad request a probe found (and its neighbours), each
answered with its documented status and error code — never a 5xx, never a path or an OS error — and
the service still answering a good request afterwards. One app serves the whole corpus, so a class
that broke the process would fail every class after it."""
from __future__ import annotations

import json
import struct
import zlib

import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.images import PixelBudget
from service.settings import Settings

from .helpers import blob_clip, blob_image, encode, make_store, png_bomb

PNG = encode(blob_image(at=(90, 100)))
JPEG = encode(blob_image(at=(90, 100)), ".jpg")
HEX = "0123456789abcdef" * 2  # a well-formed job id nobody made
LIMITS = dict(max_image_bytes=300_000, max_batch_images=3, max_batch_bytes=600_000, max_video_bytes=400_000,
              max_video_frames=25, max_video_pixels=400 * 300)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    store = make_store(root / "store")
    settings = Settings(model_store=store.root, default_pose_model="tiny-pose", default_detector="tiny-det",
                        store_poll_s=0, max_delay_ms=2, api_keys=[], admin_api_keys=[], ort_intra_threads=1,
                        min_score=0.0, **LIMITS)
    clips = {"ok": blob_clip(root / "ok.mp4", frames=10).read_bytes(),
             "long": blob_clip(root / "long.mp4", frames=30).read_bytes(),
             "wide": blob_clip(root / "wide.mp4", frames=5, w=640, h=480).read_bytes()}
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client, clips


def png_header(w: int, h: int, body: bytes = b"") -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF) + body)


def jpeg_claiming(w: int, h: int) -> bytes:
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, h, w, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + sof + b"\xff\xd9"


def chunks(total: int, size: int = 64 * 1024):
    def gen():
        sent = 0
        while sent < total:
            yield b"\0" * size
            sent += size
    return gen()


def image(data=PNG, ctype="image/png", **params):
    return dict(files={"image": ("x", data, ctype)}, params=params or None)


def raw(data: bytes, ctype: str = "image/png"):
    return dict(content=data, headers={"content-type": ctype})


def batch(*images):
    return dict(files=[("images", (f"{i}.png", d, "image/png")) for i, d in enumerate(images)])


def clip(name_or_bytes, **params):
    return lambda clips: dict(files={"video": ("c.mp4", clips.get(name_or_bytes, name_or_bytes)
                                               if isinstance(name_or_bytes, str) else name_or_bytes,
                                               "video/mp4")}, params=params or None)


LONG_NAME = "a" * 300
CASES = [
    # ---- POST /v1/pose: bodies ---------------------------------------------------------------------
    ("pose: empty raw body", "POST", "/v1/pose", raw(b""), 400, "invalid_image"),
    ("pose: empty multipart file", "POST", "/v1/pose", image(b""), 400, "invalid_image"),
    ("pose: truncated JPEG", "POST", "/v1/pose", raw(JPEG[:300], "image/jpeg"), 400, "invalid_image"),
    ("pose: truncated PNG data", "POST", "/v1/pose", raw(PNG[: len(PNG) // 2]), 400, "invalid_image"),
    ("pose: PNG header only", "POST", "/v1/pose", raw(PNG[:20]), 400, "invalid_image"),
    ("pose: PNG claiming 0x0", "POST", "/v1/pose", raw(png_header(0, 0)), 400, "invalid_image"),
    ("pose: PNG claiming 100000x1", "POST", "/v1/pose", raw(png_header(100_000, 1)), 400, "invalid_image"),
    ("pose: PNG header claiming 20000^2", "POST", "/v1/pose", raw(png_header(20_000, 20_000)), 413,
     "payload_too_large"),
    ("pose: real PNG bomb 20000^2", "POST", "/v1/pose", raw(png_bomb(20_000, 20_000)), 413, "payload_too_large"),
    ("pose: JPEG header claiming 60000^2", "POST", "/v1/pose", raw(jpeg_claiming(60_000, 60_000), "image/jpeg"),
     413, "payload_too_large"),
    ("pose: JPEG with no frame header", "POST", "/v1/pose", raw(b"\xff\xd8\xff\xe0" + b"\0" * 40, "image/jpeg"),
     400, "invalid_image"),
    ("pose: JPEG with a false frame header", "POST", "/v1/pose",
     raw(b"\xff\xd8" + b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 40, 40, 1) + b"\x01\x11\x00" + JPEG[2:],
         "image/jpeg"), 400, "invalid_image"),
    ("pose: BMP header only", "POST", "/v1/pose", raw(b"BM" + b"\0" * 10, "image/bmp"), 400, "invalid_image"),
    ("pose: BMP claiming 2^31 wide", "POST", "/v1/pose",
     raw(b"BM" + b"\0" * 16 + struct.pack("<ii", 2**31 - 1, 1000) + b"\0" * 30, "image/bmp"), 413,
     "payload_too_large"),
    ("pose: WebP garbage", "POST", "/v1/pose", raw(b"RIFF\0\0\0\0WEBPVP8 " + b"\0" * 4, "image/webp"), 400,
     "invalid_image"),
    ("pose: GIF", "POST", "/v1/pose", raw(b"GIF89a" + b"\0" * 64, "image/gif"), 415, "unsupported_media_type"),
    ("pose: TIFF", "POST", "/v1/pose", raw(b"II*\0" + b"\0" * 64, "application/octet-stream"), 415,
     "unsupported_media_type"),
    ("pose: text declared PNG", "POST", "/v1/pose", raw(b"plain text, not pixels"), 415, "unsupported_media_type"),
    ("pose: text/plain type", "POST", "/v1/pose", raw(b"hello", "text/plain"), 415, "unsupported_media_type"),
    ("pose: JSON body", "POST", "/v1/pose", dict(json={"image": "aGVsbG8="}), 415, "unsupported_media_type"),
    ("pose: urlencoded form", "POST", "/v1/pose", dict(data={"image": "x"}), 415, "unsupported_media_type"),
    ("pose: multipart without image field", "POST", "/v1/pose", dict(files={"picture": ("x", PNG, "image/png")}),
     422, "invalid_parameter"),
    ("pose: image as a text field", "POST", "/v1/pose", dict(data={"image": "x"}, files={"o": ("o", b"x")}), 422,
     "invalid_parameter"),
    ("pose: two image files", "POST", "/v1/pose", dict(files=[("image", ("a", PNG, "image/png")),
                                                              ("image", ("b", PNG, "image/png"))]), 413,
     "payload_too_large"),
    ("pose: multipart without boundary", "POST", "/v1/pose",
     raw(b"--zz\r\nnonsense", "multipart/form-data"), 400, "invalid_request"),
    ("pose: unterminated multipart", "POST", "/v1/pose",
     raw(b"--zz\r\nnonsense", "multipart/form-data; boundary=zz"), 422, "invalid_parameter"),
    ("pose: body over the byte limit (declared)", "POST", "/v1/pose", raw(b"\x89PNG" + b"\0" * 400_000), 413,
     "payload_too_large"),
    ("pose: chunked body over the byte limit", "POST", "/v1/pose",
     dict(content=chunks(1_000_000), headers={"content-type": "image/png"}), 413, "payload_too_large"),
    ("pose: multipart image over the byte limit", "POST", "/v1/pose", image(b"\x89PNG" + b"\0" * 400_000), 413,
     "payload_too_large"),
    # ---- POST /v1/pose: query parameters ------------------------------------------------------------
    ("pose: unknown model", "POST", "/v1/pose", image(model="ghost"), 404, "model_not_found"),
    ("pose: unknown version", "POST", "/v1/pose", image(model="tiny-pose:9"), 404, "model_not_found"),
    ("pose: unknown alias", "POST", "/v1/pose", image(model="tiny-pose@nope"), 404, "model_not_found"),
    ("pose: detector as pose model", "POST", "/v1/pose", image(model="tiny-det"), 404, "model_not_found"),
    ("pose: pose model as detector", "POST", "/v1/pose", image(detector="tiny-pose"), 404, "model_not_found"),
    ("pose: unknown detector", "POST", "/v1/pose", image(detector="ghost"), 404, "model_not_found"),
    ("pose: model with spaces", "POST", "/v1/pose", image(model="Bad Name!"), 422, "invalid_parameter"),
    ("pose: model path escape", "POST", "/v1/pose", image(model="../../etc"), 422, "invalid_parameter"),
    ("pose: model name too long", "POST", "/v1/pose", image(model=LONG_NAME), 422, "invalid_parameter"),
    ("pose: model 65 chars", "POST", "/v1/pose", image(model="m" * 65), 422, "invalid_parameter"),
    ("pose: version 0", "POST", "/v1/pose", image(model="tiny-pose:0"), 422, "invalid_parameter"),
    ("pose: version of 11 digits", "POST", "/v1/pose", image(model="tiny-pose:99999999999"), 422,
     "invalid_parameter"),
    ("pose: empty alias", "POST", "/v1/pose", image(model="tiny-pose@"), 422, "invalid_parameter"),
    ("pose: alias with a slash", "POST", "/v1/pose", image(model="tiny-pose@a/b"), 422, "invalid_parameter"),
    ("pose: version and alias", "POST", "/v1/pose", image(model="tiny-pose:1@production"), 422,
     "invalid_parameter"),
    ("pose: min_score 2", "POST", "/v1/pose", image(min_score=2), 422, "invalid_parameter"),
    ("pose: min_score -1", "POST", "/v1/pose", image(min_score=-1), 422, "invalid_parameter"),
    ("pose: min_score text", "POST", "/v1/pose", image(min_score="high"), 422, "invalid_parameter"),
    ("pose: min_score nan", "POST", "/v1/pose", image(min_score="nan"), 422, "invalid_parameter"),
    ("pose: max_people 0", "POST", "/v1/pose", image(max_people=0), 422, "invalid_parameter"),
    ("pose: max_people -3", "POST", "/v1/pose", image(max_people=-3), 422, "invalid_parameter"),
    ("pose: max_people past the ceiling", "POST", "/v1/pose", image(max_people=10_000), 422, "invalid_parameter"),
    ("pose: max_people float", "POST", "/v1/pose", image(max_people=2.5), 422, "invalid_parameter"),
    ("pose: boxes not JSON", "POST", "/v1/pose", image(boxes="[[1,2"), 422, "invalid_parameter"),
    ("pose: boxes of 3 numbers", "POST", "/v1/pose", image(boxes="[[1,2,3]]"), 422, "invalid_parameter"),
    ("pose: boxes flat", "POST", "/v1/pose", image(boxes="[1,2,3,4]"), 422, "invalid_parameter"),
    ("pose: boxes with a number past 7 digits", "POST", "/v1/pose", image(boxes="[[0,0,12345678,5]]"), 422,
     "invalid_parameter"),
    ("pose: boxes NaN", "POST", "/v1/pose", image(boxes="[[0,0,NaN,5]]"), 422, "invalid_parameter"),
    ("pose: boxes Infinity", "POST", "/v1/pose", image(boxes="[[0,0,Infinity,5]]"), 422, "invalid_parameter"),
    ("pose: boxes 1e300", "POST", "/v1/pose", image(boxes="[[0,0,1e300,1e300]]", min_score=0), 422,
     "invalid_parameter"),
    ("pose: boxes -1e300", "POST", "/v1/pose", image(boxes="[[-1e300,-1e300,5,5]]"), 422, "invalid_parameter"),
    ("pose: boxes past float32", "POST", "/v1/pose", image(boxes="[[0,0,1e39,1e39]]"), 422, "invalid_parameter"),
    ("pose: boxes of strings", "POST", "/v1/pose", image(boxes='[["a","b","c","d"]]'), 422, "invalid_parameter"),
    ("pose: boxes object", "POST", "/v1/pose", image(boxes='{"x": 1}'), 422, "invalid_parameter"),
    ("pose: boxes null", "POST", "/v1/pose", image(boxes="null"), 422, "invalid_parameter"),
    ("pose: too many boxes", "POST", "/v1/pose", image(boxes=json.dumps([[0, 0, 5, 5]] * 401)), 422,
     "invalid_parameter"),
    ("pose: boxes nested 1,000 deep", "POST", "/v1/pose", image(boxes="[" * 1000 + "]" * 1000), 422,
     "invalid_parameter"),
    ("pose: boxes nested 3 deep", "POST", "/v1/pose", image(boxes="[[[0,0,5,5]]]"), 422, "invalid_parameter"),
    ("render: boxes nested 1,000 deep", "POST", "/v1/pose/render", image(boxes="[" * 1000 + "]" * 1000), 422,
     "invalid_parameter"),
    ("pose: boxes over the length cap", "POST", "/v1/pose", image(boxes="[" * 20001), 422, "invalid_parameter"),
    # ---- POST /v1/pose/batch ------------------------------------------------------------------------
    ("batch: raw body", "POST", "/v1/pose/batch", raw(PNG), 415, "unsupported_media_type"),
    ("batch: no images field", "POST", "/v1/pose/batch", dict(files={"image": ("x", PNG, "image/png")}), 422,
     "invalid_parameter"),
    ("batch: more images than the limit", "POST", "/v1/pose/batch", batch(PNG, PNG, PNG, PNG), 413,
     "payload_too_large"),
    ("batch: 18 images", "POST", "/v1/pose/batch", batch(*[PNG] * 18), 413, "payload_too_large"),
    ("batch: one corrupt image", "POST", "/v1/pose/batch", batch(PNG, PNG[:30]), 400, "invalid_image"),
    ("batch: one GIF", "POST", "/v1/pose/batch", batch(PNG, b"GIF89a" + b"\0" * 40), 415,
     "unsupported_media_type"),
    ("batch: body over the batch byte limit", "POST", "/v1/pose/batch", batch(*[b"\x89PNG" + b"\0" * 250_000] * 3),
     413, "payload_too_large"),
    ("batch: bad boxes", "POST", "/v1/pose/batch", {**batch(PNG), "params": {"boxes": "[[1]]"}}, 422,
     "invalid_parameter"),
    # ---- models, V2 ---------------------------------------------------------------------------------
    ("models: 300-character name", "GET", f"/v1/models/{LONG_NAME}", {}, 422, "invalid_parameter"),
    ("models: '..' as name", "GET", "/v1/models/%2E%2E", {}, 422, "invalid_parameter"),
    ("models: upper-case name", "GET", "/v1/models/TINY", {}, 422, "invalid_parameter"),
    ("models: unknown name", "GET", "/v1/models/ghost", {}, 404, "model_not_found"),
    ("v2: 300-character name", "GET", f"/v2/models/{LONG_NAME}", {}, 422, "invalid_parameter"),
    ("v2: 300-character name, ready", "GET", f"/v2/models/{LONG_NAME}/ready", {}, 422, "invalid_parameter"),
    ("v2: '..' as name", "GET", "/v2/models/%2E%2E/ready", {}, 422, "invalid_parameter"),
    ("v2: version 0", "GET", "/v2/models/tiny-pose/versions/0", {}, 422, "invalid_parameter"),
    ("v2: version text", "GET", "/v2/models/tiny-pose/versions/abc", {}, 422, "invalid_parameter"),
    ("v2: version past the cap", "GET", "/v2/models/tiny-pose/versions/99999999999999999999", {}, 422,
     "invalid_parameter"),
    ("v2: unknown version", "GET", "/v2/models/tiny-pose/versions/99", {}, 404, "model_not_found"),
    ("v2: unknown model ready", "GET", "/v2/models/ghost/ready", {}, 404, "model_not_found"),
    ("alias: no body", "PUT", "/v1/models/tiny-pose/aliases/staging", {}, 422, "invalid_parameter"),
    ("alias: malformed JSON", "PUT", "/v1/models/tiny-pose/aliases/staging", dict(content=b"{version: 1"), 422,
     "invalid_parameter"),
    ("alias: version 0", "PUT", "/v1/models/tiny-pose/aliases/staging", dict(json={"version": 0}), 422,
     "invalid_parameter"),
    ("alias: version text", "PUT", "/v1/models/tiny-pose/aliases/staging", dict(json={"version": "one"}), 422,
     "invalid_parameter"),
    ("alias: version true", "PUT", "/v1/models/tiny-pose/aliases/staging", dict(json={"version": True}), 422,
     "invalid_parameter"),
    ("alias: version as a string", "PUT", "/v1/models/tiny-pose/aliases/staging", dict(json={"version": "1"}), 422,
     "invalid_parameter"),
    ("alias: version of 20 digits", "PUT", "/v1/models/tiny-pose/aliases/staging",
     dict(content=b'{"version": 99999999999999999999}'), 422, "invalid_parameter"),
    ("alias: JSON list", "PUT", "/v1/models/tiny-pose/aliases/staging", dict(json=[1]), 422, "invalid_parameter"),
    ("alias: unknown version", "PUT", "/v1/models/tiny-pose/aliases/staging", dict(json={"version": 99}), 404,
     "model_not_found"),
    ("alias: unknown model", "PUT", "/v1/models/ghost/aliases/staging", dict(json={"version": 1}), 404,
     "model_not_found"),
    ("alias: name with a space", "PUT", "/v1/models/tiny-pose/aliases/a%20b", dict(json={"version": 1}), 422,
     "invalid_parameter"),
    ("alias: 65-character name", "PUT", f"/v1/models/tiny-pose/aliases/{'a' * 65}", dict(json={"version": 1}),
     422, "invalid_parameter"),
    ("alias: model '..'", "PUT", "/v1/models/%2E%2E/aliases/x", dict(json={"version": 1}), 422,
     "invalid_parameter"),
    ("alias: body over 4 KiB", "PUT", "/v1/models/tiny-pose/aliases/staging", dict(content=b" " * 5000), 413,
     "payload_too_large"),
    # ---- jobs ---------------------------------------------------------------------------------------
    ("jobs: not an id", "GET", "/v1/jobs/notanid", {}, 404, "job_not_found"),
    ("jobs: unknown id", "GET", f"/v1/jobs/{HEX}", {}, 404, "job_not_found"),
    ("jobs: id with a suffix", "GET", f"/v1/jobs/{HEX}:result", {}, 404, "job_not_found"),
    ("jobs: 300-character id", "GET", f"/v1/jobs/{LONG_NAME}", {}, 404, "job_not_found"),
    ("jobs: '..' as id", "GET", "/v1/jobs/%2E%2E", {}, 404, "job_not_found"),
    ("jobs: result of an unknown id", "GET", f"/v1/jobs/{HEX}/result", {}, 404, "job_not_found"),
    ("jobs: video of an unknown id", "GET", f"/v1/jobs/{HEX}/video", {}, 404, "job_not_found"),
    ("jobs: delete a malformed id", "DELETE", "/v1/jobs/x..y", {}, 404, "job_not_found"),
    # ---- POST /v1/videos ----------------------------------------------------------------------------
    ("videos: raw body", "POST", "/v1/videos", raw(b"\0" * 100, "video/mp4"), 415, "unsupported_media_type"),
    ("videos: no video field", "POST", "/v1/videos", dict(files={"clip": ("c", b"x", "video/mp4")}), 422,
     "invalid_parameter"),
    ("videos: empty file", "POST", "/v1/videos", clip(b""), 400, "invalid_video"),
    ("videos: two video files", "POST", "/v1/videos",
     dict(files=[("video", ("a.mp4", b"x" * 100, "video/mp4")), ("video", ("b.mp4", b"y" * 100, "video/mp4"))]),
     413, "payload_too_large"),
    ("videos: text file", "POST", "/v1/videos", clip(b"this is not a video at all"), 400, "invalid_video"),
    ("videos: a PNG", "POST", "/v1/videos", clip(PNG), 415, "unsupported_media_type"),
    ("videos: truncated clip", "POST", "/v1/videos", lambda c: clip(c["ok"][:400])(c), 400, "invalid_video"),
    ("videos: over the frame limit", "POST", "/v1/videos", clip("long"), 413, "payload_too_large"),
    ("videos: over the pixel limit", "POST", "/v1/videos", clip("wide"), 413, "payload_too_large"),
    ("videos: over the byte limit (chunked)", "POST", "/v1/videos",
     dict(content=chunks(2_000_000), headers={"content-type": "multipart/form-data; boundary=zz"}), 413,
     "payload_too_large"),
    ("videos: keyframe_interval 0", "POST", "/v1/videos", clip("ok", keyframe_interval=0), 422,
     "invalid_parameter"),
    ("videos: malformed model", "POST", "/v1/videos", clip("ok", model="../x"), 422, "invalid_parameter"),
    ("videos: unknown model", "POST", "/v1/videos", clip("ok", model="ghost"), 404, "model_not_found"),
    ("videos: render not a bool", "POST", "/v1/videos", clip("ok", render="maybe"), 422, "invalid_parameter"),
    # ---- routes and methods -------------------------------------------------------------------------
    ("GET /v1/pose", "GET", "/v1/pose", {}, 405, "method_not_allowed"),
    ("PUT /v1/pose/batch", "PUT", "/v1/pose/batch", {}, 405, "method_not_allowed"),
    ("DELETE /v1/models", "DELETE", "/v1/models", {}, 405, "method_not_allowed"),
    ("GET /v1/admin/reload", "GET", "/v1/admin/reload", {}, 405, "method_not_allowed"),
    ("unknown route", "GET", "/v1/nothing", {}, 404, "not_found"),
    ("unknown version prefix", "POST", "/v3/pose", {}, 404, "not_found"),
]


@pytest.mark.parametrize("what,method,path,kwargs,status,code", CASES, ids=[c[0] for c in CASES])
def test_malformed_input_gets_its_documented_error_and_the_service_keeps_serving(corpus, what, method, path,
                                                                                 kwargs, status, code):
    client, clips = corpus
    kwargs = kwargs(clips) if callable(kwargs) else kwargs
    r = client.request(method, path, **kwargs)
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["error"]["code"] == code and body["error"]["message"], body
    assert "Traceback" not in r.text and "/tmp" not in r.text and "corpus" not in r.text  # no paths
    if status == 405:
        assert r.headers.get("allow"), "a 405 says which methods the route has"
    good = client.post("/v1/pose", files={"image": ("x.png", PNG, "image/png")})
    assert good.status_code == 200 and len(good.json()["people"]) == 1
    settings = client.app.state.service.settings
    assert PixelBudget.shared(settings.max_decode_pixels, settings.decode_wait_s).in_use == 0  # nothing leaked


def test_the_corpus_is_large():
    assert len(CASES) >= 80 and len({c[0] for c in CASES}) == len(CASES)


def test_a_chunked_upload_is_read_no_further_than_its_limit():
    """What reaches the multipart parser (and so the disk) stops one chunk past the limit, whatever
    the client keeps sending: 400 MB offered, at most limit + one 1 MiB chunk read."""
    import asyncio

    from starlette.requests import Request

    from service.api.bodies import BodyTooLarge, limited

    chunk, offered, limit = 1 << 20, 400, 5 << 20
    sent = {"chunks": 0}

    async def receive():
        sent["chunks"] += 1
        return {"type": "http.request", "body": b"\0" * chunk, "more_body": sent["chunks"] < offered}

    scope = {"type": "http", "method": "POST", "path": "/v1/videos", "headers": [], "query_string": b""}

    async def read_all():
        async for _ in limited(Request(scope, receive=receive), limit).stream():
            pass

    with pytest.raises(BodyTooLarge):
        asyncio.run(read_all())
    assert sent["chunks"] * chunk <= limit + chunk
