import json

import pytest

from service.errors import InvalidParameter, ManifestError, ModelNotFound, ModelUnavailable
from service.pipeline.runtime import OnnxModel
from service.store import ModelRegistry, ModelSpec
from service.store.importer import import_model

from .helpers import POSE_FIELDS, tiny_pose_onnx


def loader(manifest, data):
    return OnnxModel(manifest, data, device="cpu", intra_threads=1)


@pytest.mark.parametrize("text,expected", [
    ("pose-s", ModelSpec("pose-s")),
    ("pose-s:3", ModelSpec("pose-s", version=3)),
    ("pose-s@staging", ModelSpec("pose-s", alias="staging")),
])
def test_spec_parse(text, expected):
    assert ModelSpec.parse(text) == expected


@pytest.mark.parametrize("text", ["", "Pose", "pose:", "pose:x", "pose@", "a/b", "pose:1@x", "../etc"])
def test_spec_parse_rejects(text):
    with pytest.raises(InvalidParameter):
        ModelSpec.parse(text)


def add_version(store, tmp_path, **extra):
    path = tiny_pose_onnx(tmp_path / f"p{len(store.versions('tiny-pose'))}.onnx")
    return import_model(store, path, {**POSE_FIELDS, **extra}, alias=None)[0]


def corrupt(store, name, version):
    path = store.version_dir(name, version) / "model.onnx"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))


def test_resolve_alias_version_and_default(store, tmp_path):
    add_version(store, tmp_path)  # version 2, no alias
    assert store.versions("tiny-pose") == [1, 2]
    assert store.resolve(ModelSpec("tiny-pose")) == 1  # production
    assert store.resolve(ModelSpec("tiny-pose", version=2)) == 2
    store.set_alias("tiny-pose", "staging", 2)
    assert store.resolve(ModelSpec("tiny-pose", alias="staging")) == 2
    (store.root / "tiny-pose" / "aliases.json").unlink()
    assert store.resolve(ModelSpec("tiny-pose")) == 2  # no aliases: newest
    with pytest.raises(ModelNotFound):
        store.resolve(ModelSpec("tiny-pose", alias="nope"))
    with pytest.raises(ModelNotFound):
        store.resolve(ModelSpec("tiny-pose", version=9))
    with pytest.raises(ModelNotFound):
        store.resolve(ModelSpec("ghost"))


def test_manifest_validation(store, tmp_path):
    with pytest.raises(ManifestError, match="does not fit task"):
        add_version(store, tmp_path, output={"decoder": "multipose"})
    path = store.version_dir("tiny-pose", 1) / "model.json"
    data = json.loads(path.read_text())
    data["version"] = 7
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="lives at"):
        store.manifest("tiny-pose", 1)


def test_read_verified_refuses_tampered_file(store):
    store.read_verified("tiny-pose", 1)
    corrupt(store, "tiny-pose", 1)
    with pytest.raises(ModelUnavailable, match="sha256"):
        store.read_verified("tiny-pose", 1)
    assert store.verify("tiny-pose", 1) == "sha256 mismatch"
    assert store.verify("tiny-det", 1) is None


def test_registry_alias_move_refuses_corrupt_version(store, tmp_path):
    reg = ModelRegistry(store, loader)
    assert reg.get("tiny-pose").version == 1
    add_version(store, tmp_path)
    corrupt(store, "tiny-pose", 2)
    with pytest.raises(ModelUnavailable):
        reg.set_alias("tiny-pose", "production", 2)
    assert store.aliases("tiny-pose")["production"] == 1
    assert reg.get("tiny-pose").version == 1
    assert "sha256" in reg.error("tiny-pose", 2)


def test_reload_keeps_serving_old_version_when_new_target_is_corrupt(store, tmp_path):
    reg = ModelRegistry(store, loader)
    reg.get("tiny-pose")
    add_version(store, tmp_path)
    corrupt(store, "tiny-pose", 2)
    store.set_alias("tiny-pose", "production", 2)  # someone edits the store on disk
    report = reg.reload()
    assert "tiny-pose@production" in report.errors
    assert reg.get("tiny-pose").version == 1
    # a good version 3 is picked up by the next reload
    add_version(store, tmp_path)
    store.set_alias("tiny-pose", "production", 3)
    report = reg.reload()
    assert report.changed == ["tiny-pose@production -> 3"]
    assert reg.get("tiny-pose").version == 3


def test_reload_keeps_loaded_copy_when_its_file_is_corrupted(store):
    reg = ModelRegistry(store, loader)
    served = reg.get("tiny-pose")
    corrupt(store, "tiny-pose", 1)
    report = reg.reload()
    assert "tiny-pose:1" in report.errors
    assert reg.get("tiny-pose") is served


def test_task_mismatch_is_not_found(store):
    reg = ModelRegistry(store, loader)
    with pytest.raises(ModelNotFound, match="person_detection model"):
        reg.get("tiny-det", task="pose")


def test_broken_onnx_is_unavailable(store, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(ManifestError, match="does not run"):
        import_model(store, bad, POSE_FIELDS)
    assert store.versions("tiny-pose") == [1]
    m, _ = import_model(store, bad, POSE_FIELDS, alias=None, validate=False)
    reg = ModelRegistry(store, loader)
    with pytest.raises(ModelUnavailable, match="failed to load"):
        reg.get(f"tiny-pose:{m.version}")



def test_read_only_store_refuses_alias_change_clearly(store, monkeypatch):
    import errno

    from service.errors import PoseKDError
    from service.store import store as store_mod

    def refuse(path, text):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(store_mod, "_atomic_write", refuse)
    with pytest.raises(PoseKDError) as err:
        store.set_alias("tiny-pose", "staging", 1)
    assert err.value.code == "store_not_writable" and err.value.status == 409
    assert "not writable" in err.value.message  # the OS error and the store's path go to the log only
    assert "Read-only" not in err.value.message and str(store.root) not in err.value.message
