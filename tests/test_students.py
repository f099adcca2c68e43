"""The committed default students in ``model_store/``: they verify, run through the service with no
teacher in the store, and put keypoints on real people (the image test needs ``../shared/data``)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.settings import Settings
from service.store import ModelStore

from .conftest import DATA

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "model_store"
DEFAULTS = Settings.model_fields["default_pose_model"].default, Settings.model_fields["default_detector"].default


def committed_store(tmp_path) -> ModelStore:
    """A copy of the committed students only (no teachers), as a fresh clone has it."""
    store = ModelStore(tmp_path / "store")
    for name in DEFAULTS:
        shutil.copytree(COMMITTED / name, store.root / name)
    return store


def test_default_models_are_committed_students_with_lineage():
    store = ModelStore(COMMITTED)
    for name in DEFAULTS:
        assert name in store.names(), f"{name} is not committed in model_store/"
    from service.store.teachers import TEACHERS

    teachers = {fields["name"] for fields in TEACHERS.values()}  # `make run` registers them here, untracked
    for name in set(store.names()) - teachers:  # the defaults and any committed variant
        version = store.aliases(name)["production"]
        assert store.verify(name, version) is None
        m = store.manifest(name, version)
        assert m.lineage.teacher and m.lineage.command.startswith("posekd distill")
        assert m.lineage.git_commit and m.lineage.data
        assert m.metrics.get("params") and m.metrics.get("ms_b1")
    pose = store.manifest(DEFAULTS[0], store.aliases(DEFAULTS[0])["production"])
    assert pose.metrics["gt_boxes"]["AP"] > 0


def test_service_serves_the_students_without_any_teacher(tmp_path):
    store = committed_store(tmp_path)
    settings = Settings(model_store=store.root, store_poll_s=0, api_keys=[], admin_api_keys=[])
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
        names = {m["name"] for m in client.get("/v1/models").json()["models"]}
        assert not names & {"movenet-thunder", "movenet-multipose", "movenet-lightning", "centernet"}
        image = np.zeros((240, 320, 3), np.uint8)
        import cv2
        ok, png = cv2.imencode(".png", image)
        r = client.post("/v1/pose", files={"image": ("x.png", png.tobytes(), "image/png")})
        assert r.status_code == 200, r.text
        assert r.json()["model"]["name"] == DEFAULTS[0]


def _keypoints_inside(person: dict, slack: float = 0.2) -> int:
    kps = np.array(person["keypoints"])
    x1, y1, x2, y2 = person["bbox"]
    w, h = x2 - x1, y2 - y1
    return int(((kps[:, 0] > x1 - slack * w) & (kps[:, 0] < x2 + slack * w) &
                (kps[:, 1] > y1 - slack * h) & (kps[:, 1] < y2 + slack * h)).sum())


@pytest.mark.data
@pytest.mark.parametrize("image, players", [
    # (x range of each player's body centre in the picture)
    ("basketball1.png", [(30, 175), (430, 640)]),
    ("messi5.jpg", [(70, 455)]),
])
def test_default_models_find_the_players_and_their_joints(tmp_path, image, players):
    """The committed defaults, as `make run` serves them: every player is found, and the keypoints of
    each sit on that player (inside the box, nose above the ankles)."""
    store = committed_store(tmp_path)
    settings = Settings(model_store=store.root, store_poll_s=0, api_keys=[], admin_api_keys=[])
    with TestClient(create_app(settings)) as client:
        data = (DATA / "opencv_samples" / image).read_bytes()
        r = client.post("/v1/pose", files={"image": (image, data, "application/octet-stream")})
        assert r.status_code == 200, r.text
        people = r.json()["people"]
        for lo, hi in players:
            found = [p for p in people if lo <= (p["bbox"][0] + p["bbox"][2]) / 2 <= hi]
            assert found, f"no person found between x={lo} and x={hi} in {image}: {people}"
            best = max(found, key=lambda p: p["score"])
            assert _keypoints_inside(best) >= 15
            kps = np.array(best["keypoints"])
            assert kps[0, 1] < min(kps[15, 1], kps[16, 1])  # nose above both ankles


@pytest.mark.data
def test_committed_pose_variants_find_the_players_too(tmp_path):
    """Every other committed pose model (the int8 variants), asked for by name, finds both players in
    basketball1.png with their joints on them, like the default."""
    store = ModelStore(tmp_path / "store")
    for name in ModelStore(COMMITTED).names():
        shutil.copytree(COMMITTED / name, store.root / name)
    variants = [n for n in store.names() if n != DEFAULTS[0] and store.manifest(n, store.aliases(n)["production"])
                .task == "pose"]
    assert variants
    settings = Settings(model_store=store.root, store_poll_s=0, api_keys=[], admin_api_keys=[])
    data = (DATA / "opencv_samples" / "basketball1.png").read_bytes()
    with TestClient(create_app(settings)) as client:
        for name in variants:
            r = client.post("/v1/pose", params={"model": name},
                            files={"image": ("b.png", data, "application/octet-stream")})
            assert r.status_code == 200 and r.json()["model"]["name"] == name, r.text
            for lo, hi in [(30, 175), (430, 640)]:
                found = [p for p in r.json()["people"] if lo <= (p["bbox"][0] + p["bbox"][2]) / 2 <= hi]
                assert found, f"{name}: no person between x={lo} and x={hi}"
                best = max(found, key=lambda p: p["score"])
                kps = np.array(best["keypoints"])
                assert _keypoints_inside(best) >= 15 and kps[0, 1] < min(kps[15, 1], kps[16, 1]), name


@pytest.mark.data
@pytest.mark.slow
def test_no_photo_gives_a_stacked_pair(tmp_path):
    """Every person once: over the photos in ../shared/data, no two answers of one photo are the same
    person drawn twice (≥ 6 shared keypoints above 0.3, mean distance under 5 % of the box size), as
    the defaults answer them (default person threshold)."""
    from bench.people import photo_files
    from service.pipeline.people import stacked_pairs

    store = committed_store(tmp_path)
    settings = Settings(model_store=store.root, store_poll_s=0, api_keys=[], admin_api_keys=[])
    photos = photo_files(DATA)
    assert len(photos) > 100
    stacked = {}
    with TestClient(create_app(settings)) as client:
        for path in photos:
            r = client.post("/v1/pose", files={"image": (path.name, path.read_bytes(), "application/octet-stream")})
            assert r.status_code == 200, (path, r.text)
            people = r.json()["people"]
            if len(people) < 2:
                continue
            pairs = stacked_pairs(np.array([p["keypoints"] for p in people]), np.array([p["bbox"] for p in people]))
            if pairs:
                stacked[str(path.relative_to(DATA))] = pairs
    assert not stacked, stacked


@pytest.mark.data
def test_the_tennis_player_is_one_person_and_the_woman_is_drawn_once(tmp_path):
    """The two photos a new user tried: the tennis player came back three times, the woman in COCO 315
    four times, every skeleton on them."""
    store = committed_store(tmp_path)
    settings = Settings(model_store=store.root, store_poll_s=0, api_keys=[], admin_api_keys=[])
    images = DATA / "unlabeled" / "images"
    with TestClient(create_app(settings)) as client:
        def people(path: Path) -> list[dict]:
            r = client.post("/v1/pose", files={"image": (path.name, path.read_bytes(), "application/octet-stream")})
            assert r.status_code == 200, r.text
            return r.json()["people"]

        tennis = people(images / "pytorch_openpose" / "images" / "demo.jpg")
        assert len(tennis) == 1, [(p["bbox"], p["score"]) for p in tennis]
        woman = people(images / "coco128_lightly" / "images" / "train2017" / "000000000315.jpg")
        centres = np.array([np.array(p["keypoints"])[:, :2].mean(0) for p in woman])
        sizes = np.array([np.sqrt((p["bbox"][2] - p["bbox"][0]) * (p["bbox"][3] - p["bbox"][1])) for p in woman])
        for i in range(len(woman)):
            for j in range(i + 1, len(woman)):  # no two skeletons centred on the same spot
                assert np.linalg.norm(centres[i] - centres[j]) > 0.1 * max(sizes[i], sizes[j]), (woman[i], woman[j])


@pytest.mark.data
@pytest.mark.slow
def test_tracks_keep_their_people_through_a_crossing_on_real_frames(tmp_path):
    """vtest.avi frames 280-500 through the committed defaults: a couple walking side by side and a man
    and a woman crossing behind a sign post keep their track ids (positions read off drawn frames, as in
    bench/tracking.py)."""
    import cv2

    from bench.tracking import SAME_PERSON, nearest_track
    from service.video.offline import run

    first, last = 280, 500
    cap = cv2.VideoCapture(str(DATA / "opencv_samples" / "vtest.avi"))
    clip = tmp_path / "crossing.avi"
    out = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (768, 576))
    for i in range(last + 1):
        ok, frame = cap.read()
        assert ok
        if i >= first:
            out.write(frame)
    out.release()
    store = committed_store(tmp_path)
    result = run(Settings(model_store=store.root, store_poll_s=0), clip, None, None, quiet=True)
    shifted = {"frames": result["frames"]}
    for name, (a, b) in SAME_PERSON.items():
        ids = [nearest_track(shifted, f - first, x, y) for f, x, y in (a, b)]
        assert ids[0] is not None and ids[0] == ids[1], (name, ids)
