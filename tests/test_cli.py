import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from service.cli import main
from service.store.importer import import_model

from .helpers import POSE_FIELDS, blob_image, encode, tiny_pose_onnx


def test_models_list_show_verify_promote(store, tmp_path, capsys):
    root = str(store.root)
    assert main(["models", "--store", root, "list"]) == 0
    out = capsys.readouterr().out
    assert "tiny-pose" in out and "production=1" in out
    assert main(["models", "--store", root, "show", "tiny-pose@production"]) == 0
    assert json.loads(capsys.readouterr().out)["output"]["decoder"] == "heatmap"
    import_model(store, tiny_pose_onnx(tmp_path / "v2.onnx"), POSE_FIELDS, alias=None)
    assert main(["models", "--store", root, "promote", "tiny-pose", "2", "--alias", "staging"]) == 0
    assert store.aliases("tiny-pose") == {"production": 1, "staging": 2}
    assert main(["models", "--store", root, "verify"]) == 0
    path = store.version_dir("tiny-pose", 2) / "model.onnx"
    path.write_bytes(path.read_bytes() + b"junk")
    capsys.readouterr()
    assert main(["models", "--store", root, "verify"]) == 1
    assert "tiny-pose:2  FAILED: sha256 mismatch" in capsys.readouterr().out
    assert main(["models", "--store", root, "promote", "tiny-pose", "9"]) == 1


def test_models_import_own_file_reads_input_from_graph(tmp_path, capsys):
    root = str(tmp_path / "s")
    onnx_file = tiny_pose_onnx(tmp_path / "m.onnx")
    args = ["models", "--store", root, "import", str(onnx_file), "--name", "mine", "--task", "pose",
            "--decoder", "heatmap", "--if-missing"]
    assert main(args) == 0
    assert main(args) == 0  # same file again: not added twice
    out = capsys.readouterr().out
    assert "mine:1" in out and "already present" in out
    assert main(["models", "--store", root, "show", "mine"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["input"]["name"] == "image" and (m["input"]["height"], m["input"]["width"]) == (64, 64)
    assert m["input"]["layout"] == "NCHW" and m["sha256"]
    assert main(["models", "--store", root, "import", str(onnx_file), "--name", "bad", "--task", "pose",
                 "--decoder", "multipose"]) == 1


def test_empty_store_says_how_to_fill_it(tmp_path, capsys):
    assert main(["models", "--store", str(tmp_path / "none"), "list"]) == 1  # a script can tell
    err = capsys.readouterr().err
    assert "posekd models import --teachers" in err and str(tmp_path / "none") in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_serve_process_reloads_on_sighup(store, tmp_path):
    port = _free_port()
    env = {**os.environ, "POSEKD_MODEL_STORE": str(store.root), "POSEKD_DEFAULT_POSE_MODEL": "tiny-pose",
           "POSEKD_DEFAULT_DETECTOR": "tiny-det", "POSEKD_STORE_POLL_S": "0", "POSEKD_MIN_SCORE": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if _get(base + "/readyz")["status"] == "ready":
                    break
            except OSError:
                time.sleep(0.1)
        png = encode(blob_image())
        pose = lambda: _get(base + "/v1/pose", png, {"content-type": "image/png"})  # noqa: E731
        assert pose()["model"]["version"] == 1
        import_model(store, tiny_pose_onnx(tmp_path / "v2.onnx"), POSE_FIELDS)  # production -> 2 on disk
        assert pose()["model"]["version"] == 1  # not yet: no reload
        proc.send_signal(signal.SIGHUP)
        for _ in range(50):
            if pose()["model"]["version"] == 2:
                break
            time.sleep(0.1)
        assert pose()["model"]["version"] == 2
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it (exit status -15)
    assert proc.returncode in (0, -signal.SIGTERM), out.decode()[-2000:]
    assert "Application shutdown complete" in out.decode()


@pytest.mark.parametrize("env, says", [
    ({"POSEKD_REDIS_URL": "redis://127.0.0.1:1", "POSEKD_REQUEST_TIMEOUT_S": "5"}, "POSEKD_REQUEST_TIMEOUT_S"),
    ({"POSEKD_WORKER_HEARTBEAT_S": "3", "POSEKD_WORKER_STALE_S": "4"}, "twice"),
    ({"POSEKD_VISIBILITY_TIMEOUT_S": "-1"}, "0 (off) or positive"),
])
def test_settings_that_cannot_work_together_are_refused_at_start(env, says, monkeypatch, capsys):
    """A crashed worker's requests must be taken over before their callers give up: refuse the rest."""
    from service.cli import main
    from service.settings import get_settings
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    try:
        assert main(["worker"]) == 2
    finally:
        get_settings.cache_clear()
    assert says in capsys.readouterr().err


def test_video_command_writes_posetrack(store, tmp_path, monkeypatch, capsys):
    """`posekd video CLIP --format posetrack -o FILE`: a PoseTrack/COCO document of the tracked clip."""
    from .helpers import blob_clip

    monkeypatch.setenv("POSEKD_MODEL_STORE", str(store.root))
    monkeypatch.setenv("POSEKD_DEFAULT_POSE_MODEL", "tiny-pose")
    monkeypatch.setenv("POSEKD_DEFAULT_DETECTOR", "tiny-det")
    from service.settings import get_settings
    get_settings.cache_clear()
    clip = blob_clip(tmp_path / "c.mp4", frames=8)
    out = tmp_path / "pt.json"
    try:
        assert main(["video", str(clip), "--format", "posetrack", "-o", str(out)]) == 0
    finally:
        get_settings.cache_clear()
    doc = json.loads(out.read_text())
    assert len(doc["images"]) == 8 and doc["categories"][0]["name"] == "person"
    assert all("track_id" in a for a in doc["annotations"])


@pytest.mark.parametrize("what", ["people", "labels"])
def test_a_benchmark_help_is_its_own(capsys, what):
    with pytest.raises(SystemExit) as stop:
        main(["bench", what, "--help"])
    assert stop.value.code == 0
    assert f"usage: posekd bench {what}" in capsys.readouterr().out
