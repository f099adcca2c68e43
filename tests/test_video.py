"""Video: the tracker on constructed tracks (crossing people, occlusion and re-entry, confident
starts), the One-Euro filter, streaming decode, the processor (keyframes and propagation) with real
tiny models on real encoded clips, and the job lifecycle through the API with its limits."""
from __future__ import annotations

import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.pipeline import PosePipeline
from service.pipeline.runtime import OnnxModel
from service.store import ModelRegistry
from service.video import decode
from service.video.processor import VideoOptions, VideoProcessor, box_from_keypoints
from service.video.smoothing import OneEuro
from service.video.tracker import Tracker

from .helpers import add_slow_pose, blob_clip

# a standing person's keypoints (x, y) in a 40×100 box, head at the top
SHAPE = np.array([[20, 8], [17, 6], [23, 6], [14, 8], [26, 8], [10, 25], [30, 25], [6, 45], [34, 45], [5, 62],
                  [35, 62], [13, 60], [27, 60], [13, 80], [27, 80], [13, 98], [27, 98]], np.float32)


def person(x: float, y: float, score: float = 0.9):
    kps = np.concatenate([SHAPE + [x, y], np.full((17, 1), score, np.float32)], 1)
    return np.array([x, y, x + 40, y + 100], np.float32), kps, score


def step(tracker: Tracker, frame: int, people: list):
    if not people:
        return tracker.update(frame, np.zeros((0, 4)), np.zeros((0, 17, 3)), np.zeros(0))
    boxes, kps, scores = zip(*people)
    return tracker.update(frame, np.stack(boxes), np.stack(kps), np.array(scores))


# ---- tracker ------------------------------------------------------------------------------------
def test_crossing_people_keep_their_ids():
    tracker = Tracker()
    seen = []
    for f in range(25):
        a = person(60 + 10 * f, 100)  # walks right
        b = person(300 - 10 * f, 108)  # walks left, passing in front of A around frame 12
        seen.append(step(tracker, f, [a, b]))
    assert seen[0] == [1, 2]
    assert all(ids == [1, 2] for ids in seen), seen


def test_a_briefly_occluded_person_gets_the_same_id_back():
    tracker = Tracker(max_lost=15)
    ids = []
    for f in range(40):
        walker = person(50 + 5 * f, 100)
        other = person(400, 50)
        visible = [walker, other] if not 12 <= f < 22 else [other]  # hidden for 10 frames
        ids.append(step(tracker, f, visible))
    assert ids[0] == [1, 2] and ids[30] == [1, 2]
    assert len(tracker.all_tracks()) == 2


def test_observation_centric_recovery_finds_a_person_who_stopped_while_hidden():
    # A walks right, is hidden behind something for 12 frames and stops there; her track's prediction
    # runs on at 8 px a frame (96 px past her). Recovery matches her at where she was last seen.
    def run(recovery: bool) -> list:
        tracker = Tracker(max_lost=30, recovery=recovery)
        ids = []
        for f in range(30):
            x = 50 + 8 * min(f, 10)
            ids.append(step(tracker, f, [person(x, 100)] if not 10 <= f < 22 else []))
        return ids

    assert run(False)[25] == [2]  # without it: a new id
    recovered = run(True)
    assert recovered[0] == [1] and recovered[22:] == [[1]] * 8


def test_a_person_gone_longer_than_max_lost_comes_back_with_a_new_id():
    tracker = Tracker(max_lost=3)
    for f in range(10):
        step(tracker, f, [person(100, 100)])
    for f in range(10, 20):
        step(tracker, f, [])
    assert step(tracker, 20, [person(100, 100)]) == [2]


def test_tracks_start_only_from_confident_people():
    tracker = Tracker(start_score=0.5)
    assert step(tracker, 0, [person(100, 100, score=0.3)]) == [None]
    assert step(tracker, 1, [person(100, 100, score=0.6)]) == [1]
    assert step(tracker, 2, [person(102, 100, score=0.3)]) == [1]  # an existing track may continue weakly


def test_unsure_people_only_continue_tracks():
    """ByteTrack's second pass: an unsure person continues a track the sure people left, never starts one."""
    tracker = Tracker(high_score=0.5, start_score=0.5)
    assert step(tracker, 0, [person(100, 100, score=0.9)]) == [1]
    # half hidden: score 0.3, still matched to its track; an unsure stranger far away gets no track
    assert step(tracker, 1, [person(104, 100, score=0.3), person(400, 100, score=0.3)]) == [1, None]
    assert len(tracker.all_tracks()) == 1


def dressed(image: np.ndarray, kps: np.ndarray, colour) -> None:
    """Paint the torso and thighs of a person's keypoints in one BGR colour."""
    import cv2

    torso = kps[[5, 6, 12, 11], :2].astype(np.int32)
    cv2.fillConvexPoly(image, torso, colour)
    for a, b in ((11, 13), (12, 14)):
        cv2.line(image, tuple(kps[a, :2].astype(int)), tuple(kps[b, :2].astype(int)), colour, 6)


def test_appearance_decides_between_two_people_equally_close():
    """Two people stand between two tracks' last places, as close to one as to the other (they overlap
    while crossing): the one who looks like a track gets its id."""
    from service.video.tracker import appearance

    def look(p, colour):
        image = np.full((300, 500, 3), 90, np.uint8)  # each person painted on a frame of their own
        dressed(image, p[1], colour)
        return appearance(image, p[1])

    red_c, blue_c = (0, 0, 220), (220, 60, 0)
    tracker = Tracker(appearance_weight=0.3)
    red, blue = person(100, 100), person(130, 100)
    looks = [look(red, red_c), look(blue, blue_c)]
    assert all(v is not None for v in looks)
    assert float(np.dot(looks[0], looks[1])) < 0.3  # different colours, different signatures
    assert float(np.dot(looks[0], look(person(300, 50), red_c))) > 0.9  # the same colours elsewhere: alike
    assert tracker.update(0, np.stack([red[0], blue[0]]), np.stack([red[1], blue[1]]), np.array([0.9, 0.9]),
                          looks) == [1, 2]
    a, b = person(115, 100), person(115, 100)
    for first, second in ((blue_c, red_c), (red_c, blue_c)):  # both orders: geometry alone cannot decide
        t = Tracker(appearance_weight=0.3)
        t.update(0, np.stack([red[0], blue[0]]), np.stack([red[1], blue[1]]), np.array([0.9, 0.9]), looks)
        ids = t.update(1, np.stack([a[0], b[0]]), np.stack([a[1], b[1]]), np.array([0.9, 0.9]),
                       [look(a, first), look(b, second)])
        assert ids == ([2, 1] if first == blue_c else [1, 2])


# ---- smoothing ----------------------------------------------------------------------------------
def test_one_euro_smooths_jitter_and_follows_motion():
    rng = np.random.default_rng(0)
    f = OneEuro(min_cutoff=1.0, beta=0.02)
    still = [f(np.array([100.0]) + rng.normal(0, 2.0, 1), t / 30) for t in range(300)]
    assert np.std(np.concatenate(still[50:])) < 0.6 * 2.0  # jitter at rest mostly removed
    g = OneEuro(min_cutoff=1.0, beta=0.02)
    moving = [g(np.array([10.0 * t]), t / 30)[0] for t in range(120)]  # 300 px/s
    assert abs(moving[-1] - 10.0 * 119) < 30  # the speed raises the cut-off: little lag
    assert np.allclose(OneEuro()(np.array([5.0, 6.0]), 0.0), [5.0, 6.0])


# ---- decode and processor -----------------------------------------------------------------------
def test_decode_streams_frames_with_timestamps(tmp_path):
    clip = blob_clip(tmp_path / "c.mp4", frames=12, fps=10)
    info = decode.probe(clip, max_seconds=60, max_frames=100, max_pixels=10**6)
    assert (info.width, info.height, info.frames) == (300, 200, 12) and abs(info.fps - 10) < 1e-6
    got = list(decode.frames(clip, 100))
    assert [i for i, _, _ in got] == list(range(12))
    assert np.allclose([t for _, t, _ in got], np.arange(12) / 10, atol=1e-3)
    with pytest.raises(decode.PayloadTooLarge):
        decode.probe(clip, max_seconds=60, max_frames=5, max_pixels=10**6)
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    with pytest.raises(decode.InvalidVideo):
        decode.probe(tmp_path / "bad.mp4", max_seconds=60, max_frames=100, max_pixels=10**6)


def processor(store, **kw) -> VideoProcessor:
    reg = ModelRegistry(store, lambda m, d: OnnxModel(m, d, device="cpu", intra_threads=1))
    opts = VideoOptions(min_score=0.1, start_score=0.2, redetect_score=0.1, **kw)
    return VideoProcessor(PosePipeline(detector_threshold=0.1), reg.get("tiny-pose"), reg.get("tiny-det"), opts)


@pytest.mark.parametrize("interval", [1, 5])
def test_processor_tracks_the_blob_with_keyframes_and_propagation(store, tmp_path, interval):
    clip = blob_clip(tmp_path / "c.mp4", frames=30)
    info = decode.probe(clip, max_seconds=60, max_frames=100, max_pixels=10**6)
    result = processor(store, keyframe_interval=interval, smoothing=False).run(clip, info)
    assert result["video"]["frames"] == 30 and len(result["frames"]) == 30
    assert [t["track_id"] for t in result["tracks"]] == [1]
    for f in result["frames"]:
        (p,) = f["people"]
        x, y = 60 + 2 * f["frame"], 80 + f["frame"]
        assert abs(p["keypoints"][0][0] - x) < 5 and abs(p["keypoints"][0][1] - y) < 5, f
    expected = 30 if interval == 1 else 6
    assert result["stats"]["keyframes"] == expected


def test_box_from_keypoints_pads_the_confident_points():
    box = box_from_keypoints(person(100, 50)[1])
    assert box[0] < 105 and box[1] < 56 and box[2] > 135 and box[3] > 148
    assert box_from_keypoints(np.zeros((17, 3), np.float32)) is None


# ---- jobs through the API -----------------------------------------------------------------------
def wait_final(client, job_id, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        body = client.get(f"/v1/jobs/{job_id}").json()
        if body["status"] in ("succeeded", "failed", "cancelled"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {body}")


@pytest.fixture
def video_client(settings, tmp_path):
    s = settings.model_copy(update={"video_dir": tmp_path / "jobs", "video_min_score": 0.1,
                                    "track_start_score": 0.2})
    with TestClient(create_app(s)) as client:
        yield client


def upload(client, data: bytes, **params):
    return client.post("/v1/videos", params=params, files={"video": ("clip.mp4", data, "video/mp4")})


def test_a_clip_comes_back_tracked_smoothed_and_rendered(video_client, tmp_path):
    data = blob_clip(tmp_path / "c.mp4", frames=20).read_bytes()
    r = upload(video_client, data, render="true", keyframe_interval=4)
    assert r.status_code == 202 and r.headers["location"] == r.json()["status_url"]
    job_id = r.json()["job_id"]
    status = wait_final(video_client, job_id)
    assert status["status"] == "succeeded" and status["progress"] == 1.0 and status["frames_done"] == 20
    result = video_client.get(f"/v1/jobs/{job_id}/result").json()
    assert set(result) >= {"video", "model", "detector", "keypoint_names", "tracks", "frames"}
    assert result["video"]["frames"] == 20 and len(result["tracks"]) == 1
    assert set(result["tracks"][0]) == {"track_id", "first_frame", "last_frame", "frames"}
    person0 = result["frames"][5]["people"][0]
    assert set(person0) == {"track_id", "bbox", "score", "keypoints"} and len(person0["keypoints"]) == 17
    video = video_client.get(f"/v1/jobs/{job_id}/video")
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    (tmp_path / "out.mp4").write_bytes(video.content)
    out = decode.probe(tmp_path / "out.mp4", max_seconds=60, max_frames=100, max_pixels=10**6)
    assert out.frames == 20 and out.codec in ("h264", "mpeg4")
    assert video_client.delete(f"/v1/jobs/{job_id}").json()["deleted"] is True
    assert video_client.get(f"/v1/jobs/{job_id}").status_code == 404


def test_bad_and_over_limit_clips_get_their_4xx(video_client, settings, tmp_path):
    assert upload(video_client, b"").status_code == 400
    assert upload(video_client, b"not a video at all" * 50).json()["error"]["code"] == "invalid_video"
    r = video_client.post("/v1/videos", content=b"x" * 100, headers={"content-type": "video/mp4"})
    assert r.status_code == 415
    assert video_client.post("/v1/videos", files={"clip": ("a.mp4", b"x")}).status_code == 422
    assert upload(video_client, b"x", model="ghost").status_code == 404
    assert upload(video_client, b"x", keyframe_interval=0).status_code == 422
    assert video_client.get("/v1/jobs/nope").status_code == 404
    limited = settings.model_copy(update={"max_video_frames": 10, "video_dir": tmp_path / "j2"})
    with TestClient(create_app(limited)) as client:
        r = upload(client, blob_clip(tmp_path / "long.mp4", frames=30).read_bytes())
        assert r.status_code == 413 and "frames" in r.json()["error"]["message"]
    small = settings.model_copy(update={"max_video_bytes": 1000, "video_dir": tmp_path / "j3"})
    with TestClient(create_app(small)) as client:
        assert upload(client, blob_clip(tmp_path / "c.mp4", frames=30).read_bytes()).status_code == 413


def test_jobs_are_cancelled_queued_or_running_and_results_wait_for_success(settings, store, tmp_path):
    add_slow_pose(store)  # ~0.4 s per pose call: jobs take seconds
    s = settings.model_copy(update={"video_dir": tmp_path / "jobs", "default_pose_model": "slow-pose",
                                    "video_min_score": 0.1, "track_start_score": 0.2})
    data = blob_clip(tmp_path / "c.mp4", frames=40).read_bytes()
    with TestClient(create_app(s)) as client:
        running = upload(client, data, keyframe_interval=1).json()["job_id"]
        queued = upload(client, data).json()["job_id"]  # one video worker: waits behind the first
        time.sleep(0.3)
        assert client.get(f"/v1/jobs/{queued}").json()["status"] == "queued"
        r = client.get(f"/v1/jobs/{running}/result")
        assert r.status_code == 409 and r.json()["error"]["code"] == "job_not_finished"
        assert client.delete(f"/v1/jobs/{queued}").json()["status"] == "cancelled"
        assert client.delete(f"/v1/jobs/{running}").status_code == 202
        assert wait_final(client, running)["status"] == "cancelled"
        assert client.get(f"/v1/jobs/{running}/result").json()["error"]["code"] == "job_cancelled"
        assert client.get(f"/v1/jobs/{queued}").json()["status"] == "cancelled"


def test_a_job_that_cannot_run_fails_with_a_clear_error_instead_of_hanging(settings, store, tmp_path):
    add_slow_pose(store)
    s = settings.model_copy(update={"video_dir": tmp_path / "jobs", "default_pose_model": "slow-pose"})
    data = blob_clip(tmp_path / "c.mp4", frames=20).read_bytes()
    with TestClient(create_app(s)) as client:
        first = upload(client, data, keyframe_interval=1).json()["job_id"]
        second = upload(client, data).json()["job_id"]
        (tmp_path / "jobs" / second / "clip").write_bytes(b"\x00" * 64)  # its upload is damaged on disk
        client.delete(f"/v1/jobs/{first}")  # the queued job runs now
        status = wait_final(client, second)
        assert status["status"] == "failed" and "video" in status["error"]


def test_a_queued_job_runs_the_model_version_it_was_accepted_with(settings, store, tmp_path):
    add_slow_pose(store)
    s = settings.model_copy(update={"video_dir": tmp_path / "jobs", "default_pose_model": "slow-pose",
                                    "video_min_score": 0.1, "track_start_score": 0.2, "store_poll_s": 0})
    data = blob_clip(tmp_path / "c.mp4", frames=12).read_bytes()
    with TestClient(create_app(s)) as client:
        first = upload(client, data, keyframe_interval=1).json()["job_id"]  # holds the one video thread
        second = upload(client, data, keyframe_interval=6).json()["job_id"]  # slow-pose@production = 1 now
        add_slow_pose(store)  # slow-pose:2 becomes production while the second job waits
        assert client.post("/v1/admin/reload").status_code == 200
        assert client.get("/v1/models/slow-pose").json()["aliases"]["production"] == 2
        client.delete(f"/v1/jobs/{first}")
        assert wait_final(client, second)["status"] == "succeeded"
        assert client.get(f"/v1/jobs/{second}/result").json()["model"] == {"name": "slow-pose", "version": 1}


@pytest.mark.data
def test_a_real_clip_through_the_api_with_the_committed_students(tmp_path):
    from service.settings import Settings

    from .conftest import DATA, ROOT
    clip = DATA / "unlabeled" / "videos" / "st_gcn" / "resource" / "media" / "ta_chi.mp4"
    s = Settings(model_store=ROOT / "model_store", store_poll_s=0, video_dir=tmp_path / "jobs", api_keys=[],
                 admin_api_keys=[])
    with TestClient(create_app(s)) as client:
        r = upload(client, clip.read_bytes(), render="true")
        assert r.status_code == 202, r.text
        status = wait_final(client, r.json()["job_id"], timeout=120)
        assert status["status"] == "succeeded", status
        result = client.get(f"/v1/jobs/{status['job_id']}/result").json()
    assert result["model"]["name"] == "pose-s" and result["video"]["frames"] == 300
    longest = max(result["tracks"], key=lambda t: t["frames"])
    assert longest["frames"] > 250  # one person, one track for (nearly) the whole clip
    with_person = [f for f in result["frames"] if f["people"]]
    assert len(with_person) > 250


def test_the_embedded_temp_video_folder_goes_with_the_service(settings):
    from fastapi.testclient import TestClient

    from service.api import create_app
    settings.video_dir = None
    with TestClient(create_app(settings)) as client:
        folder = client.app.state.service.jobs.root
        assert folder.is_dir() and folder.name.startswith("posekd-videos-")
    assert not folder.exists()  # no posekd-videos-* left behind in the temp directory


def test_a_job_belongs_to_the_key_that_created_it(settings, store, tmp_path):
    """With keys on, another user key gets 404 for a job whose id it knows; an admin key sees it."""
    s = settings.model_copy(update={"video_dir": tmp_path / "jobs", "api_keys": ["alice", "bob"],
                                    "admin_api_keys": ["root"]})
    data = blob_clip(tmp_path / "c.mp4", frames=6).read_bytes()
    with TestClient(create_app(s)) as client:
        r = client.post("/v1/videos", headers={"X-API-Key": "alice"},
                        files={"video": ("clip.mp4", data, "video/mp4")})
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/result"):
            assert client.get(path, headers={"X-API-Key": "bob"}).status_code == 404
        assert client.delete(f"/v1/jobs/{job_id}", headers={"X-API-Key": "bob"}).status_code == 404
        assert client.get(f"/v1/jobs/{job_id}", headers={"X-API-Key": "alice"}).status_code == 200
        assert client.get(f"/v1/jobs/{job_id}", headers={"Authorization": "Bearer root"}).status_code == 200


def test_labels_of_people_at_the_top_edge_are_drawn_whole():
    """A person whose box touches the top of a large picture: the score label sits inside the box, not
    cut off above the frame."""
    from service.drawing import draw

    image = np.zeros((1600, 1200, 3), np.uint8)
    kps = [[600.0, 100.0 + 40 * k, 0.9] for k in range(17)]
    out = draw(image, [{"bbox": [500.0, 0.0, 700.0, 800.0], "score": 0.87, "keypoints": kps}])
    # the rows the label's glyphs cover, between the box's top line and the first keypoint: its whole
    # height (about 20 px at this size), where a label placed above the box would show a few rows at most
    rows = np.where(out[4:90, 505:590].max(axis=(1, 2)) > 0)[0]
    assert len(rows) >= 15, rows


def test_a_clip_whose_pixels_are_not_square_keeps_its_shape(tmp_path):
    """The sample aspect ratio is read, reported with the video, and written into the overlay MP4."""
    from fractions import Fraction

    import av

    from service.video.render import Mp4Writer

    src = tmp_path / "sar.mp4"
    writer = Mp4Writer(src, 160, 120, 10, (4, 3))
    for i in range(5):
        writer.write(np.full((120, 160, 3), 40 * i, np.uint8))
    writer.close()
    info = decode.probe(src, max_seconds=60, max_frames=100, max_pixels=10**6)
    assert tuple(info.sample_aspect) == (4, 3) and info.as_dict()["sample_aspect_ratio"] == [4, 3]
    with av.open(str(src)) as c:
        assert c.streams.video[0].sample_aspect_ratio == Fraction(4, 3)
    square = tmp_path / "square.mp4"
    writer = Mp4Writer(square, 160, 120, 10)
    writer.write(np.zeros((120, 160, 3), np.uint8))
    writer.close()
    assert "sample_aspect_ratio" not in decode.probe(square, max_seconds=60, max_frames=100,
                                                     max_pixels=10**6).as_dict()
