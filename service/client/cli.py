"""``posekd pose IMAGE... [-o results.json] [--render DIR] [--format coco] [--url URL]``: keypoints for
images from the command line, in this process (the in-process estimator) or through a running
service (the HTTP client), with a progress bar on stderr."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from ..errors import PoseKDError
from ..progress import Progress
from .http import Client
from .local import Estimator

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def _image_paths(items: list[str]) -> list[Path]:
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            out.append(p)
        else:
            raise PoseKDError(f"no such file or directory: {item}", status=2)
    return out


def _image_id(path: Path, index: int) -> int:
    """COCO image ids: the number a COCO-style file name is (000000123456.jpg), else the position."""
    return int(path.stem) if path.stem.isdigit() else index


def cmd_pose(args) -> int:
    import cv2


    paths = _image_paths(args.images)
    if not paths:
        raise PoseKDError("no images given (JPEG, PNG, WebP or BMP files, or folders of them)", status=2)
    if args.url:
        logging.getLogger("httpx").setLevel(logging.WARNING)
        client = Client(args.url, api_key=args.api_key)
        def run(path):
            return client.pose(path, model=args.model, detector=args.detector, min_score=args.min_score)
    else:
        estimator = Estimator(args.model, args.detector)
        def run(path):
            return estimator(path, min_score=args.min_score)
    render = Path(args.render) if args.render else None
    if render:
        render.mkdir(parents=True, exist_ok=True)
    out: list = []
    bar = Progress("images", "img/s")
    for i, path in enumerate(paths):
        result = run(path)
        if args.format == "coco":
            out += result.to_coco(_image_id(path, i))
        else:
            out.append({"file": str(path), **result.to_dict()})
        if render:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                cv2.imwrite(str(render / f"{path.stem}.jpg"), result.draw(image))
        bar(i + 1, len(paths), path.name)
    bar.close()
    text = json.dumps(out, indent=None if args.format == "coco" else 1)
    if args.output:
        Path(args.output).write_text(text + "\n")
        people = len(out) if args.format == "coco" else sum(len(r["people"]) for r in out)
        print(f"{len(paths)} images, {people} people -> {args.output}" + (f"; drawn in {render}/" if render else ""),
              file=sys.stderr)
    else:
        print(text)
    return 0


def add_pose_parser(sub) -> None:
    help_text = "keypoints of the people in images, in this process (or through a service with --url)"
    pose: argparse.ArgumentParser = sub.add_parser("pose", help=help_text)
    pose.add_argument("images", nargs="+", help="image files, or folders of them")
    pose.add_argument("-o", "--output", help="write the results here (default: stdout)")
    pose.add_argument("--format", choices=["posekd", "coco"], default="posekd",
                      help="posekd: one object per image (file, image size, people); coco: COCO keypoint results "
                           "for pycocotools (image_id: the file name's number, else the position)")
    pose.add_argument("--render", metavar="DIR", help="also write each image with its skeletons drawn into DIR")
    pose.add_argument("--model", help="pose model (default POSEKD_DEFAULT_POSE_MODEL)")
    pose.add_argument("--detector", help="person detector (default POSEKD_DEFAULT_DETECTOR)")
    pose.add_argument("--min-score", type=float, help="drop people below this score (default POSEKD_MIN_SCORE)")
    pose.add_argument("--url", help="use a running service at this URL instead of loading the models here")
    pose.add_argument("--api-key", default=os.environ.get("POSEKD_API_KEY"),
                      help="API key for --url (default POSEKD_API_KEY)")
    pose.set_defaults(func=cmd_pose)
