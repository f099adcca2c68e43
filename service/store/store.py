"""The on-disk model store: ``<root>/<name>/<version>/{model.onnx, model.json}`` and
``<root>/<name>/aliases.json``. Reads, verifies and writes; never loads a model into a runtime."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import InvalidParameter, ManifestError, ModelNotFound, ModelUnavailable, PoseKDError
from ..names import ALIAS_RULE, MODEL_NAME_RULE, is_alias, is_model_name, is_version
from .manifest import Manifest, sha256_bytes, sha256_file

log = logging.getLogger("posekd.store")
_SPEC = re.compile(r"^(?P<name>[^:@]+)(?::(?P<version>\d{1,10})|@(?P<alias>[^:@]+))?$")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model reference: ``name``, ``name:version`` or ``name@alias``."""
    name: str
    version: int | None = None
    alias: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        m = _SPEC.match(text.strip()) if isinstance(text, str) else None
        v = m.group("version") if m else None
        alias = m.group("alias") if m else None
        if (not m or not is_model_name(m.group("name")) or (alias is not None and not is_alias(alias))
                or (v is not None and not is_version(int(v)))):
            raise InvalidParameter(f"bad model reference {str(text)[:80]!r}: use name, name:version or name@alias "
                                   f"(names are {MODEL_NAME_RULE}; aliases {ALIAS_RULE}; versions 1 and up)")
        return cls(m.group("name"), int(v) if v else None, m.group("alias"))

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}:{self.version}"
        return f"{self.name}@{self.alias}" if self.alias else self.name


class ModelStore:
    def __init__(self, root: Path | str):
        self.root = Path(root)

    # ---- reading ----------------------------------------------------------------------------
    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def _dir(self, name: str) -> Path:
        """The model's directory; a name that cannot be a model here (``..``, ``/``, too long) is not
        found rather than looked up, so no path outside the store is ever touched."""
        if not is_model_name(name):
            raise ModelNotFound(f"no model is named {str(name)[:80]!r} (names are {MODEL_NAME_RULE})")
        return self.root / name

    def versions(self, name: str) -> list[int]:
        if not is_model_name(name):
            return []
        d = self.root / name
        if not d.is_dir():
            return []
        return sorted(int(p.name) for p in d.iterdir()
                      if p.is_dir() and p.name.isdigit() and (p / "model.json").is_file())

    def version_dir(self, name: str, version: int) -> Path:
        if not is_version(version):
            raise ModelNotFound(f"model {name}:{version} is not in the store")
        return self._dir(name) / str(version)

    def manifest(self, name: str, version: int) -> Manifest:
        path = self.version_dir(name, version) / "model.json"
        where = f"{name}/{version}/model.json"  # relative: store paths are not the client's business
        if not path.is_file():
            raise ModelNotFound(f"model {name}:{version} is not in the store")
        try:
            manifest = Manifest.model_validate_json(path.read_bytes())
        except ValidationError as exc:
            raise ManifestError(f"{where}: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from exc
        if manifest.name != name or manifest.version != version:
            raise ManifestError(f"{where} says {manifest.name}:{manifest.version}, "
                                f"but lives at {name}/{version}")
        return manifest

    def aliases(self, name: str) -> dict[str, int]:
        if not is_model_name(name):
            return {}
        path = self.root / name / "aliases.json"
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text())
            return {str(k): int(v) for k, v in data.items()}
        except (ValueError, AttributeError, TypeError) as exc:
            raise ManifestError(f"{name}/aliases.json is not a JSON object of alias -> version: {exc}") from exc

    def model_path(self, manifest: Manifest) -> Path:
        return self.version_dir(manifest.name, manifest.version) / manifest.file

    def read_verified(self, name: str, version: int) -> tuple[Manifest, bytes]:
        """The manifest and the ONNX bytes, refused unless the bytes hash to the manifest's sha256.
        The bytes returned are the ones hashed, so what is verified is what gets loaded."""
        manifest = self.manifest(name, version)
        path = self.model_path(manifest)
        if not path.is_file():
            raise ModelUnavailable(f"{name}:{version}: {manifest.file} is missing")
        data = path.read_bytes()
        digest = sha256_bytes(data)
        if digest != manifest.sha256:
            raise ModelUnavailable(f"{name}:{version}: sha256 of {manifest.file} is {digest[:12]}…, "
                                   f"the manifest expects {manifest.sha256[:12]}…; refusing to load it",
                                   code="model_verification_failed")
        return manifest, data

    def verify(self, name: str, version: int) -> str | None:
        """None when the version is intact, else what is wrong with it."""
        try:
            manifest = self.manifest(name, version)
            path = self.model_path(manifest)
            if not path.is_file():
                return f"{manifest.file} is missing"
            if sha256_file(path) != manifest.sha256:
                return "sha256 mismatch"
        except (ManifestError, ModelNotFound) as exc:
            return exc.message
        return None

    def resolve(self, spec: ModelSpec, default_alias: str = "production",
                aliases: dict[str, int] | None = None) -> int:
        """The version a spec names. ``aliases`` overrides the file (the registry passes the
        aliases it actually serves). A bare name means ``default_alias``, else the newest version."""
        versions = self.versions(spec.name)
        if not versions:
            raise ModelNotFound(f"unknown model {spec.name!r}")
        if spec.version is not None:
            if spec.version not in versions:
                raise ModelNotFound(f"model {spec.name!r} has no version {spec.version}")
            return spec.version
        table = self.aliases(spec.name) if aliases is None else aliases
        if spec.alias is not None:
            if spec.alias not in table:
                raise ModelNotFound(f"model {spec.name!r} has no alias {spec.alias!r}")
            return table[spec.alias]
        return table.get(default_alias, versions[-1])

    def fingerprint(self) -> tuple:
        """Cheap change detector: names, mtimes and sizes of every manifest, alias file and model file."""
        items = []
        if self.root.is_dir():
            for path in sorted(self.root.glob("*/aliases.json")) + sorted(self.root.glob("*/*/model.*")):
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                items.append((str(path), st.st_mtime_ns, st.st_size))
        return tuple(items)

    # ---- writing ----------------------------------------------------------------------------
    def set_alias(self, name: str, alias: str, version: int) -> dict[str, int]:
        if not is_alias(alias):
            raise InvalidParameter(f"bad alias {str(alias)[:80]!r}: {ALIAS_RULE}")
        if version not in self.versions(name):
            raise ModelNotFound(f"model {name!r} has no version {version}")
        table = self.aliases(name)
        table[alias] = version
        try:
            _atomic_write(self.root / name / "aliases.json", json.dumps(table, indent=2, sort_keys=True) + "\n")
        except OSError as exc:
            log.error("cannot write %s: %s", self.root / name / "aliases.json", exc)
            raise PoseKDError(f"cannot write {name}/aliases.json (the store is not writable here)",
                              code="store_not_writable",
                              status=409) from exc
        return table

    def add_version(self, onnx_path: Path | str, manifest_fields: dict[str, Any], *,
                    version: int | None = None) -> Manifest:
        """Copy an ONNX file into the store as a new version and write its validated manifest."""
        src = Path(onnx_path)
        if not src.is_file():
            raise InvalidParameter(f"{src} is not a file")
        name = manifest_fields["name"]
        existing = self.versions(name)
        version = version or (existing[-1] + 1 if existing else 1)
        if version in existing:
            raise InvalidParameter(f"{name}:{version} already exists")
        fields = dict(manifest_fields)
        fields.update(version=version, sha256=sha256_file(src), file="model.onnx")
        fields.setdefault("created_at", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        try:
            manifest = Manifest.model_validate(fields)
        except ValidationError as exc:
            raise ManifestError(f"manifest for {name}: {exc}") from exc
        final = self.version_dir(name, version)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=final.parent))
        try:
            shutil.copyfile(src, tmp / "model.onnx")
            (tmp / "model.json").write_text(manifest.model_dump_json(indent=2) + "\n")
            os.replace(tmp, final)  # the version appears whole or not at all
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return manifest

    def find_by_sha(self, name: str, sha256: str) -> int | None:
        for v in self.versions(name):
            try:
                if self.manifest(name, v).sha256 == sha256:
                    return v
            except ManifestError:
                continue
        return None


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
