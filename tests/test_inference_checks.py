"""The detection comparison the other tests rely on (``inference_checks.detection_differences``):
near-equal scores paired in either order, and everything else that differs caught."""

import math

import torch
from detectron2.structures import Boxes, Instances
from inference_checks import assert_same_detections, detection_differences


def _detections(rows, size=(100, 120)):
    """Instances from (class, score, x0, y0, x1, y1) rows."""
    table = torch.tensor(rows, dtype=torch.float32)
    instances = Instances(size)
    instances.pred_classes = table[:, 0].long()
    instances.scores = table[:, 1]
    instances.pred_boxes = Boxes(table[:, 2:])
    return instances


EXPECTED = [
    (0, 0.90, 10, 10, 50, 50),
    (2, 0.5000001, 0, 36, 99, 64),  # two near-equal scores of other classes
    (4, 0.5000000, 99, 0, 120, 21),
    (1, 0.30, 5, 5, 20, 20),
    (3, 0.11, 60, 60, 90, 90),  # the cut: the lowest score
]


def test_near_equal_scores_in_the_other_order_are_paired_and_measured():
    swapped = [EXPECTED[0], EXPECTED[2], (2, 0.5000002, 0, 36.001, 99, 64), *EXPECTED[3:]]
    diff = detection_differences([_detections(EXPECTED)], [_detections(swapped)], tie=1e-4)
    assert diff["count"] == 5
    assert math.isclose(diff["boxes"], 1e-3, rel_tol=1e-2)
    assert 0 < diff["scores"] < 1e-6
    assert_same_detections([_detections(EXPECTED)] * 2, [_detections(swapped)] * 2, 2e-3, 1e-6)


def test_a_changed_class_score_box_or_count_is_caught():
    changes = [
        [(1, *EXPECTED[0][1:]), *EXPECTED[1:]],  # class
        [(0, 0.80, *EXPECTED[0][2:]), *EXPECTED[1:]],  # score beyond the tie
        EXPECTED[:-1],  # one fewer
    ]
    for rows in changes:
        diff = detection_differences([_detections(EXPECTED)], [_detections(rows)], tie=1e-4)
        assert diff["boxes"] == diff["scores"] == math.inf, rows
    moved = [(0, 0.90, 30, 10, 50, 50), *EXPECTED[1:]]  # a box: measured, not hidden
    assert detection_differences([_detections(EXPECTED)], [_detections(moved)])["boxes"] == 20
    other_size = detection_differences([_detections(EXPECTED)], [_detections(EXPECTED, (90, 120))])
    assert other_size["boxes"] == math.inf


def test_only_the_cut_may_keep_another_detection():
    """Top-k keeps either of two near-equal detections at the lowest score; above it, a detection
    that is not in the other list is a difference."""
    at_cut = [*EXPECTED[:-1], (0, 0.11000001, 0, 0, 9, 9)]
    diff = detection_differences([_detections(EXPECTED)], [_detections(at_cut)], tie=1e-4)
    assert diff["count"] == 4 and diff["boxes"] == 0
    above = [*EXPECTED[:3], (0, 0.30, 0, 0, 9, 9), EXPECTED[4]]
    diff = detection_differences([_detections(EXPECTED)], [_detections(above)], tie=1e-4)
    assert diff["boxes"] == math.inf


def test_the_cut_is_one_for_both_lists():
    """The two lists' last detections differ and are 0.05 apart in score: not a swap at the cut."""
    other_last = [*EXPECTED[:-1], (0, 0.06, 0, 0, 9, 9)]
    diff = detection_differences([_detections(EXPECTED)], [_detections(other_last)], tie=1e-4)
    assert diff["boxes"] == math.inf


def test_a_pairing_is_found_where_taking_the_nearest_box_first_would_miss_it():
    """Two near-equal detections of one class: the first's nearest box is the only partner the
    second can have (its other candidate's score is beyond the tie)."""
    expected = [(0, 0.5002, 0, 0, 10, 10), (0, 0.5, 1, 1, 11, 11), (1, 0.2, 50, 50, 60, 60)]
    # the first (highest) detection's nearest box is the one the second needs
    actual = [(0, 0.5001, 0.2, 0.2, 10.2, 10.2), (0, 0.5003, 1, 1, 11, 11), expected[2]]
    diff = detection_differences([_detections(expected)], [_detections(actual)], tie=1.5e-4)
    assert diff["count"] == 3 and math.isclose(diff["boxes"], 1.0, rel_tol=1e-5), diff


def test_non_finite_values_and_many_unpaired_detections_are_differences():
    for bad in ([(0, float("nan"), *EXPECTED[0][2:])], [(0, 0.9, 10, 10, float("nan"), 50)]):
        rows = [*bad, *EXPECTED[1:]]
        diff = detection_differences([_detections(EXPECTED)], [_detections(rows)])
        assert diff["boxes"] == math.inf, rows
    level = [(k % 5, 0.2, 10 * k, 0, 10 * k + 5, 5) for k in range(4)]
    shifted = [(c, s, x0, y0 + 50, x1, y1 + 50) for c, s, x0, y0, x1, y1 in level]
    assert detection_differences([_detections(level)], [_detections(shifted)])["count"] == 4
    moved = [(c + 5, s, *box) for c, s, *box in level]  # all at the cut, but four of them
    diff = detection_differences([_detections(level)], [_detections(moved)], max_unpaired=2)
    assert diff["boxes"] == math.inf
