"""Recipes that rerun: every committed model's lineage holds the commands that made it, and they parse
with today's command line; `posekd distill reproduce` prints the chain; a wall-time cap is recorded as
the step it stopped at; the committed store refuses versions made from a dirty tree."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

pytest.importorskip("torch")

from distill.reproduce import chain, init_of, pin_stop, pinned_commands, render  # noqa: E402
from distill.students import PRESETS  # noqa: E402
from service.cli import build_parser  # noqa: E402
from service.cli import main as cli  # noqa: E402
from service.store import ModelStore  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
def _committed() -> list[Path]:
    from service.store.teachers import TEACHERS

    teachers = {fields["name"] for fields in TEACHERS.values()}  # `make run` registers them here, untracked
    return sorted(p for p in (ROOT / "model_store").glob("*/[0-9]*/model.json") if p.parent.parent.name not in teachers)


COMMITTED = _committed()


@pytest.mark.parametrize("manifest", COMMITTED, ids=lambda p: f"{p.parent.parent.name}:{p.parent.name}")
def test_every_committed_recipe_parses_with_todays_command_line(manifest):
    lineage = json.loads(manifest.read_text())["lineage"]
    commands = pinned_commands(lineage)
    assert commands, "no recorded command"
    parser = build_parser()
    for command in commands:
        words = shlex.split(command.replace("$POSEKD_DATA", "/data"))
        assert words[0] == "posekd", command
        args = parser.parse_args(words[1:])  # exits (SystemExit) on an option that no longer exists
        assert callable(args.func)
        if words[1:3] == ["distill", "train"]:
            assert args.preset in PRESETS, command
        assert "--minutes" not in words  # every wall-time cap is pinned to the step it stopped at


def test_reproduce_prints_the_chain_that_made_pose_s_4(capsys):
    assert cli(["distill", "reproduce", "pose-s:4", "--dry-run"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("posekd ")]
    assert [shlex.split(line)[1:3] for line in lines] == [["distill", "cache"], ["distill", "train"],
                                                          ["distill", "export"], ["distill", "quantize"]]
    assert "--stop-after 3300" in lines[1]  # its float parent ran 3,300 of 9,000 scheduled steps
    assert "# 1. pose-t:1" in out and "# 2. pose-s:4" in out and "moving alias" in out


def test_a_pinned_init_pulls_in_the_chain_of_the_model_it_started_from():
    store = ModelStore(ROOT / "model_store")
    steps = chain("detector-s:4", store)
    assert [s.model for s in steps] == ["detector-s:2", "detector-s:3", "detector-s:4"]
    assert init_of(steps[-1].commands) == "detector-s:3"
    assert "+dirty" in render(steps) or "uncommitted" in render(steps)


def test_a_wall_time_cap_becomes_the_step_it_stopped_at():
    assert pin_stop("posekd distill train pose-m --steps 9000 --minutes 100 --seed 1", 3300) == \
        "posekd distill train pose-m --steps 9000 --stop-after 3300 --seed 1"
    assert pin_stop("posekd distill train pose-m --steps 10", None) == "posekd distill train pose-m --steps 10"


def test_the_committed_store_refuses_a_version_from_a_dirty_tree(monkeypatch, tmp_path):
    from distill import export

    monkeypatch.setattr(export, "git_commit", lambda: "abc123+dirty")
    assert "uncommitted" in (export.dirty_refusal(ROOT / "model_store", allow=False) or "")
    assert export.dirty_refusal(ROOT / "model_store", allow=True) is None
    assert export.dirty_refusal(tmp_path / "scratch-store", allow=False) is None  # runs' own stores never ask
    monkeypatch.setattr(export, "git_commit", lambda: "abc123")
    assert export.dirty_refusal(ROOT / "model_store", allow=False) is None
    versions = export.library_versions()
    assert {"python", "torch", "onnxruntime", "numpy"} <= set(versions)
