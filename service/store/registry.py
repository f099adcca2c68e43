"""Models as served: which versions are loaded, which aliases point where, and what failed.

The registry is the only place that turns store entries into loaded runtimes (through ``loader``),
and the only place aliases change while serving. A new target is loaded and verified *before* an
alias moves to it, so a bad file never replaces a version that serves."""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ManifestError, ModelNotFound, ModelUnavailable, PoseKDError
from .manifest import Manifest, sha256_file
from .store import ModelSpec, ModelStore

log = logging.getLogger("posekd.store")

Loader = Callable[[Manifest, bytes], Any]


@dataclass
class ServedModel:
    manifest: Manifest
    session: Any  # what the loader built (an ONNX Runtime session for the pipeline: pipeline.runtime.OnnxModel)
    file_stat: tuple[int, int]  # (mtime_ns, size) when verified

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version


@dataclass
class ReloadReport:
    changed: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"changed": self.changed, "errors": self.errors}


class ModelRegistry:
    def __init__(self, store: ModelStore, loader: Loader, default_alias: str = "production"):
        self.store = store
        self.loader = loader
        self.default_alias = default_alias
        self._loaded: dict[tuple[str, int], ServedModel] = {}
        self._aliases: dict[str, dict[str, int]] = {}  # served aliases, per name
        self._errors: dict[tuple[str, int], str] = {}
        self._lock = threading.RLock()
        self._load_lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        for name in store.names():
            self._aliases[name] = self._disk_aliases(name)

    # ---- lookups ----------------------------------------------------------------------------
    def get(self, spec: ModelSpec | str, task: str | None = None) -> ServedModel:
        spec = ModelSpec.parse(spec) if isinstance(spec, str) else spec
        with self._lock:
            aliases = self._aliases.get(spec.name)
        if aliases is None:  # a name that appeared since the last reload
            aliases = self._disk_aliases(spec.name)
        version = self.store.resolve(spec, self.default_alias, aliases)
        served = self._loaded.get((spec.name, version)) or self._load(spec.name, version)
        if task is not None and served.manifest.task != task:
            raise ModelNotFound(f"model {spec} is a {served.manifest.task} model, not {task}")
        return served

    def loaded(self) -> list[ServedModel]:
        with self._lock:
            return list(self._loaded.values())

    def served_aliases(self, name: str) -> dict[str, int]:
        with self._lock:
            if name in self._aliases:
                return dict(self._aliases[name])
        return self._disk_aliases(name)

    def error(self, name: str, version: int) -> str | None:
        return self._errors.get((name, version))

    def on_change(self, callback: Callable[[], None]) -> None:
        """Called after aliases or loaded versions change (metrics use it)."""
        self._listeners.append(callback)

    # ---- changes ----------------------------------------------------------------------------
    def set_alias(self, name: str, alias: str, version: int) -> dict[str, int]:
        """Point ``alias`` at ``version``: the version is loaded and verified first; on failure the
        alias stays where it was and ModelUnavailable is raised."""
        self._load(name, version)
        table = self.store.set_alias(name, alias, version)
        with self._lock:
            self._aliases[name] = dict(table)
        self._notify()
        return table

    def reload(self) -> ReloadReport:
        """Re-read the store. Aliases move only to versions that load; versions whose file changed
        on disk are re-verified, and a loaded copy keeps serving when its file no longer matches."""
        report = ReloadReport()
        for key, served in list(self._loaded.items()):
            label = f"{key[0]}:{key[1]}"
            problem = self._file_problem(served)
            if problem:
                self._errors[key] = f"{problem}; the copy loaded earlier keeps serving"
                report.errors[label] = self._errors[key]
                log.error("reload: %s: %s", label, self._errors[key])
        for name in self.store.names():
            try:
                disk = self._disk_aliases(name)
            except ManifestError as exc:
                report.errors[name] = exc.message
                continue
            with self._lock:
                current = dict(self._aliases.get(name, {}))
            new = dict(current)
            for alias in set(current) - set(disk):
                del new[alias]
            for alias, version in disk.items():
                if current.get(alias) == version:
                    continue
                try:
                    if name in self._aliases:  # already served: prove the new target before moving
                        self._load(name, version)
                    new[alias] = version
                    report.changed.append(f"{name}@{alias} -> {version}")
                except PoseKDError as exc:
                    report.errors[f"{name}@{alias}"] = (f"{exc.message}; {name}@{alias} stays at "
                                                        f"version {current.get(alias)}")
                    log.error("reload: %s", report.errors[f"{name}@{alias}"])
            with self._lock:
                self._aliases[name] = new
        self._notify()
        return report

    def preload(self, specs: list[str]) -> dict[str, str]:
        """Load the given models now; returns {spec: error} for those that failed."""
        failed = {}
        for spec in specs:
            try:
                self.get(spec)
            except PoseKDError as exc:
                failed[spec] = exc.message
        return failed

    # ---- internals --------------------------------------------------------------------------
    def _disk_aliases(self, name: str) -> dict[str, int]:
        return self.store.aliases(name)

    def _load(self, name: str, version: int) -> ServedModel:
        key = (name, version)
        with self._load_lock:
            if key in self._loaded:
                return self._loaded[key]
            try:
                manifest, data = self.store.read_verified(name, version)
                path = self.store.model_path(manifest)
                st = os.stat(path)
                session = self.loader(manifest, data)
            except ModelUnavailable as exc:
                self._errors[key] = exc.message
                raise
            except ManifestError as exc:
                self._errors[key] = exc.message
                raise ModelUnavailable(exc.message) from exc
            except ModelNotFound:
                raise
            except Exception as exc:  # the runtime refused the file
                msg = f"{name}:{version} failed to load: {exc}"
                self._errors[key] = msg
                raise ModelUnavailable(msg) from exc
            served = ServedModel(manifest, session, (st.st_mtime_ns, st.st_size))
            with self._lock:
                self._loaded[key] = served
                self._errors.pop(key, None)
            log.info("loaded %s:%s (%s)", name, version, manifest.task)
        self._notify()
        return served

    def _file_problem(self, served: ServedModel) -> str | None:
        path = self.store.model_path(served.manifest)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return "model file removed from the store"
        if (st.st_mtime_ns, st.st_size) == served.file_stat:
            return None
        if sha256_file(path) != served.manifest.sha256:
            return "model file on disk no longer matches its sha256"
        served.file_stat = (st.st_mtime_ns, st.st_size)
        return None

    def _notify(self) -> None:
        for cb in self._listeners:
            try:
                cb()
            except Exception:  # a listener must never break serving
                log.exception("registry listener failed")
