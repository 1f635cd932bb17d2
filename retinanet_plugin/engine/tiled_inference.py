"""Sliced inference for images much larger than the model's input: overlapping tiles, merged
detections.

Resizing a 6000 px aerial photograph to the test size (``INPUT.MIN_SIZE_TEST``) shrinks a 20 px
object to 3 px, below what the smallest anchors (32 px on stride 8) can find.
:class:`TiledPredictor` cuts the image into tiles of ``tile_size`` px overlapping by ``overlap`` (a
fraction of the tile), runs the predictor on each tile as it would on a whole image (so each tile
gets the test-time resize: with ``INPUT.MIN_SIZE_TEST`` equal to the tile size, tiles run at their
own resolution; with ``TEST.AUG.ENABLED``, the augmentation's sizes instead), moves the detections
to image coordinates and merges them:

1. a detection cut by an inner tile edge (its box touches an edge of its tile that is not the
   image's border) is dropped when a detection of the same class from another tile covers at least
   ``cut_cover`` of it: the object lies whole in that tile, which the overlap ensures for objects
   smaller than the overlap;
2. class-aware NMS across tiles (``nms_thresh``, ``MODEL.RETINANET.NMS_THRESH_TEST`` by default;
   :func:`cross_tile_nms`) removes the duplicates of objects seen whole in two tiles; only a box of
   another tile suppresses, since a tile's detections have had the model's own NMS (a second one on
   boxes that ``detector_postprocess`` has clipped could remove some of them; one tile as large as
   the image gives the model's own detections);
3. the best ``max_detections`` are kept.

Objects larger than the overlap are cut in every tile; their pieces may survive as separate boxes.
"""

import math
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
from detectron2.structures import Boxes, Instances
from torchvision.ops import box_iou

__all__ = ["TiledPredictor", "cross_tile_nms", "merge_tile_detections", "tile_grid"]

Tile = Tuple[int, int, int, int]  # x0, y0, x1, y1 in image pixels


def _starts(length: int, tile: int, stride: int) -> List[int]:
    if length <= tile:
        return [0]
    count = math.ceil((length - tile) / stride) + 1
    last = length - tile
    starts = [min(i * stride, last) for i in range(count)]
    return sorted(set(starts))


def tile_grid(height: int, width: int, tile_size: int, overlap: float) -> List[Tile]:
    """Tiles of ``tile_size`` px (smaller only where the image is) covering the image, neighbours
    overlapping by at least ``overlap * tile_size`` px; the last tile of a row or column ends at the
    image border."""
    if tile_size < 1:
        raise ValueError(f"--tile must be >= 1 px, got {tile_size}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"--tile-overlap must be in [0, 1), got {overlap}")
    stride = max(1, int(round(tile_size * (1.0 - overlap))))
    xs, ys = _starts(width, tile_size, stride), _starts(height, tile_size, stride)
    return [(x, y, min(x + tile_size, width), min(y + tile_size, height)) for y in ys for x in xs]


def _cut_by_inner_edge(
    boxes: torch.Tensor, tile: Tile, image_size: Tuple[int, int], margin: float
) -> torch.Tensor:
    """[N] bool: the box touches an edge of ``tile`` that is not on the image's border."""
    x0, y0, x1, y1 = tile
    height, width = image_size
    cut = torch.zeros(len(boxes), dtype=torch.bool)
    if x0 > 0:
        cut |= boxes[:, 0] <= x0 + margin
    if y0 > 0:
        cut |= boxes[:, 1] <= y0 + margin
    if x1 < width:
        cut |= boxes[:, 2] >= x1 - margin
    if y1 < height:
        cut |= boxes[:, 3] >= y1 - margin
    return cut


def _covered_fraction(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[len(a), len(b)]: area of a ∩ b over the area of a."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    area = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1)
    return inter / area.clamp(min=1e-6)[:, None]


def merge_tile_detections(
    per_tile: Sequence[Tuple[Tile, Instances]],
    image_size: Tuple[int, int],
    *,
    nms_thresh: float = 0.5,
    max_detections: int = 1000,
    cut_cover: float = 0.8,
    edge_margin: float = 2.0,
) -> Instances:
    """One image's ``Instances`` (``pred_boxes``, ``scores``, ``pred_classes``) from each tile's
    detections in tile coordinates, merged as the module docstring says."""
    boxes, scores, classes, tile_index, cut = [], [], [], [], []
    for index, (tile, instances) in enumerate(per_tile):
        if len(instances) == 0:
            continue
        offset = torch.tensor([tile[0], tile[1], tile[0], tile[1]], dtype=torch.float32)
        b = instances.pred_boxes.tensor.detach().to("cpu", torch.float32) + offset
        boxes.append(b)
        scores.append(instances.scores.detach().to("cpu", torch.float32))
        classes.append(instances.pred_classes.detach().to("cpu", torch.int64))
        tile_index.append(torch.full((len(b),), index, dtype=torch.int64))
        cut.append(_cut_by_inner_edge(b, tile, image_size, edge_margin))
    merged = Instances(image_size)
    if not boxes:
        merged.pred_boxes = Boxes(torch.zeros((0, 4)))
        merged.scores = torch.zeros(0)
        merged.pred_classes = torch.zeros(0, dtype=torch.int64)
        return merged
    boxes, scores, classes = torch.cat(boxes), torch.cat(scores), torch.cat(classes)
    tile_index, cut = torch.cat(tile_index), torch.cat(cut)
    keep = torch.ones(len(boxes), dtype=torch.bool)
    for k in classes[cut].unique().tolist():
        rows = torch.nonzero(cut & (classes == k)).flatten()
        cols = torch.nonzero(classes == k).flatten()
        for start in range(0, len(rows), 256):  # bounded [256, #class] blocks
            block = rows[start : start + 256]
            covered = _covered_fraction(boxes[block], boxes[cols]) >= cut_cover
            covered &= tile_index[block][:, None] != tile_index[cols][None, :]
            covered &= _area(boxes[cols])[None, :] > _area(boxes[block])[:, None]
            keep[block[covered.any(dim=1)]] = False
    boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
    kept = cross_tile_nms(boxes, scores, classes, tile_index[keep], nms_thresh)[:max_detections]
    merged.pred_boxes = Boxes(boxes[kept])
    merged.scores = scores[kept]
    merged.pred_classes = classes[kept]
    return merged


def cross_tile_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor,
    tile_index: torch.Tensor,
    nms_thresh: float,
    max_pairs: int = 2**22,
) -> torch.Tensor:
    """Greedy class-aware NMS in which only a box of another tile suppresses: a tile's detections
    have had the model's own NMS, and a second one on them (after ``detector_postprocess`` clipped
    some) could remove objects the model kept.

    Args:
        boxes [M, 4] XYXY, scores [M], classes [M], tile_index [M] (any one device).
        max_pairs: IoUs computed at once (about 36 bytes each with their temporaries).
    Returns:
        indices of the kept boxes, by decreasing score (ties in input order).
    """
    order = scores.argsort(descending=True, stable=True)
    suppressed = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    for k in classes.unique().tolist():
        members = order[classes[order] == k]  # this class, best first
        member_boxes, member_tiles = boxes[members], tile_index[members]
        # pairs (i, j), i before j, of different tiles overlapping above the threshold: few (the
        # duplicates in the tiles' overlaps), found in bounded [block, n] slices
        edges = []
        block = max(1, max_pairs // len(members))
        columns = torch.arange(len(members), device=boxes.device)[None, :]
        for start in range(0, len(members), block):
            iou = box_iou(member_boxes[start : start + block], member_boxes)
            rows = torch.arange(start, start + len(iou), device=boxes.device)[:, None]
            later = columns > rows
            other_tile = member_tiles[start : start + block, None] != member_tiles[None, :]
            i, j = torch.nonzero((iou > nms_thresh) & later & other_tile, as_tuple=True)
            edges.append(torch.stack([i + start, j], dim=1))
        edges = torch.cat(edges).tolist()  # one slice at least: the class has a member
        gone = set()
        for i, j in edges:  # by i, in score order: a box suppresses only while it is kept
            if i not in gone:
                gone.add(j)
        suppressed[members[sorted(gone)]] = True
    return order[~suppressed[order]]


def _area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(dim=1)


class TiledPredictor:
    """Detections on large images from a predictor of whole images (e.g. :class:`BatchPredictor`: a
    callable that takes a list of (H, W, 3) BGR uint8 images and returns one ``{"instances":
    Instances}`` per image), tile by tile.

    Args:
        predictor: as above; called with up to ``batch_size`` tiles at a time.
        tile_size, overlap: see :func:`tile_grid`.
        nms_thresh, max_detections, cut_cover: see :func:`merge_tile_detections`.
    """

    def __init__(
        self,
        predictor: Callable[[List[np.ndarray]], List[Dict]],
        tile_size: int,
        overlap: float = 0.25,
        *,
        nms_thresh: float = 0.5,
        max_detections: int = 1000,
        batch_size: int = 1,
        cut_cover: float = 0.8,
    ):
        tile_grid(tile_size, tile_size, tile_size, overlap)  # checks the arguments
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        self.predictor = predictor
        self.tile_size, self.overlap = tile_size, overlap
        self.nms_thresh, self.max_detections, self.cut_cover = nms_thresh, max_detections, cut_cover
        self.batch_size = batch_size

    def __call__(self, images: Sequence[np.ndarray]) -> List[Dict]:
        """Like the predictor: a list of BGR images in, ``[{"instances": Instances}]`` in image
        coordinates out."""
        return [{"instances": self.predict_one(image)} for image in images]

    def predict_one(self, image: np.ndarray) -> Instances:
        height, width = image.shape[:2]
        tiles = tile_grid(height, width, self.tile_size, self.overlap)
        per_tile = []
        for first in range(0, len(tiles), self.batch_size):
            batch = tiles[first : first + self.batch_size]
            crops = [np.ascontiguousarray(image[y0:y1, x0:x1]) for x0, y0, x1, y1 in batch]
            outputs = self.predictor(crops)
            per_tile += [
                (tile, output["instances"].to("cpu")) for tile, output in zip(batch, outputs)
            ]
        return merge_tile_detections(
            per_tile,
            (height, width),
            nms_thresh=self.nms_thresh,
            max_detections=self.max_detections,
            cut_cover=self.cut_cover,
        )
