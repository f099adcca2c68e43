"""Build hook: the wheel carries the default models (the ``production`` versions of the default pose
model and detector in ``model_store/``) as package data under ``service/_models``, so ``pip install
posekd`` serves them wherever it runs. Everything else is declared in pyproject.toml."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
DEFAULT_MODELS = ("pose-s", "detector-s")  # service.settings.Settings.default_pose_model / default_detector


class BuildWithModels(build_py):
    def run(self):
        super().run()
        store = ROOT / "model_store"
        if not store.is_dir():  # building from an sdist without the store: nothing to add
            return
        target = Path(self.build_lib) / "service" / "_models"
        for name in DEFAULT_MODELS:
            aliases = json.loads((store / name / "aliases.json").read_text())
            version = str(aliases["production"])
            shutil.copytree(store / name / version, target / name / version, dirs_exist_ok=True)
            (target / name / "aliases.json").write_text(json.dumps({"production": aliases["production"]}))


setup(cmdclass={"build_py": BuildWithModels})
