"""``posekd distill reproduce NAME:VERSION``: the chain of commands that made a registered model, read
from its manifest's lineage — the source of an int8 or re-shaped version first, the registered model a
training run started from (``--init``) before that — printed (``--dry-run``) or run in order.

Lineages store paths under the shared data as ``$POSEKD_DATA``; the commands run through ``bash`` with
``POSEKD_DATA`` set to the data folder (:func:`service.shared.data_dir`)."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field

from service.shared import data_dir
from service.store import ModelSpec, ModelStore

MOVING = re.compile(r"^[a-z0-9][a-z0-9._-]*(@[A-Za-z0-9_-]+)?$")  # a bare name or name@alias: not pinned


@dataclass
class Step:
    model: str  # name:version this step's commands made
    sha256: str | None
    source: str
    commands: list[str]
    git_commit: str | None
    notes: list[str] = field(default_factory=list)


def pin_stop(command: str, step: int | None) -> str:
    """``command`` with ``--minutes X`` replaced by ``--stop-after STEP`` (unchanged without a step): a
    wall-time cap does not rerun to the same weights, the step it stopped at does."""
    words = shlex.split(command)
    if step is None or "--minutes" not in words:
        return command
    i = words.index("--minutes")
    words[i:i + 2] = ["--stop-after", str(step)]
    return " ".join(shlex.quote(w) for w in words)


def pinned_commands(lineage: dict) -> list[str]:
    """The lineage's commands as they rerun today: every ``--minutes`` of a training command replaced by the
    step that command stopped at (lineages recorded before the replacement still hold ``--minutes``), and
    renamed presets by their new names."""
    commands = split_commands(lineage.get("command") or "")
    stops = [*lineage.get("train_resumed_at", []), (lineage.get("training") or {}).get("steps")]
    out, j = [], 0
    for c in commands:
        words = shlex.split(c)
        if words[1:3] == ["distill", "train"]:
            c = pin_stop(renamed_preset(c), stops[j] if j < len(stops) else None)
            j += 1
        out.append(c)
    return out


def renamed_preset(command: str) -> str:
    """A training command with a preset's old name (one that was also a served model's) replaced."""
    from .students import RENAMED_PRESETS

    words = shlex.split(command)
    if len(words) > 3 and words[3] in RENAMED_PRESETS:
        words[3] = RENAMED_PRESETS[words[3]]
        return " ".join(shlex.quote(w) for w in words)
    return command


def split_commands(command: str) -> list[str]:
    """A lineage's ``command`` (commands joined by ``&&``) as separate commands."""
    return [c.strip() for c in command.split(" && ") if c.strip()]


def init_of(commands: list[str]) -> str | None:
    """The ``--init`` reference of a training command in the chain, if any."""
    for c in commands:
        words = shlex.split(c)
        for i, w in enumerate(words):
            if w == "--init" and i + 1 < len(words):
                return words[i + 1]
            if w.startswith("--init="):
                return w.split("=", 1)[1]
    return None


def _steps_of_lineage(model: str, sha256: str | None, lineage: dict, store: ModelStore | None,
                      seen: set[str]) -> list[Step]:
    steps: list[Step] = []
    for key in ("quantized_from", "reshaped_from"):
        parent = lineage.get(key)
        if parent:  # the float or fixed-size source, whose lineage is embedded
            steps += _steps_of_lineage(parent["model"], parent.get("sha256"), parent.get("lineage") or {}, store,
                                       seen)
    commands = pinned_commands(lineage)
    notes = ["made from a tree with uncommitted changes (git_commit +dirty): the commit alone may not rebuild it"
             ] if str(lineage.get("git_commit") or "").endswith("+dirty") else []
    init = init_of(commands)
    if init is not None:
        pinned = (lineage.get("training") or {}).get("init")
        if isinstance(pinned, dict):  # recorded since pins: name:version and sha256
            init = pinned.get("model", init)
        if MOVING.match(init):
            notes.append(f"--init {init} names a moving alias (recorded before --init was pinned): which version "
                         "it meant is not in the lineage")
        elif store is not None and init not in seen:
            steps += chain(init, store, seen)
    if model not in seen:
        seen.add(model)
        steps.append(Step(model, sha256, lineage.get("source", "?"), commands, lineage.get("git_commit"), notes))
    return steps


def chain(ref: str, store: ModelStore, seen: set[str] | None = None) -> list[Step]:
    """The steps that made ``ref`` (a registered model), earliest first."""
    seen = set() if seen is None else seen
    spec = ModelSpec.parse(ref)
    version = store.resolve(spec)
    manifest = store.manifest(spec.name, version)
    return _steps_of_lineage(f"{spec.name}:{version}", manifest.sha256, manifest.lineage.model_dump(), store, seen)


def render(steps: list[Step]) -> str:
    lines = []
    for i, s in enumerate(steps, 1):
        lines.append(f"# {i}. {s.model}" + (f" (sha256 {s.sha256[:12]}…)" if s.sha256 else "") +
                     f": {s.source}; git {s.git_commit or 'unknown'}")
        lines += [f"#    ! {n}" for n in s.notes]
        lines += s.commands or ["#    (no command recorded)"]
    return "\n".join(lines)


def run(steps: list[Step]) -> int:
    env = {**os.environ, "POSEKD_DATA": str(data_dir())}
    for s in steps:
        for c in s.commands:
            print(f"$ {c}", flush=True)
            rc = subprocess.run(["bash", "-c", c], env=env, check=False).returncode
            if rc != 0:
                print(f"stopped: exit {rc}")
                return rc
    return 0
