"""Python three ways — the HTTP client (sync and async), the in-process estimator and `posekd pose` —
give the same people for the same image; COCO and PoseTrack output is read by pycocotools as is; the
annotated-image route; the client's retry policy."""
from __future__ import annotations

import asyncio
import contextlib
import io
import json

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

import posekd
from service.api import create_app
from service.cli import main
from service.settings import get_settings

from .helpers import blob_clip, blob_image, encode

SPOTS = [(90, 100), (200, 60), (150, 150)]


@pytest.fixture
def app_client(settings):
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def env(settings, monkeypatch):
    """The CLI reads POSEKD_* settings: point them at the test store and models."""
    for key, value in {"POSEKD_MODEL_STORE": str(settings.model_store), "POSEKD_DEFAULT_POSE_MODEL": "tiny-pose",
                       "POSEKD_DEFAULT_DETECTOR": "tiny-det", "POSEKD_MIN_SCORE": "0",
                       "POSEKD_ORT_INTRA_THREADS": "1"}.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def keypoints(result: posekd.PoseResult) -> np.ndarray:
    return np.stack([p.keypoints for p in result.people])


def test_client_in_process_and_cli_give_the_same_people(app_client, settings, env, tmp_path):
    path = tmp_path / "blob.png"
    path.write_bytes(encode(blob_image(at=SPOTS[0])))
    over_http = posekd.Client(http=app_client).pose(path)
    in_process = posekd.Estimator(settings=settings)(path)
    async def via_async():
        transport = httpx.ASGITransport(app=app_client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await posekd.AsyncClient(http=http).pose(path.read_bytes())
    over_async = asyncio.run(via_async())
    assert main(["pose", str(path), "-o", str(tmp_path / "out.json")]) == 0
    from_cli = posekd.PoseResult.from_json(json.loads((tmp_path / "out.json").read_text())[0])

    assert len(over_http.people) == len(in_process.people) == len(over_async.people) == len(from_cli.people) == 1
    for other in (in_process, over_async, from_cli):
        assert np.allclose(keypoints(over_http), keypoints(other), atol=0.01)
        assert (other.width, other.height) == (over_http.width, over_http.height) == (300, 200)
    nose = over_http.people[0].keypoint("nose")
    assert abs(nose[0] - SPOTS[0][0]) < 4 and abs(nose[1] - SPOTS[0][1]) < 4
    assert over_http.model == in_process.model == "tiny-pose:1"
    # an array in, the same people out
    assert np.allclose(keypoints(posekd.Client(http=app_client).pose(blob_image(at=SPOTS[0]))),
                       keypoints(over_http), atol=0.01)


def test_batch_render_and_errors_through_the_client(app_client):
    client = posekd.Client(http=app_client)
    results = client.pose_batch([encode(blob_image(at=xy)) for xy in SPOTS])
    for xy, res in zip(SPOTS, results):
        x, y, _ = res.people[0].keypoint("nose")
        assert abs(x - xy[0]) < 4 and abs(y - xy[1]) < 4
    jpeg = client.render(encode(blob_image(at=SPOTS[1])))
    png = client.render(encode(blob_image(at=SPOTS[1])), type="png")
    assert jpeg[:3] == b"\xff\xd8\xff" and png[:8] == b"\x89PNG\r\n\x1a\n"
    import cv2
    drawn = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    plain = blob_image(at=SPOTS[1])
    assert drawn.shape == plain.shape and np.abs(drawn.astype(int) - plain).sum() > 1000  # something was drawn
    with pytest.raises(posekd.APIError) as err:
        client.pose(b"not an image")
    assert err.value.status == 415 and err.value.code == "unsupported_media_type" and err.value.request_id


def test_the_render_route_answers_an_image(app_client):
    r = app_client.post("/v1/pose/render", content=encode(blob_image(at=SPOTS[2])),
                        headers={"content-type": "image/png"}, params={"type": "png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-posekd-people"] == "1" and r.content[:4] == b"\x89PNG"
    bad = app_client.post("/v1/pose/render", content=b"x", headers={"content-type": "image/png"})
    assert bad.status_code == 415 and bad.json()["error"]["code"] == "unsupported_media_type"


def test_the_client_retries_a_503_after_retry_after():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) < 3:
            return httpx.Response(503, headers={"retry-after": "0"},
                                  json={"error": {"code": "overloaded", "message": "queue full", "request_id": "r"}})
        return httpx.Response(200, json={"people": [], "image": {"width": 4, "height": 3},
                                         "model": {"name": "m", "version": 1}, "detector": None, "timing_ms": {}})

    http = httpx.Client(transport=httpx.MockTransport(handler), base_url="http://svc")
    assert posekd.Client(http=http, retries=3).pose(encode(blob_image(w=4, h=3))).width == 4
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(posekd.APIError) as err:
        posekd.Client(http=http, retries=1).pose(encode(blob_image(w=4, h=3)))
    assert err.value.status == 503 and err.value.code == "overloaded" and len(calls) == 2


def coco_ground_truth(spots) -> dict:
    images, annotations = [], []
    for i, (x, y) in enumerate(spots):
        images.append({"id": 100 + i, "width": 300, "height": 200, "file_name": f"{100 + i}.png"})
        annotations.append({"id": i + 1, "image_id": 100 + i, "category_id": 1, "iscrowd": 0, "num_keypoints": 17,
                            "keypoints": [v for _ in range(17) for v in (x, y, 2)],
                            "bbox": [x - 40, y - 40, 80, 80], "area": 6400})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "person", "keypoints": [f"k{i}" for i in range(17)],
                            "skeleton": []}]}


def coco_ap(gt: dict, results: list[dict]) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = gt
        truth.createIndex()
        found = truth.loadRes(results)
        ev = COCOeval(truth, found, "keypoints")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


def test_format_coco_scores_in_pycocotools(app_client, env, tmp_path):
    files = [("images", (f"{i}.png", encode(blob_image(at=xy)), "image/png")) for i, xy in enumerate(SPOTS)]
    r = app_client.post("/v1/pose/batch", files=files, params={"format": "coco", "image_ids": "100,101,102"})
    assert r.status_code == 200, r.text
    results = r.json()
    assert {res["image_id"] for res in results} == {100, 101, 102}
    assert all(len(res["keypoints"]) == 51 and len(res["bbox"]) == 4 and res["category_id"] == 1 for res in results)
    gt = coco_ground_truth(SPOTS)
    assert coco_ap(gt, results) > 0.9
    single = app_client.post("/v1/pose", content=encode(blob_image(at=SPOTS[0])),
                             headers={"content-type": "image/png"}, params={"format": "coco", "image_id": 100})
    assert single.json()[0]["image_id"] == 100
    # the CLI writes the same format, image ids from COCO-style file names
    for i, xy in enumerate(SPOTS):
        (tmp_path / f"{100 + i:012d}.png").write_bytes(encode(blob_image(at=xy)))
    assert main(["pose", str(tmp_path), "--format", "coco", "-o", str(tmp_path / "coco.json")]) == 0
    assert coco_ap(gt, json.loads((tmp_path / "coco.json").read_text())) > 0.9
    wrong = coco_ground_truth([(x + 60, y) for x, y in SPOTS])  # the keypoints elsewhere: the metric says so
    assert coco_ap(wrong, results) < 0.1


def test_video_results_export_as_posetrack_for_pycocotools(app_client, tmp_path):
    clip = blob_clip(tmp_path / "c.mp4", frames=8).read_bytes()
    settings = app_client.app.state.service.settings
    settings.video_min_score, settings.track_start_score = 0.1, 0.2
    client = posekd.Client(http=app_client)
    job_id = client.submit_video(clip)
    result = client.wait(job_id, poll=0.1, timeout=60)
    assert len(result.frames) == 8 and all(len(people) == 1 for people in result.frames)
    doc = app_client.get(f"/v1/jobs/{job_id}/result", params={"format": "posetrack", "video_id": 7}).json()
    assert doc == json.loads(json.dumps(result.to_posetrack(video_id=7, name=job_id)))
    assert len(doc["images"]) == 8 and doc["images"][0]["id"] == 700_000
    assert {a["track_id"] for a in doc["annotations"]} == {result.frames[0][0].track_id}
    # the document is COCO: pycocotools reads it as ground truth, and its own annotations score 1.0
    assert coco_ap(doc, [{k: a[k] for k in ("image_id", "category_id", "keypoints", "score")}
                         for a in doc["annotations"]]) > 0.99
