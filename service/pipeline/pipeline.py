"""Top-down pose pipeline: person detection → square crops → pose model → keypoints in image pixels.

Works on a batch of images at once: the detector sees all images that need boxes, then the crops
of every person in the batch go through the pose model together."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .. import metrics
from ..geometry import nms
from ..person import Person
from ..store.registry import ServedModel
from . import preprocess as pp
from .decoders import DETECTION_DECODERS, POSE_DECODERS, movenet_second_people
from .people import PersonScoring, keypoint_boxes, oks_nms, person_scores


@dataclass
class ImageTask:
    image: np.ndarray | None  # BGR uint8, H×W×3 (None only while the upload is still encoded, see data)
    boxes: np.ndarray | None = None  # client boxes (M, 4) in image pixels: skip detection
    min_score: float = 0.2
    max_people: int = 20
    scale: float = 1.0  # original pixels per pixel of ``image`` (> 1 when decoded reduced); boxes and
    # results are in original pixels
    data: bytes | None = None  # the uploaded bytes, when a worker elsewhere decodes them (Redis broker)
    size: tuple[int, int] | None = None  # the original (width, height); default: the image's size × scale


@dataclass
class ImageResult:
    people: list[Person] = field(default_factory=list)
    timing_ms: dict[str, float] = field(default_factory=dict)
    size: tuple[int, int] = (0, 0)  # (width, height) of the original image


def _to_image(kps: np.ndarray, inv: np.ndarray) -> np.ndarray:
    """Keypoints (C, K, 3) in crop pixels -> image pixels through each crop's inverse affine (C, 2, 3)."""
    xy = np.einsum("ckj,cij->cki", kps[..., :2], inv[:, :, :2]) + inv[:, None, :, 2]
    return np.concatenate([xy, kps[..., 2:]], -1).astype(np.float32)


class PosePipeline:
    """``detector_size``: the detector's input long side for graphs that take any multiple of N px (0: the
    manifest's size); ``pose_nms``: OKS above which a detected person duplicates a better-scored one
    (0: off); ``scoring``: how a person's score is made (:class:`PersonScoring`); ``second_centre``: a
    second person is read from a crop whose pose model's centre heat has a second peak this high (0: off;
    :func:`~.decoders.movenet_second_people`), for people the detector merged with or hid behind another."""

    def __init__(self, detector_threshold: float = 0.15, box_nms_iou: float = 0.6,  # noqa: PLR0913
                 max_boxes: int = 20, pose_chunk: int = 32, detector_size: int = 0, pose_nms: float = 0.0,
                 scoring: PersonScoring | None = None, second_centre: float = 0.0):
        self.detector_threshold = detector_threshold
        self.box_nms_iou = box_nms_iou
        self.max_boxes = max_boxes
        self.pose_chunk = pose_chunk
        self.detector_size = detector_size
        self.pose_nms = pose_nms
        self.scoring = scoring or PersonScoring(legacy=True)
        self.second_centre = second_centre

    def detector_input(self, detector: ServedModel):
        """The detector's input spec, at ``detector_size`` where its graph takes any multiple of N px."""
        spec = detector.manifest.input
        if self.detector_size and spec.size_multiple:
            side = -(-self.detector_size // spec.size_multiple) * spec.size_multiple
            return spec.model_copy(update={"height": side, "width": side})
        return spec

    # ---- stages -----------------------------------------------------------------------------
    def detect(self, detector: ServedModel, images: list[np.ndarray]) -> list[np.ndarray]:
        """Person boxes (M, 5) in image pixels for each image."""
        if not images:
            return []
        t0 = time.perf_counter()
        spec = self.detector_input(detector)
        views, scales = zip(*(pp.resize_for_detector(im, spec) for im in images))
        decoded = self._detector_outputs(detector, list(views))
        result = []
        for boxes, (sx, sy), im in zip(decoded, scales, images):
            boxes = boxes[boxes[:, 4] >= self.detector_threshold]
            boxes = boxes / np.array([sx, sy, sx, sy, 1.0], np.float32)
            h, w = im.shape[:2]
            boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
            boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
            boxes = boxes[(boxes[:, 2] - boxes[:, 0] >= 2) & (boxes[:, 3] - boxes[:, 1] >= 2)]
            result.append(nms(boxes, self.box_nms_iou)[: self.max_boxes])
        metrics.observe_stage(detector.name, detector.version, "detect", time.perf_counter() - t0, len(images))
        return result

    @staticmethod
    def _detector_outputs(detector: ServedModel, views: list[np.ndarray]) -> list[np.ndarray]:
        """Raw boxes (in view pixels) for each view. Views of one size go through the detector as one
        batch; a graph that takes any multiple of ``size_multiple`` gets views of several sizes, run
        size by size and decoded with that size as the input's."""
        manifest = detector.manifest
        decode = DETECTION_DECODERS[manifest.output.decoder]
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, v in enumerate(views):
            by_size.setdefault(v.shape[:2], []).append(i)
        decoded: list[np.ndarray] = [np.zeros((0, 5), np.float32)] * len(views)
        for (h, w), members in by_size.items():
            outs = detector.session.run(pp.to_tensor([views[i] for i in members], manifest.input))
            sized = manifest
            if (h, w) != (manifest.input.height, manifest.input.width):
                sized = manifest.model_copy(update={"input": manifest.input.model_copy(update={"height": h,
                                                                                                 "width": w})})
            for i, boxes in zip(members, decode(sized, outs)):
                decoded[i] = boxes
        return decoded

    def pose(self, model: ServedModel, images: list[np.ndarray], boxes: list[np.ndarray]) -> list[np.ndarray]:
        """Keypoints (M, 17, 3) in image pixels for the boxes of each image, all crops in one batch."""
        return self._pose(model, images, boxes)[0]

    def _pose(self, model: ServedModel, images: list[np.ndarray], boxes: list[np.ndarray], *,
              second: bool = False) -> tuple[list[np.ndarray], list[tuple[np.ndarray, np.ndarray]]]:
        """:meth:`pose`, and with ``second`` (and ``second_centre`` on, for a MoveNet-heads pose model) the
        other people the crops hold, as boxes (E, 5) and keypoints (E, 17, 3) per image
        (:meth:`second_people`)."""
        spec, margin = model.manifest.input, model.manifest.crop.margin
        crops, inverses, owners = [], [], []
        for i, (im, bxs) in enumerate(zip(images, boxes)):
            for box in bxs:
                m = pp.crop_matrix(box, margin, spec.width, spec.height)
                crops.append(pp.warp_crop(im, m, spec.width, spec.height))
                inverses.append(pp.invert(m))
                owners.append(i)
        per_image = [np.zeros((0, 17, 3), np.float32) for _ in images]
        extra = [(np.zeros((0, 5), np.float32), np.zeros((0, 17, 3), np.float32)) for _ in images]
        if not crops:
            return per_image, extra
        t0 = time.perf_counter()
        outs = model.session.run(pp.to_tensor(crops, spec), chunk=self.pose_chunk)
        kps = POSE_DECODERS[model.manifest.output.decoder](model.manifest, outs)
        inv = np.stack(inverses)  # (C, 2, 3)
        owner = np.asarray(owners)
        kps = _to_image(kps, inv)
        for i in range(len(images)):
            per_image[i] = kps[owner == i]
        if second and self.second_centre > 0 and model.manifest.output.decoder == "movenet_heads":
            crop, more, peak = movenet_second_people(model.manifest, outs, self.second_centre)
            more = _to_image(more, inv[crop])
            box_scores = np.concatenate([b[:, 4] for b in boxes])[crop]
            mboxes = keypoint_boxes(more, np.minimum(box_scores, peak))
            for i in range(len(images)):
                mine = (owner[crop] == i) & np.isfinite(mboxes).all(1)
                extra[i] = (mboxes[mine], more[mine])
        metrics.observe_stage(model.name, model.version, "pose", time.perf_counter() - t0, len(crops))
        return per_image, extra

    def people(self, boxes: np.ndarray, kps: np.ndarray, *, detected: bool) -> list[Person]:
        """One image's people, best first: scored, and (``detected``: boxes from the detector, not the
        client) with duplicates suppressed by OKS. A crop no model can make sense of may give NaN: that
        person is dropped, never sent as JSON."""
        ok = np.isfinite(boxes).all(1) & np.isfinite(kps).reshape(len(kps), -1).all(1) if len(boxes) else \
            np.zeros(0, bool)
        boxes, kps = boxes[ok], kps[ok]
        scores = person_scores(boxes[:, 4], kps, boxes[:, :4], self.scoring)
        order = np.argsort(-scores, kind="stable")
        if detected and self.pose_nms > 0:
            order = oks_nms(kps, boxes[:, :4], scores, self.pose_nms)
        return [Person.of(boxes[i, :4], scores[i], kps[i]) for i in order]

    # ---- whole pipeline ---------------------------------------------------------------------
    def run(self, model: ServedModel, detector: ServedModel | None, tasks: list[ImageTask]) -> list[ImageResult]:
        t0 = time.perf_counter()
        need = [i for i, t in enumerate(tasks) if t.boxes is None]
        if need and detector is None:
            raise ValueError("images without boxes need a detector")
        boxes: list[np.ndarray | None] = [None] * len(tasks)
        for i, t in enumerate(tasks):
            if t.boxes is not None:
                b = np.asarray(t.boxes, np.float32).reshape(-1, 4) / t.scale
                boxes[i] = np.concatenate([b, np.ones((len(b), 1), np.float32)], 1)
        images = [t.image for t in tasks]
        if any(im is None for im in images):
            raise ValueError("every task needs its decoded image")
        pixels = [im for im in images if im is not None]
        if need and detector is not None:
            for i, found in zip(need, self.detect(detector, [pixels[i] for i in need])):
                boxes[i] = found
        t1 = time.perf_counter()
        keypoints, extra = self._pose(model, pixels, [b if b is not None else np.zeros((0, 5), np.float32)
                                                      for b in boxes], second=True)
        t2 = time.perf_counter()
        results = []
        for task, image, given, kps, (more_boxes, more_kps) in zip(tasks, pixels, boxes, keypoints, extra):
            bxs = given if given is not None else np.zeros((0, 5), np.float32)
            if task.boxes is None and len(more_boxes):
                bxs, kps = np.concatenate([bxs, more_boxes]), np.concatenate([kps, more_kps])
            people = [p.scaled(task.scale) for p in self.people(bxs, kps, detected=task.boxes is None)]
            people = [p for p in people if p.score >= task.min_score][: task.max_people]
            metrics.PEOPLE.observe(len(people))
            size = task.size or (round(image.shape[1] * task.scale), round(image.shape[0] * task.scale))
            results.append(ImageResult(people, {"detect": (t1 - t0) * 1000, "pose": (t2 - t1) * 1000,
                                                "inference": (t2 - t0) * 1000}, size))
        return results
