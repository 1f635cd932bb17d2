"""Drawing the images of the synthetic shapes dataset (:mod:`.synthetic_shapes` writes and registers
them).

Five classes, told apart by shape only (colours are random): filled rectangle, filled ellipse,
filled triangle (apex up/down/left/right), plus-shaped cross, ring (an elliptic annulus). Object
scale sqrt(w*h) ranges from 12 px to ~90% of the shorter image side, aspect ratios w/h from 1:3 to
3:1, so that all RetinaNet levels (anchors 32-512 px on strides 8-128) get positives. Objects may
overlap a little (box IoU <= 0.3, at most 10% of an object's pixels covered by a later one) but
never hide each other. Boxes are the tight extent of each object's visible pixels, in COCO's ``[x,
y, w, h]`` pixel-edge convention; ``area`` is the visible pixel count (COCO's "segment area"). About
8% of the images hold no object. Every image is deterministic in (parameters, split, index):
:func:`render_synthetic_image`.
"""

import dataclasses
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

__all__ = [
    "SPLITS",
    "SYNTHETIC_SHAPES_CLASSES",
    "SYNTHETIC_SHAPES_NUM_CLASSES",
    "SyntheticShapesParams",
    "render_synthetic_image",
]

SYNTHETIC_SHAPES_CLASSES: Tuple[str, ...] = ("rectangle", "ellipse", "triangle", "cross", "ring")
# Set MODEL.RETINANET.NUM_CLASSES to this when training on the synthetic dataset.
SYNTHETIC_SHAPES_NUM_CLASSES: int = len(SYNTHETIC_SHAPES_CLASSES)
SPLITS: Tuple[str, ...] = ("train", "val")

# Object scale sqrt(w*h) in pixels: (low, high, probability); log-uniform inside a bucket. The last
# bucket is capped by the image (see _sample_box_size) and shifted down when the image is too small
# for it.
_SCALE_BUCKETS = (
    (12.0, 32.0, 0.18),
    (32.0, 96.0, 0.34),
    (96.0, 256.0, 0.34),
    (256.0, float("inf"), 0.14),
)
_MAX_SCALE_FRACTION = 0.9  # largest object scale, as a fraction of the shorter image side
# largest object width (height), as a fraction of the image width (height)
_MAX_SIDE_FRACTION = 0.96
_MIN_SIDE = 8  # shortest object side in pixels, so that thin shapes keep their look
_MAX_ASPECT = 3.0  # w/h in [1/3, 3]
_MAX_BOX_IOU = 0.3  # between any two objects' boxes
_MAX_COVERED_FRACTION = 0.1  # of an object's pixels that later objects may cover
_PLACEMENT_TRIES = 30
_MIN_COLOR_DISTANCE = 100.0  # RGB distance between an object's colour and the background under it


@dataclasses.dataclass(frozen=True)
class SyntheticShapesParams:
    """Everything that determines the generated files (recorded in the manifest)."""

    num_train: int = 600  # images in the train split
    num_val: int = 100  # images in the held-out val split
    seed: int = 0  # train uses the random stream (seed, 0, .), val the stream (seed, 1, .)
    # image width and height are drawn uniformly in [min_image_size, max_image_size]
    min_image_size: int = 256
    max_image_size: int = 384
    # a non-empty image asks for 1..max objects (fewer if they do not fit)
    max_objects_per_image: int = 6
    # round(N * fraction) images of each split (>= 1 if N >= 2) hold no object
    empty_image_fraction: float = 0.08
    # per-image Gaussian pixel noise, std drawn in [0, max] (0-255 scale)
    max_noise_std: float = 6.0
    # chance of a linear two-colour gradient background (else plain)
    gradient_probability: float = 0.65
    image_format: str = "jpg"  # "jpg" (quality 95) or "png" (lossless)

    def __post_init__(self):
        for name in (
            "num_train",
            "num_val",
            "seed",
            "min_image_size",
            "max_image_size",
            "max_objects_per_image",
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise TypeError(f"SyntheticShapesParams.{name} must be an int, got {value!r}")
            object.__setattr__(self, name, int(value))  # plain ints: the manifest is json
        for name in ("empty_image_fraction", "max_noise_std", "gradient_probability"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.num_train < 1 or self.num_val < 1:
            raise ValueError(
                f"num_train and num_val must be >= 1, got {self.num_train} and {self.num_val}"
            )
        if not 64 <= self.min_image_size <= self.max_image_size:
            raise ValueError(
                f"need 64 <= min_image_size <= max_image_size, got {self.min_image_size}, "
                f"{self.max_image_size}"
            )
        if self.max_objects_per_image < 1:
            raise ValueError(
                f"max_objects_per_image must be >= 1, got {self.max_objects_per_image}"
            )
        if not 0.0 <= self.empty_image_fraction < 1.0:
            raise ValueError(
                f"empty_image_fraction must be in [0, 1), got {self.empty_image_fraction}"
            )
        if not 0.0 <= self.max_noise_std <= 50.0:
            raise ValueError(f"max_noise_std must be in [0, 50], got {self.max_noise_std}")
        if not 0.0 <= self.gradient_probability <= 1.0:
            raise ValueError(
                f"gradient_probability must be in [0, 1], got {self.gradient_probability}"
            )
        if self.image_format not in ("jpg", "png"):
            raise ValueError(f"image_format must be 'jpg' or 'png', got {self.image_format!r}")

    def num_images(self, split: str) -> int:
        return {"train": self.num_train, "val": self.num_val}[split]


def _split_rng(params: SyntheticShapesParams, split: str, index: int) -> np.random.Generator:
    """Independent stream per (seed, split, image); index -1 is the split-level stream (choice of
    empty images)."""
    return np.random.default_rng([params.seed, SPLITS.index(split), index + 1])


def _empty_image_indices(params: SyntheticShapesParams, split: str) -> frozenset:
    n = params.num_images(split)
    if params.empty_image_fraction <= 0 or n < 2:
        return frozenset()
    num_empty = min(n - 1, max(1, int(round(n * params.empty_image_fraction))))
    return frozenset(int(i) for i in _split_rng(params, split, -1).permutation(n)[:num_empty])


def _ellipse_mask(h: int, w: int, inset: float = 0.0) -> np.ndarray:
    """Filled ellipse inscribed in an (h, w) patch (pixel centres at integer coordinates), shrunk by
    ``inset``."""
    a, b = w / 2.0 - inset, h / 2.0 - inset
    if a <= 0 or b <= 0:
        return np.zeros((h, w), dtype=bool)
    x = (np.arange(w, dtype=np.float32) - (w - 1) / 2.0) / a
    y = (np.arange(h, dtype=np.float32) - (h - 1) / 2.0) / b
    return (x[None, :] ** 2 + y[:, None] ** 2) <= 1.0


def _triangle_mask(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Triangle with its base on one side of the patch and its apex on the opposite side (4
    orientations)."""
    import cv2

    orientation = int(rng.integers(4))  # 0 apex up, 1 apex down, 2 apex left, 3 apex right
    # draw apex-up in (ph, pw), then flip / transpose
    ph, pw = (h, w) if orientation < 2 else (w, h)
    apex = int(round(rng.uniform(0.2, 0.8) * (pw - 1)))
    patch = np.zeros((ph, pw), dtype=np.uint8)
    cv2.fillPoly(
        patch, [np.array([[0, ph - 1], [pw - 1, ph - 1], [apex, 0]], dtype=np.int32)], 1, cv2.LINE_8
    )
    if orientation == 1:
        patch = patch[::-1]
    elif orientation >= 2:
        patch = patch.T
        if orientation == 3:
            patch = patch[:, ::-1]
    return np.ascontiguousarray(patch, dtype=bool)


def _shape_mask(class_index: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean (h, w) mask of one shape filling its patch."""
    name = SYNTHETIC_SHAPES_CLASSES[class_index]
    if name == "rectangle":
        return np.ones((h, w), dtype=bool)
    if name == "ellipse":
        return _ellipse_mask(h, w)
    if name == "triangle":
        return _triangle_mask(h, w, rng)
    if name == "cross":
        fraction = rng.uniform(0.22, 0.38)  # bar thickness relative to the patch side it spans
        bar_h, bar_w = max(2, int(round(h * fraction))), max(2, int(round(w * fraction)))
        mask = np.zeros((h, w), dtype=bool)
        top, left = (h - bar_h) // 2, (w - bar_w) // 2
        mask[top : top + bar_h, :] = True
        mask[:, left : left + bar_w] = True
        return mask
    if name == "ring":
        thickness = max(2.0, min(h, w) * rng.uniform(0.12, 0.24))
        return _ellipse_mask(h, w) & ~_ellipse_mask(h, w, inset=thickness)
    raise AssertionError(name)


def _sample_box_size(rng: np.random.Generator, height: int, width: int) -> Tuple[int, int]:
    """(h, w) of an object: scale from _SCALE_BUCKETS, aspect w/h log-uniform in [1/3, 3], clipped
    to the image."""
    max_scale = _MAX_SCALE_FRACTION * min(height, width)
    probabilities = np.array([b[2] for b in _SCALE_BUCKETS])
    low, high, _ = _SCALE_BUCKETS[
        int(rng.choice(len(_SCALE_BUCKETS), p=probabilities / probabilities.sum()))
    ]
    high = min(high, max_scale)
    low = min(low, 0.75 * high)
    scale = float(np.exp(rng.uniform(np.log(low), np.log(high))))
    aspect = float(np.exp(rng.uniform(-np.log(_MAX_ASPECT), np.log(_MAX_ASPECT))))
    w = min(scale * np.sqrt(aspect), _MAX_SIDE_FRACTION * width)
    h = min(scale / np.sqrt(aspect), _MAX_SIDE_FRACTION * height)
    return max(_MIN_SIDE, int(round(h))), max(_MIN_SIDE, int(round(w)))


def _box_iou(a: Tuple[int, int, int, int], b: Tuple[int, int, int, int]) -> float:
    """IoU of two (x0, y0, x1, y1) boxes with exclusive x1, y1."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _background(
    rng: np.random.Generator, height: int, width: int, gradient_probability: float
) -> np.ndarray:
    """(H, W, 3) float32 BGR background: one colour, or a mild linear gradient between two close
    colours."""
    color = rng.uniform(0, 255, size=3).astype(np.float32)
    if rng.uniform() >= gradient_probability:
        return np.broadcast_to(color, (height, width, 3)).copy()
    other = np.clip(color + rng.uniform(-50, 50, size=3), 0, 255).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.arange(width, dtype=np.float32)[None, :] * np.cos(angle) + np.arange(
        height, dtype=np.float32
    )[:, None] * np.sin(angle)
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    return color + ramp[:, :, None] * (other - color)


def _object_color(rng: np.random.Generator, avoid: List[np.ndarray]) -> np.ndarray:
    """A random colour at least _MIN_COLOR_DISTANCE (RGB) away from every colour in ``avoid`` if one
    is found in 50 draws, else the draw farthest from its nearest colour in ``avoid``."""
    best, best_distance = None, -1.0
    for _ in range(50):
        color = rng.uniform(0, 255, size=3)
        distance = min(float(np.linalg.norm(color - other)) for other in avoid)
        if distance > best_distance:
            best, best_distance = color, distance
        if distance >= _MIN_COLOR_DISTANCE:
            break
    return best.astype(np.float32)


def _find_spot(
    rng: np.random.Generator, mask: np.ndarray, owner: np.ndarray, placed: List[Dict[str, Any]]
) -> Optional[Tuple[int, int, List[int], List[int]]]:
    """Where the shape ``mask`` may go: ``(x0, y0, ids, counts)`` with the 1-based ids of the placed
    objects it covers and how many of their pixels; None when _PLACEMENT_TRIES random places all
    break the overlap rules.
    """
    h, w = mask.shape
    height, width = owner.shape
    for _ in range(_PLACEMENT_TRIES):
        x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        box = (x0, y0, x0 + w, y0 + h)
        if any(_box_iou(box, other["drawn_box"]) > _MAX_BOX_IOU for other in placed):
            continue
        covered = owner[y0 : y0 + h, x0 : x0 + w][mask]
        covered_ids, counts = np.unique(covered[covered > 0], return_counts=True)
        ids, counts = covered_ids.tolist(), counts.tolist()
        if all(
            placed[i - 1]["visible"] - c >= (1 - _MAX_COVERED_FRACTION) * placed[i - 1]["pixels"]
            for i, c in zip(ids, counts)
        ):
            return x0, y0, ids, counts
    return None


def _draw_objects(
    rng: np.random.Generator,
    image: np.ndarray,
    background: np.ndarray,
    owner: np.ndarray,
    num_wanted: int,
) -> List[Dict[str, Any]]:
    """Draw up to ``num_wanted`` objects into ``image`` (and their 1-based ids into ``owner``),
    large ones first; returns one dict per drawn object (class, drawn box, pixel counts, colour)."""
    height, width = owner.shape
    placed: List[Dict[str, Any]] = []
    sizes = sorted(
        (_sample_box_size(rng, height, width) for _ in range(num_wanted)),
        key=lambda s: -s[0] * s[1],
    )
    # large first: later (smaller) objects go on top and may only cover a little of them
    for h, w in sizes:
        class_index = int(rng.integers(SYNTHETIC_SHAPES_NUM_CLASSES))
        mask = _shape_mask(class_index, h, w, rng)
        pixels = int(mask.sum())
        spot = _find_spot(rng, mask, owner, placed)
        if spot is None:
            continue  # no room for this object: the image gets fewer objects
        x0, y0, covered_ids, counts = spot
        for i, c in zip(covered_ids, counts):
            placed[i - 1]["visible"] -= c
        # stand out from the background under the box and from every object that overlaps or
        # touches it
        near = (x0 - 2, y0 - 2, x0 + w + 2, y0 + h + 2)
        avoid = [background[y0 : y0 + h, x0 : x0 + w].reshape(-1, 3).mean(axis=0)]
        avoid += [other["color"] for other in placed if _box_iou(near, other["drawn_box"]) > 0]
        color = _object_color(rng, avoid)
        image[y0 : y0 + h, x0 : x0 + w][mask] = color
        owner[y0 : y0 + h, x0 : x0 + w][mask] = len(placed) + 1
        box = (x0, y0, x0 + w, y0 + h)
        placed.append(
            {
                "class_index": class_index,
                "drawn_box": box,
                "pixels": pixels,
                "visible": pixels,
                "color": color,
            }
        )
    return placed


def _visible_objects(placed: List[Dict[str, Any]], owner: np.ndarray) -> List[Dict[str, Any]]:
    """COCO-style ``category_id``, tight ``bbox`` and ``area`` of the visible pixels of each drawn
    object."""
    objects = []
    for k, obj in enumerate(placed, start=1):
        x0, y0, x1, y1 = obj["drawn_box"]
        ys, xs = np.nonzero(owner[y0:y1, x0:x1] == k)
        bx, by = x0 + int(xs.min()), y0 + int(ys.min())
        objects.append(
            {
                "category_id": obj["class_index"] + 1,
                "bbox": [bx, by, x0 + int(xs.max()) + 1 - bx, y0 + int(ys.max()) + 1 - by],
                "area": int(xs.size),
            }
        )
    return objects


def render_synthetic_image(
    params: SyntheticShapesParams, split: str, index: int
) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
    """Draw image ``index`` of ``split``; deterministic in (params, split, index).

    Returns:
        image: (H, W, 3) uint8 BGR.
        objects: one dict per object with ``category_id`` (1-based, COCO style), ``bbox`` [x, y, w,
            h] in pixels (tight around the object's visible pixels), ``area`` (visible pixel count).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0 <= index < params.num_images(split):
        raise IndexError(
            f"image index {index} out of range for {params.num_images(split)} {split} images"
        )
    rng = _split_rng(params, split, index)
    height = int(rng.integers(params.min_image_size, params.max_image_size + 1))
    width = int(rng.integers(params.min_image_size, params.max_image_size + 1))
    background = _background(rng, height, width, params.gradient_probability)
    image = background.copy()
    # owner[y, x]: 1-based index of the object whose pixel is visible there, 0 for background
    owner = np.zeros((height, width), dtype=np.int16)
    is_empty = index in _empty_image_indices(params, split)
    num_wanted = 0 if is_empty else int(rng.integers(1, params.max_objects_per_image + 1))
    placed = _draw_objects(rng, image, background, owner, num_wanted)
    noise_std = rng.uniform(0, params.max_noise_std)
    if noise_std > 0:
        image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(noise_std)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return image, _visible_objects(placed, owner)
