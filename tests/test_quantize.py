"""Int8 versions of registered students (``posekd distill quantize``): re-shaping a fully convolutional
graph, static quantization that keeps the outputs, size counted like the float graph, lineage back to
the float version, and the gate's held-out accuracy mode."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from distill.export import export_module, manifest_fields, to_onnx  # noqa: E402,I001
from distill.movenet import Arch  # noqa: E402
from distill.students import StudentConfig, build_student  # noqa: E402

from .test_distill import _coco_set  # noqa: E402

ARCH = Arch((8, 8), [(24, o) for o in [8, 8, 8, 8, 8, 16, 16, 16, 16, 16, 16, 16, 24, 24, 24, 24]], 40,
            (16, 8, 8), 16)


def _student(tmp_path, size: int = 64):
    """A small MoveNet-head student registered as ``tiny:1`` (production) in a store under tmp_path."""
    from service.store import ModelStore

    torch.manual_seed(0)
    cfg = StudentConfig("movenet", size, 1.0, 1, "none")
    model = build_student(cfg, None, arch=ARCH)
    data = to_onnx(export_module(model, cfg), cfg)
    path = tmp_path / "tiny.onnx"
    path.write_bytes(data)
    store = ModelStore(tmp_path / "store")
    fields = manifest_fields("tiny", cfg, description="a tiny student", lineage={"teacher": "movenet-thunder:1",
                                                                               "license": "test"})
    store.add_version(path, fields)
    store.set_alias("tiny", "production", 1)
    return store, data


def test_a_graph_reshaped_to_another_input_size_runs_there(tmp_path):
    import onnxruntime as ort

    from distill.quantize import with_input_size

    _, data = _student(tmp_path)
    sess = ort.InferenceSession(with_input_size(data, 96, 96), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[2:] == [96, 96]
    outs = sess.run(None, {"image": np.zeros((2, 3, 96, 96), np.float32)})
    assert all(o.shape[0] == 2 and o.shape[2:] == (24, 24) for o in outs)  # stride 4


def test_int8_graph_keeps_the_float_outputs_and_counts_the_same_weights(tmp_path):
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from distill.evaluate import gflops, weight_count
    from distill.quantize import KEEP_FLOAT_SUFFIX, quantize

    _, data = _student(tmp_path)
    rng = np.random.default_rng(0)
    batches = [rng.uniform(-1, 1, (8, 3, 64, 64)).astype(np.float32) for _ in range(4)]
    q = quantize(data, batches, "image")
    g = onnx.load_from_string(q)
    ops = {n.op_type for n in g.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert any(t.data_type == onnx.TensorProto.INT8 for t in g.graph.initializer)  # int8 weights
    producers = {o: n for n in g.graph.node for o in n.output}
    heads = [n for n in g.graph.node if n.op_type == "Conv" and n.name.endswith(KEEP_FLOAT_SUFFIX)]
    assert heads and all(producers[n.input[1]].op_type != "DequantizeLinear" if n.input[1] in producers
                         else True for n in heads)  # the heads' last convolutions keep float weights
    n_int8, n_float = weight_count(g, numpy_helper), weight_count(onnx.load_from_string(data), numpy_helper)
    assert abs(n_int8 - n_float) <= 0.01 * n_float  # (a bias two convolutions share is stored once per user)
    assert gflops(q, "image", (1, 3, 64, 64)) == gflops(data, "image", (1, 3, 64, 64))
    x = rng.uniform(-1, 1, (2, 3, 64, 64)).astype(np.float32)
    a = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(["kpt_heatmap"], {"image": x})[0]
    b = ort.InferenceSession(q, providers=["CPUExecutionProvider"]).run(["kpt_heatmap"], {"image": x})[0]
    assert a.shape == b.shape and np.abs(a - b).mean() < 0.02 and not np.allclose(a, b)


def test_quantize_command_registers_an_int8_version_with_its_lineage(tmp_path, capsys):
    import onnx
    from onnx import numpy_helper

    from distill.evaluate import weight_count
    from service.cli import main
    from service.store import ModelStore

    store, data = _student(tmp_path)
    coco = _coco_set(tmp_path / "coco", n_images=3)
    rc = main(["distill", "quantize", "tiny@production", "--name", "tiny-fast", "--size", "96",
               "--calib", f"coco:{coco}", "--views", "6", "--store", str(store.root), "--eval-set", "",
               "--pck", "", "--teacher", "", "--no-promote", "--to-store", str(tmp_path / "served")])
    assert rc == 0
    served = ModelStore(tmp_path / "served")
    assert "tiny-fast" not in store.names() and served.names() == ["tiny-fast"]
    m = served.manifest("tiny-fast", 1)
    assert (m.input.height, m.input.width) == (96, 96) and m.output.decoder == "movenet_heads"
    lineage = json.loads(m.model_dump_json())["lineage"]
    source = store.manifest("tiny", 1)
    assert lineage["quantized_from"]["model"] == "tiny:1"
    assert lineage["quantized_from"]["sha256"] == source.sha256 and lineage["quantized_from"]["input_px"] == 96
    assert lineage["calibration_views"] == 6 and lineage["data"] == [f"coco:{coco}"]
    assert lineage["teacher"] == "movenet-thunder:1" and lineage["command"].startswith("posekd distill quantize")
    assert lineage["fidelity"]["mean_px"] is not None and lineage["fidelity"]["input_px"] == 96
    n_float = weight_count(onnx.load_from_string(data), numpy_helper)
    assert m.params and abs(m.params - n_float) <= 0.01 * n_float and "int8" in m.description
    assert "production" not in served.aliases("tiny-fast")  # --no-promote


def test_pose_calibration_needs_people(tmp_path):
    from distill.data import Record
    from distill.quantize import calibration_batches

    store, _ = _student(tmp_path)
    image_only = [Record("folder", "x.jpg", [], image=np.zeros((50, 60, 3), np.uint8))]
    with pytest.raises(ValueError, match="person boxes"):
        calibration_batches(store.manifest("tiny", 1), image_only, 4)


def test_gates_can_hold_the_floor_by_held_out_pck():
    from distill.export import Gates

    floor = {"model": "movenet-lightning:1", "gt_boxes": {"AP": 0.307}, "ms_b1": 5.0, "pck@0.2": 0.592}
    new = {"gt_boxes": {"AP": 0.300}, "ms_b1": 3.3, "pck@0.2": 0.636}
    assert Gates(floor_latency_ratio=0.7).check(new, None, floor)[1] == ["AP 0.300 is below movenet-lightning:1's "
                                                                         "0.307"]
    assert Gates(floor_latency_ratio=0.7, floor_accuracy="pck").check(new, None, floor) == (True, [])
    ok, why = Gates(floor_latency_ratio=0.7, floor_accuracy="both").check(new, None, floor)
    assert not ok and len(why) == 1 and "AP" in why[0]
    worse = {**new, "pck@0.2": 0.55}
    ok, why = Gates(floor_latency_ratio=0.7, floor_accuracy="pck").check(worse, None, floor)
    assert not ok and why == ["held-out PCK@0.2 0.550 is below movenet-lightning:1's 0.592"]
    ok, why = Gates(floor_accuracy="pck").check({"gt_boxes": {"AP": 0.3}, "ms_b1": 3.0}, None, floor)
    assert not ok and "not measured" in why[0]


def test_training_can_continue_from_an_int8_version(tmp_path):
    """``distill train --init`` on a committed int8 version: every weight comes back, dequantized, close
    to the float weights it was quantized from."""
    from distill.quantize import quantize
    from distill.weights import load_exported

    _, data = _student(tmp_path)
    rng = np.random.default_rng(0)
    q = quantize(data, [rng.uniform(-1, 1, (8, 3, 64, 64)).astype(np.float32) for _ in range(4)], "image")
    cfg = StudentConfig("movenet", 64, 1.0, 1, "none")
    from_float, from_int8 = build_student(cfg, None, arch=ARCH), build_student(cfg, None, arch=ARCH)
    names = load_exported(from_float, data)
    assert load_exported(from_int8, q) == names and len(names) >= 0.95 * len(from_float.state_dict())
    a, b = from_float.state_dict(), from_int8.state_dict()
    convs = [k for k in names if k.endswith("weight") and a[k].dim() == 4]
    errors = [float((a[k] - b[k]).norm() / a[k].norm()) for k in convs]
    assert convs and max(errors) < 0.05 and np.mean(errors) > 0  # int8 steps, not the float weights again


@pytest.mark.parametrize("batches_of_large", [4, 3])
def test_min_max_ranges_come_from_every_calibration_batch(tmp_path, batches_of_large):
    """Min-max calibration must see every batch: the input's range spans the large first batches although
    the last one is small (ONNX Runtime 1.32 drops the batches it folds in chunks, so chunking is off)."""
    import onnx
    from onnx import numpy_helper

    from distill.quantize import quantize

    _, data = _student(tmp_path)
    rng = np.random.default_rng(0)
    batches = [rng.uniform(-1, 1, (8, 3, 64, 64)).astype(np.float32) for _ in range(batches_of_large)]
    batches.append(rng.uniform(-0.05, 0.05, (8, 3, 64, 64)).astype(np.float32))
    g = onnx.load_from_string(quantize(data, batches, "image", method="minmax")).graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    q_in = next(n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] == "image")
    assert float(inits[q_in.input[1]]) * 255 >= 1.9  # the range [-1, 1] of the large batches, not ±0.05
