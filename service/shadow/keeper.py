"""The images the student agreed with least, kept for the next distillation round, each with the
teacher's answer as its pseudo-label.

The folder is a COCO keypoint dataset that `posekd distill cache` reads as ``shadow:DIR`` (or, with the
pseudo-labels taken as labels, ``coco:DIR/samples.json``)::

    DIR/samples.json     COCO "images" + "annotations" (the teacher's keypoints, v = 2 where its score
                         passes 0.3, else 0; the student's keypoints and the agreement beside them)
    DIR/images/*.jpg     the images as the pipeline saw them (boxes and keypoints are in their pixels)

It is bounded in count and bytes; when full, a new sample replaces the kept ones the student agreed
with most (the least useful to learn from). Several processes (Redis workers) may share one folder:
each change is made under an exclusive ``flock`` on ``DIR/.lock`` and the index is replaced atomically."""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
import uuid
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger("posekd.shadow")

INDEX = "samples.json"
CONFIDENT = 0.3  # teacher keypoints above this score are the pseudo-label's visible points


def empty_index() -> dict:
    return {"info": {"description": "PoseKD shadow samples: live images where the student disagreed most "
                                    "with its shadow teacher; keypoints are the teacher's (pseudo-labels)",
                     "format": 1},
            "images": [], "annotations": [], "categories": [{"id": 1, "name": "person"}]}


class SampleKeeper:
    def __init__(self, root: Path | str, max_count: int = 500, max_bytes: int = 256 * 1024 * 1024,
                 jpeg_quality: int = 92):
        self.root = Path(root)
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.jpeg_quality = jpeg_quality
        (self.root / "images").mkdir(parents=True, exist_ok=True)
        self._worst = float("inf")  # the highest kept agreement when the folder was last seen full
        self._full = False

    @contextlib.contextmanager
    def _locked(self):
        with open(self.root / ".lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def read(self) -> dict:
        """The index; a missing one is empty, an unreadable one is set aside (``samples.json.bad``) and
        its images, which nothing indexes any more, removed: the bound holds."""
        path = self.root / INDEX
        try:
            index = json.loads(path.read_text())
            if isinstance(index, dict) and isinstance(index.get("images"), list):
                return index
        except FileNotFoundError:
            return empty_index()
        except (OSError, ValueError):
            pass
        log.warning("the shadow samples index %s is unreadable; set aside, its images removed", path)
        with contextlib.suppress(OSError):
            os.replace(path, path.with_suffix(".json.bad"))
        for image in (self.root / "images").glob("*.jpg"):
            with contextlib.suppress(OSError):
                image.unlink()
        return empty_index()

    def _write(self, index: dict) -> None:
        tmp = self.root / f".{INDEX}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(index))
        os.replace(tmp, self.root / INDEX)

    def usage(self) -> dict:
        index = self.read()
        return {"count": len(index["images"]), "bytes": sum(int(im.get("bytes", 0)) for im in index["images"]),
                "max_count": self.max_count, "max_bytes": self.max_bytes}

    def consider(self, image: np.ndarray, boxes: np.ndarray, teacher: np.ndarray, student: np.ndarray,  # noqa: PLR0913
                 agreement: float, per_person: list[float | None], *, student_name: str, teacher_name: str) -> bool:
        """Keep the sample if there is room or it is less agreed than the most agreed kept one."""
        if self._full and agreement >= self._worst:
            return False
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            return False
        size = len(encoded)
        with self._locked():
            index = self.read()
            kept = sorted(index["images"], key=lambda im: (-im["agreement"], im["id"]))  # most agreed first
            count, used = len(kept), sum(int(im.get("bytes", 0)) for im in kept)
            evict = []
            while kept and (count + 1 > self.max_count or used + size > self.max_bytes):
                if kept[0]["agreement"] <= agreement:
                    break
                gone = kept.pop(0)
                evict.append(gone)
                count, used = count - 1, used - int(gone.get("bytes", 0))
            if count + 1 > self.max_count or used + size > self.max_bytes:
                self._full, self._worst = True, max((im["agreement"] for im in index["images"]), default=agreement)
                return False
            self._add(index, encoded.tobytes(), image.shape, boxes, teacher, student, agreement, per_person,
                      student_name, teacher_name)
            self._remove(index, evict)
            self._write(index)
            self._full = len(index["images"]) >= self.max_count
            self._worst = max(im["agreement"] for im in index["images"])
        return True

    def _add(self, index: dict, data: bytes, shape: tuple, boxes: np.ndarray, teacher: np.ndarray,  # noqa: PLR0913
             student: np.ndarray, agreement: float, per_person: list[float | None], student_name: str,
             teacher_name: str) -> None:
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.jpg"
        (self.root / "images" / name).write_bytes(data)
        image_id = max((im["id"] for im in index["images"]), default=0) + 1
        next_ann = max((a["id"] for a in index["annotations"]), default=0) + 1
        index["images"].append({"id": image_id, "file_name": name, "width": int(shape[1]), "height": int(shape[0]),
                                "bytes": len(data), "agreement": round(agreement, 5), "student": student_name,
                                "teacher": teacher_name, "kept_at": round(time.time(), 3)})
        for k, (box, t, s, oks) in enumerate(zip(boxes, teacher, student, per_person)):
            x1, y1, x2, y2 = (float(v) for v in box[:4])
            visible = t[:, 2] > CONFIDENT
            kps = np.concatenate([t[:, :2], np.where(visible, 2.0, 0.0)[:, None]], 1)
            index["annotations"].append({
                "id": next_ann + k, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                "area": round((x2 - x1) * (y2 - y1) * 0.53, 1), "num_keypoints": int(visible.sum()),
                "keypoints": [round(float(v), 2) for v in kps.reshape(-1)],
                "keypoint_scores": [round(float(v), 4) for v in t[:, 2]],
                "student_keypoints": [round(float(v), 2) for v in s.reshape(-1)],
                "agreement": None if oks is None else round(oks, 5)})

    def _remove(self, index: dict, gone: list[dict]) -> None:
        ids = {im["id"] for im in gone}
        index["images"] = [im for im in index["images"] if im["id"] not in ids]
        index["annotations"] = [a for a in index["annotations"] if a["image_id"] not in ids]
        for im in gone:
            with contextlib.suppress(FileNotFoundError):
                (self.root / "images" / im["file_name"]).unlink()
