"""People from the pose stage's answers: OKS duplicate suppression, the person score, stacked pairs."""
from __future__ import annotations

import numpy as np

from service.pipeline.people import (
    PersonScoring,
    keypoint_boxes,
    keypoints_inside,
    oks_nms,
    person_scores,
    stacked_pairs,
)
from service.pipeline.pipeline import PosePipeline

# a standing person about 100 × 300 px: COCO-17 in order (face, shoulders, elbows, wrists, hips, knees, ankles)
STANDING = np.array([
    [150, 110], [145, 105], [155, 105], [138, 108], [162, 108],
    [125, 150], [175, 150], [115, 200], [185, 200], [110, 245], [190, 245],
    [132, 250], [168, 250], [130, 320], [170, 320], [128, 390], [172, 390]], np.float32)
BOX = np.array([100, 90, 200, 400], np.float32)


def person(shift=(0.0, 0.0), score=0.8, jitter=0.0, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xy = STANDING + np.asarray(shift, np.float32) + rng.normal(0, jitter, STANDING.shape).astype(np.float32)
    return np.c_[xy, np.full(17, score, np.float32)]


def test_two_near_identical_people_become_one():
    a, b = person(score=0.8), person(jitter=2.0, score=0.6, seed=1)
    other = person(shift=(150, 0), score=0.7)
    kps = np.stack([b, a, other])
    boxes = np.stack([BOX + 3, BOX, BOX + [150, 0, 150, 0]])
    scores = np.array([0.6, 0.8, 0.7])
    keep = oks_nms(kps, boxes, scores, 0.9)
    assert sorted(keep.tolist()) == [1, 2]  # the better of the two copies and the other person
    assert keep[0] == 1  # best first
    assert stacked_pairs(kps, boxes) == [(0, 1)]
    assert stacked_pairs(kps[keep], boxes[keep]) == []


def test_two_people_side_by_side_both_stay():
    """Overlapping boxes, different people: box NMS could merge them, OKS-NMS must not."""
    kps = np.stack([person(), person(shift=(45, 0))])
    boxes = np.stack([BOX, BOX + [45, 0, 45, 0]])
    assert len(oks_nms(kps, boxes, np.array([0.9, 0.8]), 0.9)) == 2
    assert stacked_pairs(kps, boxes) == []


def test_person_score_ranks_a_whole_person_above_a_head_and_a_blob():
    scoring = PersonScoring(inside_margin=0.15)
    whole = person(score=0.7)
    head = person(score=0.05)
    head[:5, 2] = 0.8  # only the face is sure: a spectator's head in a head-sized box
    blob = person(score=0.6)
    blob[:, :2] = blob[:, :2] * 0.1 + np.array([140, 230]) * 0.9  # every point squeezed into the middle
    kps = np.stack([whole, head, blob])
    boxes = np.stack([BOX, BOX, BOX])
    s = person_scores(np.array([0.5, 0.5, 0.5]), kps, boxes, scoring)
    assert s[0] > 2 * s[1]
    assert s[0] > 2 * s[2]
    # the box score counts: the same keypoints in a surer box score higher
    s2 = person_scores(np.array([0.9, 0.5, 0.5]), kps, boxes, scoring)
    assert s2[0] > s[0]
    # legacy: the mean keypoint score
    assert np.allclose(person_scores(np.ones(3), kps, boxes, PersonScoring(legacy=True)), kps[..., 2].mean(-1))


def test_a_skeleton_outside_its_box_scores_low():
    """The crop of one person took the neighbour's keypoints: they lie outside its own box."""
    kps = np.stack([person(), person()])
    boxes = np.stack([BOX, BOX + [160, 0, 160, 0]])
    inside = keypoints_inside(kps, boxes, 0.15)
    assert inside[0] == 1.0 and inside[1] == 0.0
    s = person_scores(np.array([0.8, 0.8]), kps, boxes, PersonScoring(inside_margin=0.15))
    assert s[1] == 0.0 < s[0]


def test_pipeline_people_suppresses_detected_duplicates_but_keeps_client_boxes():
    pipe = PosePipeline(pose_nms=0.9, scoring=PersonScoring())
    kps = np.stack([person(), person(jitter=1.0, score=0.7, seed=2)])
    boxes = np.c_[np.stack([BOX, BOX + 2]), [0.9, 0.5]].astype(np.float32)
    assert len(pipe.people(boxes, kps, detected=True)) == 1
    assert len(pipe.people(boxes, kps, detected=False)) == 2  # the client asked for both boxes
    nan = kps.copy()
    nan[1, 3, 0] = np.nan
    assert len(pipe.people(boxes, nan, detected=False)) == 1  # never NaN in the JSON


def test_a_person_known_only_by_keypoints_gets_the_box_around_them():
    few = person(score=0.8)
    few[3:, 2] = 0.05  # three face points are sure: too few to tell a box
    boxes = keypoint_boxes(np.stack([person(), few]), np.array([0.6, 0.5]))
    # the standing person spans x 110..190, y 105..390; grown by 10 % of that each side
    assert np.allclose(boxes[0], [102, 76.5, 198, 418.5, 0.6])
    assert np.isnan(boxes[1]).all()


def test_a_wide_crop_of_a_tightly_boxed_person_is_a_duplicate():
    """The better-scored answer has a tight (partial) box, the other a wide one; both skeletons are the same
    person. At the tight box's scale they looked like two people; the pair's OKS is taken at the larger box."""
    kps = np.stack([person(jitter=4.0, seed=1), person(jitter=4.0, seed=2)])
    boxes = np.array([[140, 100, 170, 140], BOX], np.float32)  # 30 × 40 px against 100 × 310 px
    assert oks_nms(kps, boxes, np.array([0.6, 0.4]), 0.7).tolist() == [0]
    assert stacked_pairs(kps, boxes) == [(0, 1)]  # what a user would have seen without it
