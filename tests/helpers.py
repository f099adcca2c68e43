"""Tiny real ONNX models and real encoded images, built inside the tests (no downloads, no ../shared)."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper

from service.store import ModelStore
from service.store.importer import import_model

HM = 16  # tiny pose model: 64×64 input, 16×16 heatmaps


def _save(graph, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def tiny_pose_onnx(path: Path, batch: int | str = "N") -> Path:
    """Heatmaps = 4×4 average pool of the crop's mean brightness, copied to 17 channels: every keypoint
    lands on the brightest blob of the crop, so tests know where the pipeline must put it."""
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, 64, 64])
    y = helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT, [batch, 17, HM, HM])
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["gray"], axes=[1], keepdims=1),
        helper.make_node("AveragePool", ["gray"], ["pooled"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Concat", ["pooled"] * 17, ["heatmaps"], axis=1),
    ]
    return _save(helper.make_graph(nodes, "tiny_pose", [x], [y]), path)


def tiny_detector_onnx(path: Path, box=(0.1, 0.1, 0.6, 0.9, 0.9), free_size: bool = False) -> Path:
    """Always one person box (normalised x1, y1, x2, y2, score), for any batch (and, with ``free_size``,
    any input height and width)."""
    hw: list[int | str] = ["H", "W"] if free_size else [64, 64]
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, *hw])
    y = helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", 1, 5])
    const = helper.make_tensor("box", TensorProto.FLOAT, [1, 1, 5], list(box))
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    shape = helper.make_tensor("shape", TensorProto.INT64, [3], [-1, 1, 1])
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["m"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Reshape", ["z", "shape"], ["z3"]),
        helper.make_node("Add", ["z3", "box"], ["boxes"]),
    ]
    graph = helper.make_graph(nodes, "tiny_det", [x], [y], initializer=[const, zero, shape])
    return _save(graph, path)


POSE_FIELDS = {
    "name": "tiny-pose", "task": "pose", "description": "test model",
    "input": {"name": "image", "height": 64, "width": 64, "layout": "NCHW", "dtype": "float32",
              "scale": 1 / 255, "mean": [0, 0, 0], "std": [1, 1, 1]},
    "output": {"decoder": "heatmap", "names": ["heatmaps"]},
    "crop": {"margin": 1.25},
}
DET_FIELDS = {
    "name": "tiny-det", "task": "person_detection",
    "input": {"name": "image", "height": 64, "width": 64, "layout": "NCHW", "dtype": "float32",
              "scale": 1 / 255, "mean": [0, 0, 0], "std": [1, 1, 1], "resize": "stretch"},
    "output": {"decoder": "boxes", "names": ["boxes"], "params": {"normalized": True}},
}


def make_store(root: Path) -> ModelStore:
    """A store with tiny-pose:1 and tiny-det:1, both production."""
    store = ModelStore(root)
    build = root.parent / "onnx"
    build.mkdir(exist_ok=True)
    import_model(store, tiny_pose_onnx(build / "pose.onnx"), POSE_FIELDS)
    import_model(store, tiny_detector_onnx(build / "det.onnx"), DET_FIELDS)
    return store


def blob_image(w: int = 300, h: int = 200, at=(90.0, 100.0), sigma: float = 6.0) -> np.ndarray:
    """Black BGR image with one bright Gaussian blob centred at ``at`` (x, y)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    g = np.exp(-((xx - at[0]) ** 2 + (yy - at[1]) ** 2) / (2 * sigma ** 2))
    return np.repeat((g * 255).astype(np.uint8)[..., None], 3, axis=2)


def encode(image: np.ndarray, ext: str = ".png") -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


def png_bomb(width: int, height: int) -> bytes:
    """A valid 8-bit grayscale PNG of width×height zeros: a few hundred KB that decode to width*height bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    parts = [comp.compress(row) for _ in range(height)]
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def jpeg_with_orientation(image: np.ndarray, orientation: int) -> bytes:
    """A JPEG whose EXIF says to rotate it (orientation 6 = 90° clockwise)."""
    jpg = encode(image, ".jpg")
    # TIFF header (little endian) + IFD0 with one entry: Orientation (0x0112), SHORT, count 1
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1)
    tiff += struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    app1 = b"Exif\x00\x00" + tiff
    segment = b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1
    return jpg[:2] + segment + jpg[2:]


def contrary_pose_onnx(path: Path) -> Path:
    """tiny_pose_onnx turned around: heatmaps = 1 − the pooled brightness, so every keypoint lands on the
    darkest part of the crop, with full confidence: a teacher that disagrees with tiny-pose."""
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 64, 64])
    y = helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT, ["N", 17, HM, HM])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["gray"], axes=[1], keepdims=1),
        helper.make_node("AveragePool", ["gray"], ["pooled"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Sub", ["one", "pooled"], ["dark"]),
        helper.make_node("Concat", ["dark"] * 17, ["heatmaps"], axis=1),
    ]
    return _save(helper.make_graph(nodes, "contrary_pose", [x], [y], initializer=[one]), path)


def add_contrary_pose(store: ModelStore) -> None:
    """Register contrary-pose:1 (production), a teacher that disagrees with tiny-pose."""
    build = store.root.parent / "onnx"
    build.mkdir(exist_ok=True)
    import_model(store, contrary_pose_onnx(build / "contrary.onnx"), {**POSE_FIELDS, "name": "contrary-pose"})


def slow_pose_onnx(path: Path, size: int = 1024, steps: int = 36) -> Path:
    """tiny_pose_onnx plus a chain of ``steps`` size×size matrix products that depend on the input (so
    ONNX Runtime cannot fold them away) and add nothing to the heatmaps: same answers, slow batches."""
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 64, 64])
    y = helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT, ["N", 17, HM, HM])
    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", TensorProto.FLOAT, [size, size],
                           (rng.standard_normal((size, size)) / np.sqrt(size)).astype(np.float32).tobytes(), raw=True)
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [size, size])
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["gray"], axes=[1], keepdims=1),
        helper.make_node("AveragePool", ["gray"], ["pooled"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Concat", ["pooled"] * 17, ["hm"], axis=1),
        helper.make_node("ReduceMean", ["image"], ["m"], keepdims=0),
        helper.make_node("Expand", ["m", "shape"], ["x0"]),
    ]
    prev = "x0"
    for i in range(steps):
        nodes.append(helper.make_node("MatMul", [prev, "w"], [f"x{i + 1}"]))
        prev = f"x{i + 1}"
    nodes += [helper.make_node("ReduceSum", [prev], ["s"], keepdims=0),
              helper.make_node("Mul", ["s", "zero"], ["z"]),
              helper.make_node("Add", ["hm", "z"], ["heatmaps"])]
    graph = helper.make_graph(nodes, "slow_pose", [x], [y], initializer=[w, shape, zero])
    return _save(graph, path)


def add_slow_pose(store: ModelStore, steps: int = 36) -> None:
    """Register slow-pose:1 (production) beside the tiny models; ``steps`` sets how slow (36: ~0.4 s a batch
    on the 2-core build machine)."""
    build = store.root.parent / "onnx"
    build.mkdir(exist_ok=True)
    import_model(store, slow_pose_onnx(build / "slow.onnx", steps=steps), {**POSE_FIELDS, "name": "slow-pose"})


def blob_clip(path: Path, frames: int = 30, fps: int = 10, w: int = 300, h: int = 200, path_xy=None,
              codec: str = "mpeg4") -> Path:
    """A real video file (PyAV) with one bright blob moving along ``path_xy(i) -> (x, y)``."""
    import av
    path_xy = path_xy or (lambda i: (60 + 2 * i, 80 + i))
    container = av.open(str(path), mode="w")
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(blob_image(w, h, at=path_xy(i)), format="bgr24")
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path
