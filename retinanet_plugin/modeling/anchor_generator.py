"""Anchors of RetinaNet: sizes x aspect ratios at every location of every pyramid level."""

import math
from collections import OrderedDict
from typing import List, Sequence, Tuple

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import ANCHOR_GENERATOR_REGISTRY
from detectron2.structures import Boxes

from ..utils.capture import is_capturing


def _per_level(values, num_levels: int, key: str) -> List[List[float]]:
    """Broadcast a config list of lists to one list per level, or raise naming ``key``."""
    values = [list(v) for v in values]
    if len(values) == 1:
        return values * num_levels
    if len(values) != num_levels:
        raise ValueError(
            f"{key} has {len(values)} lists but the head uses {num_levels} feature levels: "
            f"give one list per level or a single list for all levels"
        )
    return values


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> torch.Tensor:
    """Anchors centred on (0, 0) as an [len(sizes) * len(aspect_ratios), 4] XYXY tensor (pixels).

    Size is the square root of the area; aspect ratio is height / width. Sizes vary slowest.
    """
    boxes = []
    for size in sizes:
        for ratio in aspect_ratios:
            width = math.sqrt(size * size / ratio)
            height = ratio * width
            boxes.append([-width / 2.0, -height / 2.0, width / 2.0, height / 2.0])
    return torch.tensor(boxes, dtype=torch.float32)


@ANCHOR_GENERATOR_REGISTRY.register()
class RetinaNetPluginAnchorGenerator(nn.Module):
    """Generates ``len(sizes) * len(aspect_ratios)`` anchors (9 by default) at each location of each
    level.

    Anchors of a level are ordered location-major (row, then column), then size, then aspect ratio,
    which is the order of the head's channel layout and of Detectron2's ``DefaultAnchorGenerator``.
    The most recent ``GRID_CACHE_SIZE`` grids are cached per (level, height, width, device), so
    repeated image sizes cost nothing and multi-scale training does not grow memory without bound.
    """

    GRID_CACHE_SIZE = 32
    # The cache is eager-mode only (a TorchScript module computes the grids): left out of scripting.
    __jit_ignored_attributes__ = ["_grid_cache"]

    box_dim: int = 4

    @configurable
    def __init__(
        self,
        *,
        sizes: List[List[float]],
        aspect_ratios: List[List[float]],
        strides: List[int],
        offset: float = 0.0,
    ):
        """
        Args:
            sizes: per level, anchor sizes in pixels (sqrt of the area).
            aspect_ratios: per level, height / width ratios.
            strides: per level, the feature stride in pixels.
            offset: where the first anchor centre sits, as a fraction of the stride, in [0, 1).
        """
        super().__init__()
        if not 0.0 <= offset < 1.0:
            raise ValueError(f"MODEL.ANCHOR_GENERATOR.OFFSET must be in [0, 1), got {offset}")
        num_levels = len(strides)
        sizes = _per_level(sizes, num_levels, "MODEL.ANCHOR_GENERATOR.SIZES")
        aspect_ratios = _per_level(
            aspect_ratios, num_levels, "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS"
        )
        for key, per_level in (("SIZES", sizes), ("ASPECT_RATIOS", aspect_ratios)):
            if any(len(v) == 0 or min(v) <= 0 for v in per_level):
                raise ValueError(
                    f"MODEL.ANCHOR_GENERATOR.{key} needs positive values on every level, got "
                    f"{per_level}"
                )
        self.strides = list(strides)
        self.offset = offset
        self.sizes = sizes
        self.aspect_ratios = aspect_ratios
        self._cell_anchors = [cell_anchors(s, r) for s, r in zip(sizes, aspect_ratios)]
        self._grid_cache: "OrderedDict[Tuple[int, int, int, str], torch.Tensor]" = OrderedDict()

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        return {
            "sizes": cfg.MODEL.ANCHOR_GENERATOR.SIZES,
            "aspect_ratios": cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS,
            "strides": [s.stride for s in input_shape],
            "offset": cfg.MODEL.ANCHOR_GENERATOR.OFFSET,
        }

    @property
    def num_cell_anchors(self) -> List[int]:
        """Anchors per location, per level (Detectron2's name)."""
        return [len(c) for c in self._cell_anchors]

    @property
    def num_anchors(self) -> List[int]:
        return self.num_cell_anchors

    def _grid_anchors(
        self, level: int, height: int, width: int, device: torch.device
    ) -> torch.Tensor:
        """[height * width * A, 4] anchors of ``level``: cached by size in eager mode; computed from
        the (possibly symbolic) sizes while scripting, tracing, compiling or exporting, so the graph
        freezes no image size."""
        if torch.jit.is_scripting():
            return self._compute_grid_anchors(level, height, width, device)
        return self._cached_grid_anchors(level, height, width, device)

    @torch.jit.unused
    def _cached_grid_anchors(
        self, level: int, height: int, width: int, device: torch.device
    ) -> torch.Tensor:
        if is_capturing():
            return self._compute_grid_anchors(level, height, width, device)
        key = (level, height, width, str(device))
        anchors = self._grid_cache.get(key)
        if anchors is None:
            anchors = self._compute_grid_anchors(level, height, width, device)
            self._grid_cache[key] = anchors
            if len(self._grid_cache) > self.GRID_CACHE_SIZE:
                self._grid_cache.popitem(last=False)
        else:
            self._grid_cache.move_to_end(key)
        return anchors

    def _compute_grid_anchors(
        self, level: int, height: int, width: int, device: torch.device
    ) -> torch.Tensor:
        stride = self.strides[level]
        xs = (torch.arange(width, dtype=torch.float32, device=device) + self.offset) * stride
        ys = (torch.arange(height, dtype=torch.float32, device=device) + self.offset) * stride
        shift_y, shift_x = torch.meshgrid([ys, xs], indexing="ij")
        shifts = torch.stack([shift_x, shift_y, shift_x, shift_y], dim=-1).reshape(-1, 1, 4)
        return (shifts + self._cell_anchors[level].to(device).view(1, -1, 4)).reshape(-1, 4)

    def forward(self, features: List[torch.Tensor]) -> List[Boxes]:
        """Per level, a ``Boxes`` of [H_i * W_i * A, 4] anchors in input-image pixels (XYXY)."""
        if len(features) != len(self.strides):
            raise ValueError(f"got {len(features)} feature maps, expected {len(self.strides)}")
        anchors: List[Boxes] = []
        for level, feature in enumerate(features):
            height, width = feature.shape[-2], feature.shape[-1]
            anchors.append(Boxes(self._grid_anchors(level, height, width, feature.device)))
        return anchors
