"""The benchmarks' own helpers (the benchmarks themselves run long and are not part of the suite)."""
import importlib

import numpy as np
import pytest


@pytest.mark.parametrize("name", ["images", "students", "queue", "video", "soak", "runtime", "people", "labels",
                                  "tracking", "shadow"])
def test_every_benchmark_module_imports_and_has_a_main(name):
    module = importlib.import_module(f"bench.{name}")
    assert callable(module.main)


def _frame(people):
    return {"people": [{"keypoints": k.tolist(), "bbox": [float(k[:, 0].min()), float(k[:, 1].min()),
                                                           float(k[:, 0].max()), float(k[:, 1].max())]}
                       for k in people]}


def test_video_agreement_matches_people_by_oks():
    from bench.video import agreement

    rng = np.random.default_rng(0)
    a = np.concatenate([rng.uniform(100, 200, (17, 2)), np.ones((17, 1))], 1).astype(np.float32)
    b = a.copy()
    b[:, :2] += 300  # someone else entirely
    reference = {"frames": [_frame([a, b]), _frame([a])]}
    same = agreement(reference, reference)
    assert same["recall"] == 1.0 and same["oks"] == pytest.approx(1.0)
    half = agreement({"frames": [_frame([a]), _frame([])]}, reference)  # finds 1 of the 3 people
    assert half["recall"] == pytest.approx(1 / 3)


def test_the_evaluation_runs_the_pipeline_with_the_services_detector_settings(monkeypatch):
    from distill.evaluate import served_pipeline
    from service.settings import Settings

    default = served_pipeline()
    assert default.detector_threshold == Settings().detector_threshold
    assert default.max_boxes == Settings().max_people
    monkeypatch.setenv("POSEKD_DETECTOR_THRESHOLD", "0.4")  # an operator's setting is what gets measured
    assert served_pipeline().detector_threshold == 0.4


def test_a_people_setting_names_its_own_pose_model_or_takes_the_runs():
    from bench.people import Setting

    s = Setting.parse("new pose=detector:detector-s:5,pose:pose-s:5,size:384,thr:0.1")
    assert (s.detector, s.pose, s.size, s.threshold) == ("detector-s:5", "pose-s:5", 384, 0.1)
    assert Setting.parse("default=size:320").pose is None  # the run's --pose
    with pytest.raises(SystemExit):
        Setting.parse("typo=poses:pose-s:5")


def test_people_settings_take_turns_on_each_image():
    """The settings are timed image by image in a rotating order, so none always runs first (cold caches)
    or always during one slow minute; every setting answers every image of every set."""
    from types import SimpleNamespace

    from bench.people import run_interleaved

    calls: list[tuple[str, int]] = []

    class Pipe:
        def __init__(self, label):
            self.label = label

        def run(self, pose, detector, tasks):
            calls.append((self.label, int(tasks[0].image[0, 0, 0])))
            person = SimpleNamespace(bbox=[0.0, 0.0, 1.0, 1.0], score=0.5, keypoints=np.zeros((17, 3)))
            return [SimpleNamespace(people=[person])]

    records = [SimpleNamespace(image_id=i, load=lambda i=i: np.full((4, 4, 3), i, np.uint8)) for i in range(4)]
    runs = [(Pipe(k), None, None) for k in "abc"]
    answers, seconds = run_interleaved(runs, {"one": (records[:2], None, None), "two": (records[2:], None, None)})
    assert seconds.shape == (3, 4)
    assert [label for label, _ in calls[::3]] == ["a", "b", "c", "a"]  # who goes first rotates
    assert sorted(calls) == sorted((k, i) for k in "abc" for i in range(4))
    assert [[a["image_id"] for a in answers[k]["two"]] for k in range(3)] == [[2, 3]] * 3
