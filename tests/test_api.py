"""The HTTP API end to end with tiny real ONNX models: answers, documented errors, auth, aliases,
reloads, metrics and the V2 routes."""
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.store.importer import import_model

from .helpers import POSE_FIELDS, blob_image, encode, jpeg_with_orientation, png_bomb, tiny_pose_onnx


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings)) as c:
        yield c


PNG = encode(blob_image(at=(90, 100)))


def post_image(client, data=PNG, params=None, ctype="image/png", **kw):
    return client.post("/v1/pose", params=params, files={"image": ("x.png", data, ctype)}, **kw)


def assert_error(resp, status, code):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"]["code"] == code and body["error"]["message"]
    assert "Traceback" not in resp.text


def test_health_and_ready(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    for path in ("/healthz", "/readyz"):  # load balancers and uptime checks send HEAD
        head = client.head(path)
        assert head.status_code == 200 and head.content == b"", path
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["status"] == "ready"
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200


def test_pose_multipart_and_raw_body(client):
    r = post_image(client)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == {"name": "tiny-pose", "version": 1}
    assert body["detector"] == {"name": "tiny-det", "version": 1}
    assert body["image"] == {"width": 300, "height": 200}
    assert len(body["keypoint_names"]) == 17 and body["keypoint_names"][0] == "nose"
    (person,) = body["people"]
    kps = np.array(person["keypoints"])
    assert kps.shape == (17, 3)
    assert np.abs(kps[:, 0] - 90).max() < 4 and np.abs(kps[:, 1] - 100).max() < 4
    assert set(body["timing_ms"]) == {"queue", "inference", "total"}
    raw = client.post("/v1/pose", content=encode(blob_image(at=(90, 100)), ".jpg"),
                      headers={"content-type": "image/jpeg"})
    assert raw.status_code == 200 and len(raw.json()["people"]) == 1


def test_pose_with_client_boxes_skips_detector(client):
    r = post_image(client, params={"boxes": json.dumps([[40, 50, 140, 150]])})
    body = r.json()
    assert r.status_code == 200 and body["detector"] is None
    assert body["people"][0]["bbox"] == [40, 50, 140, 150]
    # the corners in the other order are the same box; more boxes than max_people give the best max_people
    flipped = post_image(client, params={"boxes": "[[140, 150, 40, 50]]"}).json()
    assert flipped["people"] == body["people"]
    many = post_image(client, params={"boxes": json.dumps([[40, 50, 140, 150]] * 25), "max_people": 3})
    assert many.status_code == 200 and len(many.json()["people"]) == 3


def test_batch(client):
    files = [("images", (f"{i}.png", encode(blob_image(at=(60 + 20 * i, 90))), "image/png")) for i in range(3)]
    r = client.post("/v1/pose/batch", files=files)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 3
    for i, res in enumerate(results):
        assert abs(res["people"][0]["keypoints"][0][0] - (60 + 20 * i)) < 4


def test_exif_orientation_reaches_the_response(client):
    r = client.post("/v1/pose", content=jpeg_with_orientation(blob_image(w=160, h=90), 6),
                    headers={"content-type": "image/jpeg"})
    assert r.json()["image"] == {"width": 90, "height": 160}


def test_model_selection_and_params(client):
    assert post_image(client, params={"model": "tiny-pose:1"}).status_code == 200
    assert post_image(client, params={"model": "tiny-pose@production"}).status_code == 200
    r = post_image(client, params={"min_score": 1.0})
    assert r.status_code == 200 and r.json()["people"] == []


MALFORMED = [
    # (description, request kwargs, status, code)
    ("empty raw body", dict(content=b"", headers={"content-type": "image/jpeg"}), 400, "invalid_image"),
    ("empty multipart file", dict(files={"image": ("x.jpg", b"", "image/jpeg")}), 400, "invalid_image"),
    ("truncated jpeg", dict(content=encode(blob_image(), ".jpg")[:300], headers={"content-type": "image/jpeg"}),
     400, "invalid_image"),
    ("truncated png header", dict(content=PNG[:20], headers={"content-type": "image/png"}), 400, "invalid_image"),
    ("text as jpeg", dict(content=b"just some text", headers={"content-type": "image/jpeg"}), 415,
     "unsupported_media_type"),
    ("text content type", dict(content=b"hello", headers={"content-type": "text/plain"}), 415,
     "unsupported_media_type"),
    ("json content type", dict(json={"image": "x"}), 415, "unsupported_media_type"),
    ("gif", dict(content=b"GIF89a" + b"\0" * 64, headers={"content-type": "image/gif"}), 415,
     "unsupported_media_type"),
    ("gif in multipart", dict(files={"image": ("x.gif", b"GIF89a" + b"\0" * 64, "image/gif")}), 415,
     "unsupported_media_type"),
    ("20000x20000 png", dict(content=png_bomb(20000, 20000), headers={"content-type": "image/png"}), 413,
     "payload_too_large"),
    ("multipart without image", dict(files={"picture": ("x.png", PNG, "image/png")}), 422, "invalid_parameter"),
    ("multipart text field", dict(data={"image": "not a file"}, files={"other": ("a.txt", b"x")}), 422,
     "invalid_parameter"),
    ("urlencoded form", dict(data={"image": "not a file"}), 415, "unsupported_media_type"),
    ("unterminated multipart", dict(content=b"--zz\r\nnonsense",
                                    headers={"content-type": "multipart/form-data; boundary=zz"}), 422,
     "invalid_parameter"),
    ("multipart without boundary", dict(content=b"--zz\r\nnonsense", headers={"content-type": "multipart/form-data"}),
     400, "invalid_request"),
    ("unknown model", dict(files={"image": ("x.png", PNG)}, params={"model": "ghost"}), 404, "model_not_found"),
    ("unknown version", dict(files={"image": ("x.png", PNG)}, params={"model": "tiny-pose:9"}), 404,
     "model_not_found"),
    ("unknown alias", dict(files={"image": ("x.png", PNG)}, params={"model": "tiny-pose@nope"}), 404,
     "model_not_found"),
    ("detector as pose model", dict(files={"image": ("x.png", PNG)}, params={"model": "tiny-det"}), 404,
     "model_not_found"),
    ("bad model spec", dict(files={"image": ("x.png", PNG)}, params={"model": "Bad Name!"}), 422,
     "invalid_parameter"),
    ("min_score > 1", dict(files={"image": ("x.png", PNG)}, params={"min_score": 2}), 422, "invalid_parameter"),
    ("min_score text", dict(files={"image": ("x.png", PNG)}, params={"min_score": "high"}), 422,
     "invalid_parameter"),
    ("max_people 0", dict(files={"image": ("x.png", PNG)}, params={"max_people": 0}), 422, "invalid_parameter"),
    ("max_people huge", dict(files={"image": ("x.png", PNG)}, params={"max_people": 10_000}), 422,
     "invalid_parameter"),
    ("boxes not json", dict(files={"image": ("x.png", PNG)}, params={"boxes": "[[1,2"}), 422, "invalid_parameter"),
    ("boxes wrong shape", dict(files={"image": ("x.png", PNG)}, params={"boxes": "[[1,2,3]]"}), 422,
     "invalid_parameter"),
    ("boxes with exponents", dict(files={"image": ("x.png", PNG)}, params={"boxes": "[[0,0,1e3,5]]"}), 422,
     "invalid_parameter"),
    ("boxes nan", dict(files={"image": ("x.png", PNG)}, params={"boxes": "[[0,0,NaN,5]]"}), 422,
     "invalid_parameter"),
]


@pytest.mark.parametrize("what,kwargs,status,code", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_requests_get_documented_errors(client, what, kwargs, status, code):
    assert_error(client.post("/v1/pose", **kwargs), status, code)
    assert post_image(client).status_code == 200  # and the service keeps serving


def test_route_and_method_errors_are_json(client):
    assert_error(client.get("/v1/nothing"), 404, "not_found")
    assert_error(client.get("/v1/pose"), 405, "method_not_allowed")
    assert_error(client.post("/v1/pose/batch", content=PNG, headers={"content-type": "image/png"}), 415,
                 "unsupported_media_type")


def test_size_limits_are_settings(settings):
    settings.max_image_bytes = 1000
    settings.max_batch_images = 2
    settings.max_image_pixels = 100 * 100
    with TestClient(create_app(settings)) as c:
        assert_error(post_image(c, data=encode(np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8))),
                     413, "payload_too_large")
        assert_error(c.post("/v1/pose", content=b"\xff\xd8\xff" + b"x" * 5000, headers={"content-type": "image/jpeg"}),
                     413, "payload_too_large")
        small = encode(np.zeros((120, 120, 3), np.uint8))
        assert_error(post_image(c, data=small), 413, "payload_too_large")  # 14400 pixels > 10000
        files = [("images", (f"{i}.png", encode(np.zeros((8, 8, 3), np.uint8)), "image/png")) for i in range(3)]
        assert_error(c.post("/v1/pose/batch", files=files), 413, "payload_too_large")


def test_api_keys(settings):
    settings.api_keys = ["user-key"]
    settings.admin_api_keys = ["admin-key"]
    with TestClient(create_app(settings)) as c:
        assert_error(post_image(c), 401, "unauthorized")
        assert_error(post_image(c, headers={"x-api-key": "wrong"}), 403, "forbidden")
        assert post_image(c, headers={"x-api-key": "user-key"}).status_code == 200
        assert post_image(c, headers={"authorization": "Bearer admin-key"}).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/metrics").status_code == 200
        put = dict(json={"version": 1})
        assert_error(c.put("/v1/models/tiny-pose/aliases/staging", **put), 401, "unauthorized")
        assert_error(c.put("/v1/models/tiny-pose/aliases/staging", headers={"x-api-key": "user-key"}, **put), 403,
                     "forbidden")
        r = c.put("/v1/models/tiny-pose/aliases/staging", headers={"x-api-key": "admin-key"}, **put)
        assert r.status_code == 200 and r.json()["aliases"]["staging"] == 1
        assert_error(c.post("/v1/admin/reload", headers={"x-api-key": "user-key"}), 403, "forbidden")


def test_models_routes(client):
    body = client.get("/v1/models").json()
    names = {m["name"]: m for m in body["models"]}
    assert set(names) == {"tiny-pose", "tiny-det"}
    assert names["tiny-pose"]["aliases"] == {"production": 1}
    one = client.get("/v1/models/tiny-pose").json()
    assert one["versions"][0]["manifest"]["output"]["decoder"] == "heatmap"
    assert one["versions"][0]["loaded"] is True
    assert_error(client.get("/v1/models/ghost"), 404, "model_not_found")


def corrupt(store, name, version):
    path = store.version_dir(name, version) / "model.onnx"
    path.write_bytes(path.read_bytes()[:-20] + b"\0" * 20)


def test_alias_to_corrupt_version_is_refused_and_old_version_serves(client, store, tmp_path):
    import_model(store, tiny_pose_onnx(tmp_path / "v2.onnx"), POSE_FIELDS, alias=None)
    import_model(store, tiny_pose_onnx(tmp_path / "v3.onnx"), POSE_FIELDS, alias=None)
    corrupt(store, "tiny-pose", 3)
    assert_error(client.put("/v1/models/tiny-pose/aliases/production", json={"version": 3}), 409,
                 "model_verification_failed")
    assert post_image(client).json()["model"]["version"] == 1
    assert client.put("/v1/models/tiny-pose/aliases/production", json={"version": 2}).status_code == 200
    assert post_image(client).json()["model"]["version"] == 2
    assert_error(client.put("/v1/models/tiny-pose/aliases/production", json={"version": 0}), 422,
                 "invalid_parameter")
    assert_error(client.put("/v1/models/tiny-pose/aliases/production", json={"version": 7}), 404, "model_not_found")
    assert_error(client.put("/v1/models/tiny-pose/aliases/bad%20alias", json={"version": 2}), 422,
                 "invalid_parameter")


def test_reload_endpoint_keeps_previous_version_on_corrupt_file(client, store, tmp_path):
    import_model(store, tiny_pose_onnx(tmp_path / "v2.onnx"), POSE_FIELDS, alias=None)
    corrupt(store, "tiny-pose", 2)
    store.set_alias("tiny-pose", "production", 2)  # edited on disk behind the service's back
    report = client.post("/v1/admin/reload").json()
    assert "tiny-pose@production" in report["errors"]
    r = post_image(client)
    assert r.status_code == 200 and r.json()["model"]["version"] == 1
    assert client.get("/v1/models/tiny-pose").json()["aliases"] == {"production": 1}
    # asking for the corrupt version explicitly: refused, clearly
    assert_error(post_image(client, params={"model": "tiny-pose:2"}), 409, "model_verification_failed")


def test_metrics_exposed(client):
    post_image(client)
    post_image(client, params={"model": "ghost"})
    client.get("/openapi.json")
    client.get("/static/demo/index.html")
    client.get("/nowhere")
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    text = client.get("/metrics").text
    for needle in ['posekd_requests_total{code="200",route="/v1/pose"}',
                   'posekd_requests_total{code="200",route="/openapi.json"}',
                   'posekd_requests_total{code="200",route="/static/demo/{path}"}',
                   'posekd_requests_total{code="404",route="unmatched"}',
                   'posekd_requests_total{code="404",route="/v1/pose"}',
                   'posekd_request_duration_seconds_bucket{le="0.05",route="/v1/pose"}',
                   'posekd_queue_wait_seconds_count{model="tiny-pose"}',
                   'posekd_inference_duration_seconds_count{model="tiny-det",stage="detect",version="1"}',
                   'posekd_inference_duration_seconds_count{model="tiny-pose",stage="pose",version="1"}',
                   'posekd_batch_size_count{model="tiny-pose",stage="pose"}',
                   'posekd_queue_depth{queue="local"}',
                   'posekd_people_per_image_count',
                   'posekd_video_frames_total',
                   'posekd_model_info{alias="production",name="tiny-pose",version="1"} 1.0']:
        assert needle in text, needle


def test_v2_metadata(client):
    meta = client.get("/v2/models/tiny-pose").json()
    assert meta["platform"] == "onnxruntime_onnx" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 64, 64]}]
    assert meta["outputs"][0]["name"] == "heatmaps"
    assert client.get("/v2/models/tiny-pose/versions/1").status_code == 200
    assert client.get("/v2/models/tiny-pose/ready").json()["ready"] is True
    assert client.get("/v2/models/tiny-pose/versions/1/ready").status_code == 200
    assert_error(client.get("/v2/models/ghost"), 404, "model_not_found")
    assert_error(client.get("/v2/models/tiny-pose/versions/5"), 404, "model_not_found")
    assert client.get("/v2").json()["name"] == "posekd"


def test_openapi_documents_the_routes(client):
    paths = client.get("/openapi.json").json()["paths"]
    for p in ["/v1/pose", "/v1/pose/batch", "/v1/models", "/v1/models/{name}/aliases/{alias}", "/healthz",
              "/readyz", "/v2/models/{name}", "/metrics"]:
        assert p in paths
    assert "multipart/form-data" in paths["/v1/pose"]["post"]["requestBody"]["content"]


def test_empty_store_is_not_ready_but_alive(tmp_path, settings):
    settings.model_store = tmp_path / "empty"
    with TestClient(create_app(settings)) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "not_ready"
        assert_error(post_image(c), 404, "model_not_found")


def test_large_jpeg_results_are_in_original_pixels(settings):
    settings.decode_max_side = 300
    big = encode(blob_image(w=1600, h=1200, at=(500, 700), sigma=30), ".jpg")
    with TestClient(create_app(settings)) as c:
        body = c.post("/v1/pose", content=big, headers={"content-type": "image/jpeg"}).json()
        assert body["image"] == {"width": 1600, "height": 1200}
        kps = np.array(body["people"][0]["keypoints"])
        assert np.abs(kps[:, 0] - 500).max() < 20 and np.abs(kps[:, 1] - 700).max() < 20
        assert np.allclose(body["people"][0]["bbox"], [160, 120, 960, 1080], atol=5)
        boxed = c.post("/v1/pose", content=big, headers={"content-type": "image/jpeg"},
                       params={"boxes": "[[300, 500, 700, 900]]"}).json()
        assert boxed["people"][0]["bbox"] == [300, 500, 700, 900]
        assert np.abs(np.array(boxed["people"][0]["keypoints"])[:, 0] - 500).max() < 20


def test_admin_routes_are_closed_on_a_public_address_without_keys(store):
    from service.api import create_app
    from service.settings import Settings

    for host, opened, expected in (("0.0.0.0", False, 403), ("0.0.0.0", True, 200), ("127.0.0.1", False, 200)):
        s = Settings(model_store=store.root, default_pose_model="tiny-pose", default_detector="tiny-det",
                     store_poll_s=0, api_keys=[], admin_api_keys=[], host=host, open_admin=opened)
        with TestClient(create_app(s)) as c:
            r = c.put("/v1/models/tiny-pose/aliases/staging", json={"version": 1})
            assert r.status_code == expected, (host, opened, r.text)
            assert c.post("/v1/pose", files={"image": ("x.png", encode(blob_image()), "image/png")}).status_code == 200


def test_openapi_lists_each_route_once_with_the_project_error_shape(client):
    """Every operation under one tag (listed once in /docs), and no FastAPI HTTPValidationError: the 422
    answers in the project's error shape like every other error; /readyz's 503 has its body schema."""
    doc = client.get("/openapi.json").json()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert len(op.get("tags", [])) <= 1 or path == "/v1/admin/reload", (path, method, op.get("tags"))
            assert "HTTPValidationError" not in json.dumps(op.get("responses", {})), (path, method)
    assert "schema" in doc["paths"]["/readyz"]["get"]["responses"]["503"]["content"]["application/json"]
