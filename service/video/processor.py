"""One clip → tracked, smoothed poses (and optionally an overlay), streaming frame by frame.

Keyframes and propagation (DKD's idea made practical): the person detector runs only on keyframes —
every ``keyframe_interval`` frames, or sooner when the people carried over lose confidence or
someone is lost. In between, each person's box comes from their keypoints on the previous frame, so
the pose student alone carries the frames between keyframes; the crops of ``window`` consecutive
frames go through the pose model in one batch (all boxed from the keypoints just before the window).
"""
from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .. import metrics
from ..drawing import draw
from ..geometry import iou
from ..keypoints import COCO17
from ..person import Person
from ..pipeline import PosePipeline
from ..pipeline.people import oks_nms
from ..store.registry import ServedModel
from . import decode
from .render import Mp4Writer
from .smoothing import TrackSmoother
from .tracker import Tracker, appearance


@dataclass
class VideoOptions:
    keyframe_interval: int = 5  # 1: detect on every frame
    window: int = 4  # propagated frames whose pose crops are batched together
    smoothing: bool = True
    min_cutoff: float = 1.0  # One-Euro parameters
    beta: float = 0.02
    d_cutoff: float = 1.0
    min_score: float = 0.25  # people below this mean keypoint score only continue tracks (second pass)
    low_score: float = 0.25  # people below this are dropped; between it and min_score: second pass only
    appearance_weight: float = 0.3  # tracker: share of the colour signature in the match similarity
    recovery: bool = True  # tracker: OC-SORT's observation-centric recovery of lost tracks
    duplicate_oks: float = 0.7  # two people of one frame whose keypoints agree above this OKS are one
    redetect_score: float = 0.35  # propagated people below this trigger a keyframe
    match_threshold: float = 0.2  # tracker: similarity needed to continue a track
    max_lost: int = 30  # tracker: frames a lost track is remembered
    start_score: float = 0.4  # tracker: score a person needs to start a track
    max_people: int = 20
    max_frames: int = 20_000

    @classmethod
    def from_settings(cls, s, **overrides) -> VideoOptions:
        return cls(keyframe_interval=s.video_keyframe_interval, window=s.video_window, smoothing=s.video_smoothing,
                   min_cutoff=s.one_euro_min_cutoff, beta=s.one_euro_beta, d_cutoff=s.one_euro_d_cutoff,
                   min_score=s.video_min_score, match_threshold=s.track_match_threshold,
                   max_lost=s.track_max_lost, start_score=s.track_start_score, max_people=s.max_people,
                   max_frames=s.max_video_frames, low_score=s.track_low_score,
                   appearance_weight=s.track_appearance_weight, recovery=s.track_recovery,
                   duplicate_oks=s.pose_nms_oks).with_overrides(**overrides)

    def with_overrides(self, **overrides) -> VideoOptions:
        """A copy with the given options replaced; None keeps the default."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


class Cancelled(Exception):
    """Raised by a progress callback to stop a job."""


@dataclass
class Resume:
    """Where a clip's processing stood after its last finished window: the frames' results so far and
    the pickled state of the run (tracker, smoother, the people carried over), so that a worker taking
    the job over continues from there instead of frame 0."""
    frames: list[dict]
    state: bytes


# called with the results of the frames finished since the last call and the run's pickled state
Checkpoint = Callable[[list[dict], bytes], None]


def box_from_keypoints(kps: np.ndarray, min_score: float = 0.2, min_size: float = 16.0) -> np.ndarray | None:
    """A person box around the confident keypoints, padded for the head top and the limbs' ends."""
    good = kps[kps[:, 2] >= min_score]
    if len(good) < 3:
        return None
    x1, y1 = good[:, 0].min(), good[:, 1].min()
    x2, y2 = good[:, 0].max(), good[:, 1].max()
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    w, h = max(x2 - x1, min_size), max(y2 - y1, min_size)
    return np.array([cx - 0.6 * w, cy - 0.65 * h, cx + 0.6 * w, cy + 0.55 * h], np.float32)


class VideoProcessor:
    def __init__(self, pipeline: PosePipeline, pose: ServedModel, detector: ServedModel, opts: VideoOptions):
        self.pipeline, self.pose_model, self.detector, self.opts = pipeline, pose, detector, opts

    def run(self, path: Path, info: decode.VideoInfo, progress: Callable[[int, int], None] | None = None,  # noqa: PLR0913
            render: Path | None = None, *, checkpoint: Checkpoint | None = None, every_s: float = 1.0,
            resume: Resume | None = None) -> dict:
        """Track the people of one clip; ``progress(done, total)`` after each frame, the overlay
        written to ``render`` when given. With ``checkpoint``, the finished frames and the run's state
        are handed over at the end of a window, at most every ``every_s`` seconds; ``resume`` continues
        from such a checkpoint (earlier frames are only decoded, and drawn for the overlay). Returns
        the video result (see the README)."""
        run = _ClipRun(self, info, progress, render)
        if resume is not None:
            run.restore(resume)
        return run.run(path, checkpoint, every_s)

    def _people(self, kps: np.ndarray, det_boxes: np.ndarray | None) -> list:
        """(box, keypoints, score) for the confident people of one frame; the box is the detector's on
        keyframes and the keypoints' own in between."""
        people = []
        for i, kp in enumerate(kps):
            score = float(kp[:, 2].mean())
            if score < self.opts.low_score:
                continue
            box = det_boxes[i, :4] if det_boxes is not None else box_from_keypoints(kp)
            if box is None:
                continue
            people.append((np.asarray(box, np.float32), kp, score))
        return people

    def _dedupe(self, people: list) -> list:
        """Two boxes carried onto the same person, or two detections whose crops both took one person's
        keypoints, collapse: keep the better one (order kept)."""
        if len(people) < 2:
            return people
        boxes = np.stack([p[0] for p in people])
        overlap = iou(boxes, boxes)
        keep: list[int] = []
        for i in sorted(range(len(people)), key=lambda i: -people[i][2]):
            if all(overlap[i, j] <= 0.6 for j in keep):
                keep.append(i)
        if self.opts.duplicate_oks > 0:
            kept = oks_nms(np.stack([people[i][1] for i in keep]), boxes[keep],
                           np.array([people[i][2] for i in keep]), self.opts.duplicate_oks)
            keep = [keep[k] for k in kept]
        return [people[i] for i in sorted(keep)]


class _ClipRun:
    """The state of one clip being processed: tracker, smoother, overlay writer, the people carried
    from the last frame, the frames waiting to be propagated as one batch, and the output."""

    def __init__(self, proc: VideoProcessor, info: decode.VideoInfo, progress: Callable[[int, int], None] | None,
                 render: Path | None):
        o = proc.opts
        self.proc, self.info, self.progress = proc, info, progress
        self.tracker = Tracker(match_threshold=o.match_threshold, max_lost=o.max_lost, start_score=o.start_score,
                               appearance_weight=o.appearance_weight, high_score=o.min_score,
                               recovery=o.recovery)
        self.smoother = TrackSmoother(o.min_cutoff, o.beta, o.d_cutoff) if o.smoothing else None
        self.writer = Mp4Writer(render, info.width, info.height, info.fps, info.sample_aspect) if render else None
        self.frames: list[dict] = []
        self.prev: list = []  # (box, keypoints, score) of the last frame's people
        self.force = True  # the next frame must be a keyframe
        self.keyframes = 0
        self.buffer: list[tuple[int, float, np.ndarray]] = []
        self.saved = 0  # frames handed to the last checkpoint
        self.resumed_at = 0  # frames taken from a checkpoint (only redrawn)

    _STATE = ("tracker", "smoother", "prev", "force", "keyframes")

    def state(self) -> bytes:
        return pickle.dumps({k: getattr(self, k) for k in self._STATE} | {"frames": len(self.frames)})

    def restore(self, resume: Resume) -> None:
        state = pickle.loads(resume.state)  # noqa: S301 - written by this service's own workers
        if state.pop("frames") != len(resume.frames):
            raise ValueError("the checkpoint's state and frames disagree")
        for k, v in state.items():
            setattr(self, k, v)
        self.frames = list(resume.frames)
        self.saved = self.resumed_at = len(self.frames)

    def run(self, path: Path, checkpoint: Checkpoint | None = None, every_s: float = 1.0) -> dict:
        o, proc = self.proc.opts, self.proc
        t0 = last = time.perf_counter()
        try:
            for idx, t, image in decode.frames(path, o.max_frames):
                if idx < self.resumed_at:  # done before the takeover: only drawn again
                    if self.writer is not None:
                        self.writer.write(draw(image, self.frames[idx]["people"]))
                    continue
                if checkpoint is not None and not self.buffer and len(self.frames) > self.saved and \
                        time.perf_counter() - last >= every_s:
                    checkpoint(self.frames[self.saved:], self.state())
                    self.saved, last = len(self.frames), time.perf_counter()
                scheduled = idx % max(o.keyframe_interval, 1) == 0
                if scheduled or self.force or len(self.buffer) >= max(o.window, 1):
                    self.flush()
                if scheduled or self.force or not self.prev:
                    self.keyframe(idx, t, image)
                else:
                    self.buffer.append((idx, t, image))
            self.flush()
        finally:
            if self.writer is not None:
                self.writer.close()
        if not self.frames:
            raise decode.InvalidVideo("the video has no frames")
        return self.result(time.perf_counter() - t0, proc)

    def keyframe(self, idx: int, t: float, image: np.ndarray) -> None:
        """Detector and pose on this frame."""
        proc = self.proc
        start = time.perf_counter()
        found = proc.pipeline.detect(proc.detector, [image])[0][: proc.opts.max_people]
        frame_kps = proc.pipeline.pose(proc.pose_model, [image], [found])[0]
        people = proc._people(frame_kps, found)
        self.keyframes += 1
        metrics.VIDEO_KEYFRAMES.inc()
        self.emit(idx, t, image, people, time.perf_counter() - start)
        self.prev, self.force = people, False

    def flush(self) -> None:
        """Propagate the buffered frames: every crop boxed from the people before the window, one batch."""
        if not self.buffer:
            return
        proc = self.proc
        start = time.perf_counter()
        carried = [box_from_keypoints(p[1]) for p in self.prev]
        boxes = np.array([b for b in carried if b is not None], np.float32).reshape(-1, 4)
        images = [im for _, _, im in self.buffer]
        kps = proc.pipeline.pose(proc.pose_model, images, [boxes] * len(images)) if len(boxes) else \
            [np.zeros((0, 17, 3), np.float32)] * len(images)
        per_frame = (time.perf_counter() - start) / len(self.buffer)
        for (idx, t, image), frame_kps in zip(self.buffer, kps):
            people = proc._people(frame_kps, None)
            self.emit(idx, t, image, people, per_frame)
            lost = len(people) < len(self.prev)
            weak = people and np.mean([p[2] for p in people]) < proc.opts.redetect_score
            self.force = self.force or lost or bool(weak)
            self.prev = people
        self.buffer.clear()

    def emit(self, idx: int, t: float, image: np.ndarray, people: list, seconds: float) -> None:
        """Track, smooth, record (and draw) one frame's people."""
        people = self.proc._dedupe(people)
        boxes = np.array([p[0] for p in people], np.float32).reshape(-1, 4)
        kps = np.array([p[1] for p in people], np.float32).reshape(-1, 17, 3)
        scores = np.array([p[2] for p in people], np.float32)
        looks = self.looks(image, boxes, kps) if self.proc.opts.appearance_weight > 0 else None
        ids = self.tracker.update(idx, boxes, kps, scores, looks)
        shown = []
        for (box, kp, score), tid in zip(people, ids):
            if tid is None:
                continue
            xy = self.smoother(tid, kp, t) if self.smoother else kp
            shown.append(Person.of(box, score, np.column_stack([xy[:, :2], kp[:, 2]]), tid).to_dict())
        self.frames.append({"frame": idx, "time": round(t, 4), "people": shown})
        if self.writer is not None:
            self.writer.write(draw(image, shown))
        metrics.VIDEO_FRAMES.inc()
        metrics.VIDEO_FRAME_SECONDS.observe(seconds)
        metrics.VIDEO_ACTIVE_TRACKS.set(len(self.tracker.active))
        if self.progress is not None:
            self.progress(len(self.frames), max(self.info.frames, len(self.frames)))

    @staticmethod
    def looks(image: np.ndarray, boxes: np.ndarray, kps: np.ndarray) -> list:
        """Each person's colour signature, None for people overlapping someone else (box IoU > 0.3): what
        their torso shows is partly the other person's, and a track must not learn it."""
        if not len(boxes):
            return []
        overlap = iou(boxes, boxes)
        np.fill_diagonal(overlap, 0.0)
        return [appearance(image, kp) if overlap[i].max(initial=0.0) <= 0.3 else None for i, kp in enumerate(kps)]

    def result(self, seconds: float, proc: VideoProcessor) -> dict:
        o, frames = proc.opts, self.frames
        seen = {p["track_id"] for f in frames for p in f["people"]}
        tracks = [{"track_id": tr.id, "first_frame": tr.first_frame, "last_frame": tr.last_frame,
                   "frames": tr.frames} for tr in self.tracker.all_tracks() if tr.id in seen]
        return {"video": {**self.info.as_dict(), "frames": len(frames)},
                "model": {"name": proc.pose_model.name, "version": proc.pose_model.version},
                "detector": {"name": proc.detector.name, "version": proc.detector.version},
                "keypoint_names": list(COCO17), "tracks": tracks, "frames": frames,
                "stats": {"keyframes": self.keyframes, "keyframe_ratio": round(self.keyframes / len(frames), 4),
                          "seconds": round(seconds, 3), "fps": round(len(frames) / max(seconds, 1e-9), 2),
                          "smoothing": o.smoothing, "keyframe_interval": o.keyframe_interval,
                          "rendered_with": self.writer.codec if self.writer else None}}


__all__ = ["Cancelled", "Checkpoint", "Resume", "VideoOptions", "VideoProcessor", "box_from_keypoints"]
