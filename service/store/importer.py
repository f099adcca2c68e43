"""Register external ONNX files as store versions: a user's own model, or the shared teachers."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from ..errors import ManifestError
from .manifest import Manifest, graph_outputs, sha256_file
from .store import ModelStore
from .teachers import TEACHERS, teacher_manifest

log = logging.getLogger("posekd.store")


def count_params(path: Path) -> int | None:
    """Parameters in the ONNX initializers, when the optional ``onnx`` package is installed."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        return None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return None
    return int(sum(numpy_helper.to_array(t).size for t in model.graph.initializer if t.data_type == 1))


def import_model(store: ModelStore, onnx_path: Path | str, fields: dict[str, Any], *,
                 alias: str | None = "production", if_missing: bool = False,
                 validate: bool = True) -> tuple[Manifest, bool]:
    """Add ``onnx_path`` as a new version of ``fields['name']``. With ``if_missing``, a file whose
    sha256 is already a version of that name is not added again. With ``validate``, the file must
    load in ONNX Runtime with the manifest's input and output names. Returns (manifest, added)."""
    onnx_path = Path(onnx_path)
    name = fields["name"]
    if if_missing:
        existing = store.find_by_sha(name, sha256_file(onnx_path))
        if existing is not None:
            if alias and alias not in store.aliases(name):
                store.set_alias(name, alias, existing)
            return store.manifest(name, existing), False
    fields = dict(fields)
    if fields.get("params") is None:
        fields["params"] = count_params(onnx_path)
    manifest = store.add_version(onnx_path, fields)
    if validate:
        try:
            import onnxruntime as ort
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.log_severity_level = 1, 3
            graph_outputs(manifest, ort.InferenceSession(onnx_path.read_bytes(), opts,
                                                         providers=["CPUExecutionProvider"]))
        except Exception as exc:
            shutil.rmtree(store.version_dir(manifest.name, manifest.version), ignore_errors=True)
            raise ManifestError(f"{onnx_path} does not run as described: {exc}") from exc
    if alias:
        store.set_alias(name, alias, manifest.version)
    return manifest, True


def import_teachers(store: ModelStore, teachers_dir: Path | str, *,
                    if_missing: bool = True) -> list[tuple[Manifest, bool]]:
    """Register every known teacher file found in ``teachers_dir`` (see ``teachers.TEACHERS``)."""
    teachers_dir = Path(teachers_dir)
    done = []
    for filename in TEACHERS:
        path = teachers_dir / filename
        if not path.is_file():
            log.warning("teacher %s not found in %s", filename, teachers_dir)
            continue
        fields = teacher_manifest(filename)
        fields["lineage"]["source"] = f"{fields['lineage']['source']}; file {path.name}"
        done.append(import_model(store, path, fields, if_missing=if_missing))
    return done
