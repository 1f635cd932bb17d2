"""What real image files do that a detector's reader must undo: EXIF orientation, 16-bit pixels,
huge sizes.

- EXIF orientation. A camera stores the pixels as the sensor read them and an EXIF tag saying how to
  turn them. Annotation tools differ: CVAT and browsers show the image turned (boxes are in the
  turned image), LabelImg shows the stored pixels (boxes in those). The boxes must meet the pixels
  the tool showed, so with ``"auto"`` the size that the annotations give (``height``/``width`` of
  the dataset dict: COCO's image entry, VOC's ``<size>``) decides: the turned size means the tool
  turned it, the stored size means it did not (a log line says so). Orientations that keep the size
  (mirror, 180 degrees) and square images cannot be told apart this way: they are turned, as
  Detectron2 does; ``DATASETS.EXIF_ORIENTATION`` "apply" or "ignore" decides for a whole dataset.
- 16-bit grayscale (PNG, TIFF: PIL modes I;16*, and I holding 0..65535): scaled to 8 bits by keeping
  the high byte (value >> 8, so 65535 -> 255), as PIL already does for 16-bit colour files and
  OpenCV for both, with a log line. Float images (mode F) stay an error: their range is not known.
- Huge images: PIL warns about images over ``Image.MAX_IMAGE_PIXELS`` and refuses those over twice
  as many (a guard against decompression bombs); ``DATASETS.MAX_IMAGE_PIXELS`` sets that limit (0:
  none), and the error names the image, its size and the key.
"""

import logging
from collections import defaultdict
from typing import Dict, Optional, Tuple

import numpy as np
from PIL import Image

__all__ = [
    "EXIF_ORIENTATION_POLICIES",
    "SIXTEEN_BIT_MODES",
    "apply_image_size_limit",
    "exif_orientation",
    "orient_as_annotated",
    "oriented_size",
    "sixteen_bit_to_8bit",
    "size_limit_message",
]

logger = logging.getLogger(__name__)

EXIF_ORIENTATION_POLICIES = ("auto", "apply", "ignore")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_EXIF_ORIENTATION_TAG = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_MAX_LOGGED = 10
_logged: Dict[str, int] = defaultdict(int)


def _log_limited(kind: str, message: str) -> None:
    count = _logged[kind]
    _logged[kind] = count + 1
    if count < _MAX_LOGGED:
        logger.warning(
            message
            + ("; further such images without a log line" if count + 1 == _MAX_LOGGED else "")
        )


def exif_orientation(image: Image.Image) -> int:
    """The image's EXIF orientation, 1 (as stored) when it has none, an unknown one or a corrupt
    EXIF block."""
    try:
        value = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - a corrupt EXIF block: the pixels are used as stored
        return 1
    return value if value in _TRANSPOSE else 1


def oriented_size(width: int, height: int, orientation: int) -> Tuple[int, int]:
    """(width, height) after EXIF ``orientation``: orientations 5-8 swap the sides."""
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def orient_as_annotated(
    image: Image.Image,
    expected_size: Optional[Tuple[int, int]] = None,
    policy: str = "auto",
    where: str = "image",
) -> Image.Image:
    """The image turned by its EXIF orientation or not, as the module docstring says.

    Args:
        expected_size: (height, width) that the annotations give, or None (then "auto" turns it, as
            Detectron2 does).
        policy: "auto", "apply" or "ignore".
    """
    if policy not in EXIF_ORIENTATION_POLICIES:
        raise ValueError(
            f"DATASETS.EXIF_ORIENTATION must be one of {EXIF_ORIENTATION_POLICIES}, got {policy!r}"
        )
    orientation = exif_orientation(image)
    if orientation == 1 or policy == "ignore":
        return image
    if policy == "auto" and expected_size is not None:
        width, height = image.size
        expected_height, expected_width = (int(v) for v in expected_size)
        turned = oriented_size(width, height, orientation)
        if (expected_width, expected_height) != turned and (expected_width, expected_height) == (
            width,
            height,
        ):
            _log_limited(
                "exif_raw",
                f"{where} has EXIF orientation {orientation}, but its annotations give the size of "
                "the stored pixels "
                f"({width}x{height}), so the annotation tool showed them unturned: the orientation "
                "is not applied",
            )
            return image
    return image.transpose(_TRANSPOSE[orientation])


def sixteen_bit_to_8bit(image: Image.Image, where: str = "image") -> Image.Image:
    """A 16-bit grayscale image (PIL modes I;16*, or I with values 0..65535) as an 8-bit "L" image,
    value >> 8."""
    pixels = np.asarray(image)
    if image.mode == "I" and pixels.size and (int(pixels.min()) < 0 or int(pixels.max()) > 65535):
        raise ValueError(
            f"{where} has 32-bit integer pixels from {int(pixels.min())} to {int(pixels.max())}, "
            "outside 16 bits: "
            "convert the file to 8 bits per channel"
        )
    peak = int(pixels.max()) if pixels.size else 0
    _log_limited(
        "sixteen_bit",
        f"{where} has 16-bit pixels ({image.mode}, largest value {peak}): scaled to 8 bits (value "
        ">> 8)"
        + (
            f"; it uses only {peak.bit_length()} of the 16 bits and looks dark"
            if 0 < peak < 4096
            else ""
        ),
    )
    return Image.fromarray((pixels.astype(np.uint32) >> 8).astype(np.uint8), "L")


def apply_image_size_limit(cfg) -> Optional[int]:
    """Set PIL's ``Image.MAX_IMAGE_PIXELS`` (process-wide, as PIL has it) from
    ``DATASETS.MAX_IMAGE_PIXELS`` (0: no limit); returns the value set, or None when the config has
    no such key."""
    limit = cfg.DATASETS.get("MAX_IMAGE_PIXELS", None)
    if limit is None:
        return None
    if limit < 0:
        raise ValueError(f"DATASETS.MAX_IMAGE_PIXELS must be >= 0 (0: no limit), got {limit}")
    Image.MAX_IMAGE_PIXELS = int(limit) if limit > 0 else None
    return int(limit)


def size_limit_message(where: str, error: Exception) -> str:
    """The error for an image over PIL's size limit, naming the limit and the key that sets it."""
    limit = Image.MAX_IMAGE_PIXELS
    return (
        f"{where} is larger than the images PIL reads by default ({error}); PIL's limit, "
        "Image.MAX_IMAGE_PIXELS = "
        f"{limit} (refused above twice that), guards against decompression bombs: for a trusted "
        "large image, raise "
        "DATASETS.MAX_IMAGE_PIXELS (0: no limit)"
    )
