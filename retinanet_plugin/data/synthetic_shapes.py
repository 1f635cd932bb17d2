"""A small, deterministic COCO-format detection dataset of coloured shapes, generated on first use.

Layout of a generated dataset (``root``)::

    manifest.json              generator version, parameters, json sizes: written last, marks the folder complete
    train.json, val.json       COCO "instances" files (images, annotations, categories)
    train/000000.jpg ...       images of the train split (``image_root`` of the train dataset)
    val/000000.jpg ...         images of the held-out val split, drawn from a separate random stream

Five classes, told apart by shape only (colours are random): filled rectangle, filled ellipse, filled triangle
(apex up/down/left/right), plus-shaped cross, ring (an elliptic annulus). Object scale sqrt(w*h) ranges from 12 px
to ~90% of the shorter image side, aspect ratios w/h from 1:3 to 3:1, so that all RetinaNet levels (anchors
32-512 px on strides 8-128) get positives. Objects may overlap a little (box IoU <= 0.3, at most 10% of an
object's pixels covered by a later one) but never hide each other. Boxes are the tight extent of each object's
visible pixels, in COCO's ``[x, y, w, h]`` pixel-edge convention; ``area`` is the visible pixel count (COCO's
"segment area"). About 8% of the images hold no object.

Nothing is generated at import: :func:`register_synthetic_shapes` registers loader functions that call
:func:`ensure_synthetic_shapes` the first time the dataset is requested.
"""

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import uuid
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

__all__ = [
    "SYNTHETIC_SHAPES_CLASSES",
    "SYNTHETIC_SHAPES_NUM_CLASSES",
    "SYNTHETIC_SHAPES_TRAIN",
    "SYNTHETIC_SHAPES_VAL",
    "SyntheticShapesParams",
    "default_synthetic_shapes_root",
    "ensure_synthetic_shapes",
    "is_synthetic_shapes_complete",
    "render_synthetic_image",
    "register_synthetic_shapes",
    "ensure_registered_synthetic_files",
]

logger = logging.getLogger(__name__)

SYNTHETIC_SHAPES_CLASSES: Tuple[str, ...] = ("rectangle", "ellipse", "triangle", "cross", "ring")
# Set MODEL.RETINANET.NUM_CLASSES to this when training on the synthetic dataset.
SYNTHETIC_SHAPES_NUM_CLASSES: int = len(SYNTHETIC_SHAPES_CLASSES)
SYNTHETIC_SHAPES_TRAIN = "retinanet_synthetic_shapes_train"
SYNTHETIC_SHAPES_VAL = "retinanet_synthetic_shapes_val"
SPLITS: Tuple[str, ...] = ("train", "val")
DATASET_DIRNAME = "retinanet_synthetic_shapes"
# Bump whenever the drawing or the file layout changes: existing datasets with another version are regenerated.
GENERATOR_VERSION = 1
_GENERATOR_NAME = "retinanet_synthetic_shapes"
_MANIFEST = "manifest.json"
_OWN_ENTRIES = frozenset({_MANIFEST, "train", "val", "train.json", "val.json"})

# Object scale sqrt(w*h) in pixels: (low, high, probability); log-uniform inside a bucket. The last bucket is
# capped by the image (see _sample_box) and shifted down when the image is too small for it.
_SCALE_BUCKETS = ((12.0, 32.0, 0.18), (32.0, 96.0, 0.34), (96.0, 256.0, 0.34), (256.0, float("inf"), 0.14))
_MAX_SCALE_FRACTION = 0.9  # largest object scale, as a fraction of the shorter image side
_MAX_SIDE_FRACTION = 0.96  # largest object width (height), as a fraction of the image width (height)
_MIN_SIDE = 8  # shortest object side in pixels, so that thin shapes keep their look
_MAX_ASPECT = 3.0  # w/h in [1/3, 3]
_MAX_BOX_IOU = 0.3  # between any two objects' boxes
_MAX_COVERED_FRACTION = 0.1  # of an object's pixels that later objects may cover
_PLACEMENT_TRIES = 30
_MIN_COLOR_DISTANCE = 100.0  # RGB distance between an object's colour and the background under it
_JPEG_QUALITY = 95


@dataclasses.dataclass(frozen=True)
class SyntheticShapesParams:
    """Everything that determines the generated files (recorded in the manifest)."""

    num_train: int = 600  # images in the train split
    num_val: int = 100  # images in the held-out val split
    seed: int = 0  # train uses the random stream (seed, 0, .), val the stream (seed, 1, .)
    min_image_size: int = 256  # image width and height are drawn uniformly in [min_image_size, max_image_size]
    max_image_size: int = 384
    max_objects_per_image: int = 6  # a non-empty image asks for 1..max objects (fewer if they do not fit)
    empty_image_fraction: float = 0.08  # round(N * fraction) images of each split (>= 1 if N >= 2) hold no object
    max_noise_std: float = 6.0  # per-image Gaussian pixel noise, std drawn in [0, max] (0-255 scale)
    gradient_probability: float = 0.65  # chance of a linear two-colour gradient background (else plain)
    image_format: str = "jpg"  # "jpg" (quality 95) or "png" (lossless)

    def __post_init__(self):
        for name in ("num_train", "num_val", "seed", "min_image_size", "max_image_size", "max_objects_per_image"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise TypeError(f"SyntheticShapesParams.{name} must be an int, got {value!r}")
            object.__setattr__(self, name, int(value))  # plain ints: the manifest is json
        for name in ("empty_image_fraction", "max_noise_std", "gradient_probability"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.num_train < 1 or self.num_val < 1:
            raise ValueError(f"num_train and num_val must be >= 1, got {self.num_train} and {self.num_val}")
        if not 64 <= self.min_image_size <= self.max_image_size:
            raise ValueError(
                f"need 64 <= min_image_size <= max_image_size, got {self.min_image_size}, {self.max_image_size}"
            )
        if self.max_objects_per_image < 1:
            raise ValueError(f"max_objects_per_image must be >= 1, got {self.max_objects_per_image}")
        if not 0.0 <= self.empty_image_fraction < 1.0:
            raise ValueError(f"empty_image_fraction must be in [0, 1), got {self.empty_image_fraction}")
        if not 0.0 <= self.max_noise_std <= 50.0:
            raise ValueError(f"max_noise_std must be in [0, 50], got {self.max_noise_std}")
        if not 0.0 <= self.gradient_probability <= 1.0:
            raise ValueError(f"gradient_probability must be in [0, 1], got {self.gradient_probability}")
        if self.image_format not in ("jpg", "png"):
            raise ValueError(f"image_format must be 'jpg' or 'png', got {self.image_format!r}")

    def num_images(self, split: str) -> int:
        return {"train": self.num_train, "val": self.num_val}[split]


def default_synthetic_shapes_root() -> str:
    """``$DETECTRON2_DATASETS/retinanet_synthetic_shapes``, or ``./datasets/retinanet_synthetic_shapes``."""
    base = os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets"))
    return os.path.join(base, DATASET_DIRNAME)


# ----------------------------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------------------------


def _split_rng(params: SyntheticShapesParams, split: str, index: int) -> np.random.Generator:
    """Independent stream per (seed, split, image); index -1 is the split-level stream (choice of empty images)."""
    return np.random.default_rng([params.seed, SPLITS.index(split), index + 1])


def _empty_image_indices(params: SyntheticShapesParams, split: str) -> frozenset:
    n = params.num_images(split)
    if params.empty_image_fraction <= 0 or n < 2:
        return frozenset()
    num_empty = min(n - 1, max(1, int(round(n * params.empty_image_fraction))))
    return frozenset(int(i) for i in _split_rng(params, split, -1).permutation(n)[:num_empty])


def _ellipse_mask(h: int, w: int, inset: float = 0.0) -> np.ndarray:
    """Filled ellipse inscribed in an (h, w) patch (pixel centres at integer coordinates), shrunk by ``inset``."""
    a, b = w / 2.0 - inset, h / 2.0 - inset
    if a <= 0 or b <= 0:
        return np.zeros((h, w), dtype=bool)
    x = (np.arange(w, dtype=np.float32) - (w - 1) / 2.0) / a
    y = (np.arange(h, dtype=np.float32) - (h - 1) / 2.0) / b
    return (x[None, :] ** 2 + y[:, None] ** 2) <= 1.0


def _triangle_mask(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Triangle with its base on one side of the patch and its apex on the opposite side (4 orientations)."""
    import cv2

    orientation = int(rng.integers(4))  # 0 apex up, 1 apex down, 2 apex left, 3 apex right
    ph, pw = (h, w) if orientation < 2 else (w, h)  # draw apex-up in (ph, pw), then flip / transpose
    apex = int(round(rng.uniform(0.2, 0.8) * (pw - 1)))
    patch = np.zeros((ph, pw), dtype=np.uint8)
    cv2.fillPoly(patch, [np.array([[0, ph - 1], [pw - 1, ph - 1], [apex, 0]], dtype=np.int32)], 1, cv2.LINE_8)
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
    """(h, w) of an object: scale from _SCALE_BUCKETS, aspect w/h log-uniform in [1/3, 3], clipped to the image."""
    max_scale = _MAX_SCALE_FRACTION * min(height, width)
    probabilities = np.array([b[2] for b in _SCALE_BUCKETS])
    low, high, _ = _SCALE_BUCKETS[int(rng.choice(len(_SCALE_BUCKETS), p=probabilities / probabilities.sum()))]
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


def _background(rng: np.random.Generator, height: int, width: int, gradient_probability: float) -> np.ndarray:
    """(H, W, 3) float32 BGR background: one colour, or a mild linear gradient between two close colours."""
    color = rng.uniform(0, 255, size=3).astype(np.float32)
    if rng.uniform() >= gradient_probability:
        return np.broadcast_to(color, (height, width, 3)).copy()
    other = np.clip(color + rng.uniform(-50, 50, size=3), 0, 255).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.arange(width, dtype=np.float32)[None, :] * np.cos(angle) + np.arange(height, dtype=np.float32)[
        :, None
    ] * np.sin(angle)
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    return color + ramp[:, :, None] * (other - color)


def _object_color(rng: np.random.Generator, avoid: List[np.ndarray]) -> np.ndarray:
    """A random colour at least _MIN_COLOR_DISTANCE (RGB) away from every colour in ``avoid`` if one is found in
    50 draws, else the draw farthest from its nearest colour in ``avoid``."""
    best, best_distance = None, -1.0
    for _ in range(50):
        color = rng.uniform(0, 255, size=3)
        distance = min(float(np.linalg.norm(color - other)) for other in avoid)
        if distance > best_distance:
            best, best_distance = color, distance
        if distance >= _MIN_COLOR_DISTANCE:
            break
    return best.astype(np.float32)


def render_synthetic_image(
    params: SyntheticShapesParams, split: str, index: int
) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
    """Draw image ``index`` of ``split``; deterministic in (params, split, index).

    Returns:
        image: (H, W, 3) uint8 BGR.
        objects: one dict per object with ``category_id`` (1-based, COCO style), ``bbox`` [x, y, w, h] in pixels
            (tight around the object's visible pixels), ``area`` (visible pixel count).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0 <= index < params.num_images(split):
        raise IndexError(f"image index {index} out of range for {params.num_images(split)} {split} images")
    rng = _split_rng(params, split, index)
    height = int(rng.integers(params.min_image_size, params.max_image_size + 1))
    width = int(rng.integers(params.min_image_size, params.max_image_size + 1))
    background = _background(rng, height, width, params.gradient_probability)
    image = background.copy()
    # owner[y, x]: 1-based index of the object whose pixel is visible there, 0 for background
    owner = np.zeros((height, width), dtype=np.int16)
    placed: List[Dict[str, Any]] = []

    is_empty = index in _empty_image_indices(params, split)
    num_wanted = 0 if is_empty else int(rng.integers(1, params.max_objects_per_image + 1))
    sizes = sorted((_sample_box_size(rng, height, width) for _ in range(num_wanted)), key=lambda s: -s[0] * s[1])
    for h, w in sizes:  # large first: later (smaller) objects go on top and may only cover a little of them
        class_index = int(rng.integers(SYNTHETIC_SHAPES_NUM_CLASSES))
        mask = _shape_mask(class_index, h, w, rng)
        pixels = int(mask.sum())
        for _ in range(_PLACEMENT_TRIES):
            x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            box = (x0, y0, x0 + w, y0 + h)
            if any(_box_iou(box, other["drawn_box"]) > _MAX_BOX_IOU for other in placed):
                continue
            covered = owner[y0 : y0 + h, x0 : x0 + w][mask]
            covered_ids, counts = np.unique(covered[covered > 0], return_counts=True)
            if all(
                placed[i - 1]["visible"] - c >= (1 - _MAX_COVERED_FRACTION) * placed[i - 1]["pixels"]
                for i, c in zip(covered_ids.tolist(), counts.tolist())
            ):
                break
        else:
            continue  # no room for this object: the image gets fewer objects
        for i, c in zip(covered_ids.tolist(), counts.tolist()):
            placed[i - 1]["visible"] -= c
        # stand out from the background under the box and from every object that overlaps or touches it
        near = (x0 - 2, y0 - 2, x0 + w + 2, y0 + h + 2)
        avoid = [background[y0 : y0 + h, x0 : x0 + w].reshape(-1, 3).mean(axis=0)]
        avoid += [other["color"] for other in placed if _box_iou(near, other["drawn_box"]) > 0]
        color = _object_color(rng, avoid)
        image[y0 : y0 + h, x0 : x0 + w][mask] = color
        owner[y0 : y0 + h, x0 : x0 + w][mask] = len(placed) + 1
        placed.append(
            {"class_index": class_index, "drawn_box": box, "pixels": pixels, "visible": pixels, "color": color}
        )

    noise_std = rng.uniform(0, params.max_noise_std)
    if noise_std > 0:
        image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(noise_std)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)

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
    return image, objects


# ----------------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------------


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _write_split(params: SyntheticShapesParams, split: str, folder: str) -> int:
    """Write the images and ``<split>.json`` of one split into ``folder``; returns the json size in bytes."""
    import cv2

    os.makedirs(os.path.join(folder, split))
    images, annotations = [], []
    for index in range(params.num_images(split)):
        image, objects = render_synthetic_image(params, split, index)
        file_name = f"{index:06d}.{params.image_format}"
        encode_args = [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY] if params.image_format == "jpg" else []
        ok, encoded = cv2.imencode("." + params.image_format, image, encode_args)
        if not ok:
            raise RuntimeError(f"cv2 could not encode synthetic image {split}/{file_name}")
        with open(os.path.join(folder, split, file_name), "wb") as f:
            f.write(encoded.tobytes())
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "height": image.shape[0], "width": image.shape[1]})
        for obj in objects:
            annotations.append(dict(obj, id=len(annotations) + 1, image_id=image_id, iscrowd=0))
    coco = {
        "info": {
            "description": f"retinanet_plugin synthetic shapes, {split} split",
            "version": str(GENERATOR_VERSION),
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SYNTHETIC_SHAPES_CLASSES)
        ],
    }
    data = _json_bytes(coco)
    with open(os.path.join(folder, f"{split}.json"), "wb") as f:
        f.write(data)
    return len(data)


def _expected_manifest(params: SyntheticShapesParams) -> Dict[str, Any]:
    return {"generator": _GENERATOR_NAME, "version": GENERATOR_VERSION, "params": dataclasses.asdict(params)}


def _read_manifest(root: str) -> Optional[Dict[str, Any]]:
    try:
        with open(os.path.join(root, _MANIFEST), "rb") as f:
            manifest = json.loads(f.read().decode("utf-8"))
        return manifest if isinstance(manifest, dict) else None
    except (OSError, ValueError):
        return None


def is_synthetic_shapes_complete(root: str, params: SyntheticShapesParams) -> bool:
    """True when ``root`` holds a dataset made by this generator version with ``params``, with no file missing."""
    manifest = _read_manifest(root)
    if manifest is None:
        return False
    expected = _expected_manifest(params)
    if any(manifest.get(key) != value for key, value in expected.items()):
        return False
    json_sizes = manifest.get("json_bytes", {})
    for split in SPLITS:
        json_path = os.path.join(root, f"{split}.json")
        if not os.path.isfile(json_path) or os.path.getsize(json_path) != json_sizes.get(split):
            return False
        for index in range(params.num_images(split)):
            image_path = os.path.join(root, split, f"{index:06d}.{params.image_format}")
            try:
                if os.path.getsize(image_path) == 0:
                    return False
            except OSError:
                return False
    return True


@contextlib.contextmanager
def _exclusive_lock(root: str) -> Iterator[None]:
    """Serialise generators of the same ``root`` across processes (a lock file beside it; no-op without fcntl)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover  (not POSIX)
        yield
        return
    parent, name = os.path.split(os.path.abspath(root))
    with open(os.path.join(parent, f".{name}.lock"), "a") as lock_file:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


def _check_replaceable(root: str) -> None:
    """Refuse to delete a folder that this generator did not make."""
    manifest = _read_manifest(root)
    if manifest is not None and manifest.get("generator") == _GENERATOR_NAME:
        return
    foreign = sorted(set(os.listdir(root)) - _OWN_ENTRIES)
    if foreign:
        raise FileExistsError(
            f"{root} exists but does not look like a synthetic shapes dataset (it holds {foreign[:5]}); "
            "refusing to replace it. Pass another root, or remove the folder."
        )


def ensure_synthetic_shapes(root: Optional[str] = None, **params: Any) -> str:
    """Make sure ``root`` holds the synthetic dataset generated with ``params``; returns ``root``.

    A complete dataset with the same generator version and parameters is reused untouched. Otherwise (missing,
    partial, corrupted, other parameters) the dataset is generated into a temporary folder beside ``root``, which
    then replaces ``root`` by a rename, so that readers never see half-written files.

    Args:
        root: dataset folder; default :func:`default_synthetic_shapes_root`.
        params: fields of :class:`SyntheticShapesParams` (e.g. ``num_train=20, seed=3``).
    """
    settings = SyntheticShapesParams(**params)
    root = os.path.abspath(root if root is not None else default_synthetic_shapes_root())
    if is_synthetic_shapes_complete(root, settings):
        return root
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    with _exclusive_lock(root):
        if is_synthetic_shapes_complete(root, settings):  # another process made it while we waited
            return root
        if os.path.isdir(root):
            _check_replaceable(root)
        elif os.path.lexists(root):
            raise FileExistsError(f"{root} exists and is not a folder; cannot generate the synthetic dataset there")
        tmp = os.path.join(parent, f".{os.path.basename(root)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        old = None
        try:
            os.makedirs(tmp)
            logger.info(
                "Generating the synthetic shapes dataset (%d train + %d val images) in %s",
                settings.num_train,
                settings.num_val,
                root,
            )
            manifest = _expected_manifest(settings)
            manifest["json_bytes"] = {split: _write_split(settings, split, tmp) for split in SPLITS}
            with open(os.path.join(tmp, _MANIFEST), "wb") as f:
                f.write(_json_bytes(manifest))
            if os.path.isdir(root):
                old = os.path.join(parent, f".{os.path.basename(root)}.old-{uuid.uuid4().hex[:8]}")
                os.rename(root, old)
            os.rename(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    return root


# ----------------------------------------------------------------------------------------------------------------
# Detectron2 registration
# ----------------------------------------------------------------------------------------------------------------

# dataset name -> (root, params) of the current registration; read by ensure_registered_synthetic_files
_REGISTERED: Dict[str, Tuple[str, Dict[str, Any]]] = {}


def _load_split(name: str, split: str, root: str, params: Dict[str, Any]) -> List[Dict[str, Any]]:
    from detectron2.data.datasets import load_coco_json

    ensure_synthetic_shapes(root, **params)
    return load_coco_json(os.path.join(root, f"{split}.json"), os.path.join(root, split), name)


def register_synthetic_shapes(root: Optional[str] = None, **params: Any) -> Dict[str, str]:
    """Register ``retinanet_synthetic_shapes_{train,val}`` in Detectron2's catalogs; nothing is generated here.

    The DatasetCatalog functions generate the files on first use (:func:`ensure_synthetic_shapes`), then load
    them with ``load_coco_json``. Metadata: ``thing_classes``, ``json_file``, ``image_root``,
    ``evaluator_type="coco"`` (for COCOEvaluator), ``thing_dataset_id_to_contiguous_id``. Calling it again
    replaces the previous registration (e.g. to point at another root or use other ``params``).

    Args:
        root: dataset folder; default :func:`default_synthetic_shapes_root` (resolved now).
        params: fields of :class:`SyntheticShapesParams`.
    Returns:
        {split: dataset name}.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    SyntheticShapesParams(**params)  # validate now rather than at first use
    root = os.path.abspath(root if root is not None else default_synthetic_shapes_root())
    names = {"train": SYNTHETIC_SHAPES_TRAIN, "val": SYNTHETIC_SHAPES_VAL}
    for split, name in names.items():
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
        DatasetCatalog.register(
            name, lambda name=name, split=split, params=dict(params): _load_split(name, split, root, params)
        )
        MetadataCatalog.get(name).set(
            json_file=os.path.join(root, f"{split}.json"),
            image_root=os.path.join(root, split),
            evaluator_type="coco",
            thing_classes=list(SYNTHETIC_SHAPES_CLASSES),
            thing_dataset_id_to_contiguous_id={i + 1: i for i in range(SYNTHETIC_SHAPES_NUM_CLASSES)},
            thing_colors=[[220, 20, 60], [0, 120, 255], [0, 170, 30], [250, 170, 30], [160, 60, 220]],
        )
        _REGISTERED[name] = (root, dict(params))
    return names


def ensure_registered_synthetic_files(dataset_name: str) -> bool:
    """Generate the files of ``dataset_name`` if it is a registered synthetic dataset; False for other names."""
    if dataset_name not in _REGISTERED:
        return False
    root, params = _REGISTERED[dataset_name]
    ensure_synthetic_shapes(root, **params)
    return True
