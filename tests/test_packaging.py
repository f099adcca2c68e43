"""What ``pip install`` gives: a wheel that carries the default models and finds them from any folder,
and an HTTP client that stays light."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSEKD_")}
    env.update(extra)
    return env


def test_the_http_client_imports_neither_onnxruntime_nor_fastapi(tmp_path):
    code = ("import sys, posekd; posekd.Client('http://127.0.0.1:9'); posekd.AsyncClient('http://127.0.0.1:9'); "
            "print(sorted(m for m in ('onnxruntime', 'fastapi', 'starlette', 'uvicorn', 'redis', 'cv2', 'torch') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_clean_env(), capture_output=True,
                         text=True, check=True)
    assert json.loads(out.stdout.replace("'", '"')) == []


@pytest.mark.slow
def test_the_wheel_carries_the_default_models_and_finds_them_from_any_folder(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT),
                    "-w", str(wheels)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = wheels.glob("posekd-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for model in ("pose-s", "detector-s"):
        production = json.loads((ROOT / "model_store" / model / "aliases.json").read_text())["production"]
        assert f"service/_models/{model}/{production}/model.onnx" in names
        assert f"service/_models/{model}/{production}/model.json" in names
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import json, numpy as np, posekd, service; from service.settings import Settings; "
            "e = posekd.load(); r = e(np.zeros((120, 160, 3), np.uint8)); "
            "print(json.dumps({'store': str(Settings().model_store), 'names': e.names, 'package': service.__file__,"
            " 'people': len(r.people)}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=_clean_env(PYTHONPATH=str(site)),
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["package"].startswith(str(site))  # the installed copy, not the checkout
    assert got["store"] == str(site / "service" / "_models")
    assert got["names"][0].startswith("pose-s:") and got["names"][1].startswith("detector-s:")
    # a store that does not have the model: the error says where it looked
    out = subprocess.run([sys.executable, "-c", "import posekd; posekd.load()"], cwd=elsewhere,
                         env=_clean_env(PYTHONPATH=str(site), POSEKD_MODEL_STORE=str(tmp_path / "empty")),
                         capture_output=True, text=True)
    assert out.returncode != 0 and str(tmp_path / "empty") in out.stderr


def test_training_commands_without_torch_say_what_to_install(tmp_path):
    """A runtime-only install: `posekd distill …` ends in one line naming the extra, not a traceback."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "torch.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    out = subprocess.run([sys.executable, "-m", "service.cli", "distill", "train", "centernet-s", "--cache",
                          str(tmp_path / "c"), "--out", str(tmp_path / "o")], cwd=ROOT,
                         env=_clean_env(PYTHONPATH=str(blocker)), capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert "pip install 'posekd[train]'" in out.stderr
    assert "Traceback" not in out.stderr
