"""Teachers for distillation: ONNX models run through the service's own runtime and decoders.

A teacher is any model the store can describe: the MoveNet / CenterNet files in the teachers folder
(``POSEKD_TEACHERS``) get their manifests from ``service.store.teachers``; anything already in a model
store is found by reference (``name``, ``name:version``, ``name@alias``)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from service.geometry import iou, sigmoid
from service.pipeline import preprocess as pp
from service.pipeline.decoders import POSE_DECODERS
from service.pipeline.people import inside_grown_box
from service.pipeline.pipeline import PosePipeline
from service.pipeline.runtime import OnnxModel
from service.shared import teachers_dir as shared_teachers
from service.store.manifest import Manifest, sha256_bytes
from service.store.registry import ServedModel
from service.store.store import ModelStore
from service.store.teachers import TEACHERS, teacher_manifest

DEFAULT_TEACHERS = shared_teachers()
TEACHER_FILES = {fields["name"]: filename for filename, fields in TEACHERS.items()}


def teachers_dir() -> Path:
    return Path(os.environ.get("POSEKD_TEACHERS", str(DEFAULT_TEACHERS))).resolve()


def load_model(ref: str, *, store: ModelStore | None = None, threads: int = 0,
               input_size: tuple[int, int] | None = None) -> ServedModel:
    """A runnable model from a store reference, a teacher name (``movenet-thunder``) or an ONNX path
    of a known teacher file. ``input_size`` (h, w) overrides the manifest's for size-agnostic graphs."""
    return load_model_bytes(ref, store=store, threads=threads, input_size=input_size)[0]


def load_model_bytes(ref: str, *, store: ModelStore | None = None, threads: int = 0,
                     input_size: tuple[int, int] | None = None) -> tuple[ServedModel, bytes]:
    """:func:`load_model` and the ONNX bytes it runs."""
    path = Path(ref)
    if path.suffix == ".onnx" and path.is_file():
        fields = teacher_manifest(path.name)
        data = path.read_bytes()
    elif ref in TEACHER_FILES and (store is None or ref not in store.names()):
        path = teachers_dir() / TEACHER_FILES[ref]
        if not path.is_file():
            raise FileNotFoundError(f"teacher {ref}: {path} not found (set POSEKD_TEACHERS)")
        fields = teacher_manifest(path.name)
        data = path.read_bytes()
    else:
        if store is None:
            raise FileNotFoundError(f"{ref}: not a teacher name or file, and no store given")
        from service.store.store import ModelSpec
        spec = ModelSpec.parse(ref)
        manifest, data = store.read_verified(spec.name, store.resolve(spec))
        fields = manifest.model_dump(mode="json")
    if "version" not in fields:
        fields = {**fields, "version": 1, "sha256": sha256_bytes(data), "file": "model.onnx"}
    if input_size:
        fields["input"] = {**fields["input"], "height": input_size[0], "width": input_size[1]}
    manifest = Manifest.model_validate(fields)
    return ServedModel(manifest, OnnxModel(manifest, data, device="auto", intra_threads=threads), (0, 0)), data


class PoseTeacher:
    """Labels crops: decoded keypoints (x, y, score in input pixels) and the raw per-keypoint
    heatmaps where the model has them (MoveNet heads: ``kpt_heatmap``; heatmap models: their output)."""

    def __init__(self, model: ServedModel, batch: int = 16):
        self.model = model
        self.batch = batch
        m = model.manifest
        if m.task != "pose":
            raise ValueError(f"{m.name} is not a pose model")
        self.size = (m.input.height, m.input.width)
        first = m.output.names[0] if m.output.names else None
        self.heatmap_name = {"movenet_heads": "kpt_heatmap", "heatmap": first}.get(m.output.decoder)
        # MoveNet heads also say where the person's centre is (the decoder picks the person with it)
        self.center_name = "center_heatmap" if m.output.decoder == "movenet_heads" else None

    @property
    def name(self) -> str:
        return f"{self.model.name}:{self.model.version}"

    def label(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """crops: uint8 (N, H, W, 3) BGR (as the service pipeline takes them) at the teacher's input size."""
        labels = self.label_all(crops)
        return labels["keypoints"], labels.get("heatmaps")

    def label_all(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        """Decoded ``keypoints`` and, where the model has them, ``heatmaps`` (N, 17, h, w) and the
        person-centre map ``center`` (N, 1, h, w), both as probabilities."""
        m = self.model.manifest
        kps, hms, centers = [], [], []
        for i in range(0, len(crops), self.batch):
            outs = self.model.session.run(pp.to_tensor(crops[i:i + self.batch], m.input))
            kps.append(POSE_DECODERS[m.output.decoder](m, outs))
            if self.heatmap_name:
                hm = outs[self.heatmap_name]
                if m.output.params.get("activation") == "sigmoid":
                    hm = sigmoid(hm)
                hms.append(hm.astype(np.float32))
            if self.center_name:
                centers.append(outs[self.center_name].astype(np.float32))
        out = {"keypoints": np.concatenate(kps)}
        if hms:
            out["heatmaps"] = np.concatenate(hms)
        if centers:
            out["center"] = np.concatenate(centers)
        return out


class DetectionTeacher:
    """Person boxes (M, 5) in image pixels, through the service's detection stage."""

    def __init__(self, model: ServedModel, threshold: float = 0.2, max_boxes: int = 20):
        self.model = model
        self.pipeline = PosePipeline(detector_threshold=threshold, max_boxes=max_boxes)

    @property
    def name(self) -> str:
        return f"{self.model.name}:{self.model.version}"

    def boxes(self, image: np.ndarray) -> np.ndarray:
        return self.pipeline.detect(self.model, [image])[0]


class BoxEnsemble:
    """Person boxes two detection teachers agree on, plus those only one of them is sure of.

    A box of the first teacher matched by one of the second (IoU ≥ ``iou``) is kept with the first
    teacher's geometry and the higher of the two scores (two detectors of different kinds agree on a
    person); a box only one teacher found stays when its score is at least ``solo`` (its score × 0.8, so
    agreed boxes rank first). Use the teacher with the tighter boxes first: CenterNet regresses whole-body
    boxes, MultiPose's (derived from its keypoint heads) are sometimes partial at long side 512 but it
    rarely misses a person."""

    def __init__(self, first: DetectionTeacher, second: DetectionTeacher, iou: float = 0.5, solo: float = 0.4):
        self.first, self.second, self.iou, self.solo = first, second, iou, solo

    @property
    def name(self) -> str:
        solo = "" if self.solo == 0.4 else f"(solo {self.solo:g})"  # 0.4: before the option, unnamed
        return f"{self.first.name}+{self.second.name}{solo}"

    def boxes(self, image: np.ndarray) -> np.ndarray:
        a, b = self.first.boxes(image), self.second.boxes(image)
        out, used = [], np.zeros(len(b), bool)
        ious = iou(a, b) if len(a) and len(b) else np.zeros((len(a), len(b)))
        for i, box in enumerate(a):
            j = int(ious[i].argmax()) if len(b) else -1
            if j >= 0 and ious[i, j] >= self.iou and not used[j]:
                used[j] = True
                out.append(np.r_[box[:4], max(box[4], b[j, 4])])
            elif box[4] >= self.solo:
                out.append(np.r_[box[:4], box[4] * 0.8])
        out += [np.r_[box[:4], box[4] * 0.8] for box, u in zip(b, used) if not u and box[4] >= self.solo]
        if not out:
            return np.zeros((0, 5), np.float32)
        rows = np.array(out, np.float32)
        return rows[np.argsort(-rows[:, 4])]


class ConfirmedBoxes:
    """Person boxes from ``source`` kept only where the pose teacher confirms a person inside them.

    The pose teacher (MoveNet Thunder) runs on each box's crop, as the service's pose stage would; a box
    stays when at least ``min_keypoints`` of its keypoints score ``min_score`` or more *and* lie inside the
    box (grown by 10 % each side). A box on a dog, a chair or a poster gets scattered low-score points
    and is dropped; a person's box keeps its score. This is the ``kept where Thunder's keypoints confirm a
    person`` filter on the detector's training targets."""

    def __init__(self, source: DetectionTeacher | BoxEnsemble, pose: ServedModel, *, min_keypoints: int = 4,
                 min_score: float = 0.3):
        self.source, self.pose_model = source, pose
        self.min_keypoints, self.min_score = min_keypoints, min_score
        self.pipeline = PosePipeline()
        self.seen = self.kept = 0

    @property
    def name(self) -> str:
        rule = "" if (self.min_keypoints, self.min_score) == (4, 0.3) else f"(≥{self.min_keypoints} keypoints)"
        return f"{self.source.name}|{self.pose_model.name}:{self.pose_model.version}{rule}"

    def confirmed(self, boxes: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
        """(M,) bool: which boxes (M, 5) the keypoints (M, 17, 3) confirm."""
        inside = inside_grown_box(keypoints, boxes, 0.1)
        return ((keypoints[..., 2] >= self.min_score) & inside).sum(1) >= self.min_keypoints

    def boxes(self, image: np.ndarray) -> np.ndarray:
        boxes = self.source.boxes(image)
        if not len(boxes):
            return boxes
        keypoints = self.pipeline.pose(self.pose_model, [image], [boxes])[0]
        keep = self.confirmed(boxes, keypoints)
        self.seen += len(boxes)
        self.kept += int(keep.sum())
        return boxes[keep]


def detection_labeller(teacher: str, store: ModelStore | None, *, confirm: str | None = None,
                       confirm_keypoints: int = 4, solo: float = 0.4,
                       threads: int = 0) -> DetectionTeacher | BoxEnsemble | ConfirmedBoxes:
    """The boxes a detection-label recipe gives, built in one place for the detector's cache, the held-out
    reference of ``posekd bench people`` and ``posekd bench labels``: one detection teacher, or two joined
    by '+' (:class:`BoxEnsemble`, a box only one of them found kept from ``solo``), each at its labelling
    size with boxes above 0.15; with ``confirm`` (a pose teacher), kept where it finds
    ``confirm_keypoints`` keypoints inside the box (:class:`ConfirmedBoxes`)."""
    from .publish import det_size

    refs = teacher.split("+")
    if len(refs) > 2:
        raise ValueError("one detection teacher, or two joined by '+'")
    found = [DetectionTeacher(load_model(ref, store=store, threads=threads, input_size=det_size(ref)), threshold=0.15)
             for ref in refs]
    boxes: DetectionTeacher | BoxEnsemble = found[0] if len(found) == 1 else BoxEnsemble(found[0], found[1], solo=solo)
    if not confirm:
        return boxes
    return ConfirmedBoxes(boxes, load_model(confirm, store=store, threads=threads), min_keypoints=confirm_keypoints)
