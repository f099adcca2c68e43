"""Results in the formats other tools read as they are.

- COCO keypoint *results* (what ``pycocotools.COCO.loadRes`` and ``COCOeval(…, "keypoints")`` take): one
  object per person, ``image_id``, ``category_id`` 1 (person), ``keypoints`` as 51 flat numbers
  ``x1, y1, s1, …`` (COCO-17 order, the score in the visibility slot), ``bbox`` as ``[x, y, w, h]`` and
  ``score``.
- PoseTrack-style video results: the COCO layout per frame plus ``track_id``, with ``images`` entries
  that carry ``frame_id``/``vid_id``/``file_name`` so tracking evaluators (and ``pycocotools`` itself)
  read them; frame ``image_id``s are ``video_id * 100000 + frame``, PoseTrack's own convention."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

PERSON_CATEGORY = 1


def coco_person(person: Mapping[str, Any], image_id: int) -> dict:
    """One person in its JSON form (``Person.to_dict``: ``bbox`` x1,y1,x2,y2, ``keypoints`` 17×[x,y,s],
    ``score``, already rounded) as a COCO result; only the box's width and height are computed."""
    x1, y1, x2, y2 = (float(v) for v in person["bbox"])
    flat = [float(v) for kp in person["keypoints"] for v in kp]
    out = {"image_id": int(image_id), "category_id": PERSON_CATEGORY, "keypoints": flat,
           "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)], "score": float(person["score"])}
    if "track_id" in person:
        out["track_id"] = int(person["track_id"])
    return out


def coco_results(people: Iterable[Mapping[str, Any]], image_id: int) -> list[dict]:
    return [coco_person(p, image_id) for p in people]


def posetrack(result: Mapping[str, Any], video_id: int = 1, name: str = "video") -> dict:
    """A video job's result as a PoseTrack-style document: ``images`` (one per frame),
    ``annotations`` (one per tracked person per frame, COCO keypoint layout plus ``track_id``) and
    ``categories`` (person, with the COCO-17 keypoint names and skeleton)."""
    from .keypoints import COCO17, SKELETON

    frames = result["frames"]
    images: list[dict] = []
    annotations: list[dict] = []
    for f in frames:
        image_id = video_id * 100_000 + int(f["frame"])
        images.append({"id": image_id, "file_name": f"{name}/{int(f['frame']):06d}.jpg", "frame_id": image_id,
                       "vid_id": str(video_id), "frame": int(f["frame"]), "time": f["time"],
                       "nframes": len(frames), "width": result["video"]["width"],
                       "height": result["video"]["height"]})
        for p in f["people"]:
            ann = coco_person(p, image_id)
            ann["id"] = len(annotations) + 1
            ann["num_keypoints"] = sum(1 for _, _, s in p["keypoints"] if s > 0)
            ann["area"] = ann["bbox"][2] * ann["bbox"][3]
            ann["iscrowd"] = 0
            annotations.append(ann)
    return {"images": images, "annotations": annotations,
            "categories": [{"id": PERSON_CATEGORY, "name": "person", "supercategory": "person",
                            "keypoints": list(COCO17), "skeleton": [[a + 1, b + 1] for a, b in SKELETON]}]}
