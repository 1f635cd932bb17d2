"""Reading an image file into the model's 8-bit ``INPUT.FORMAT``, with errors that name the file and
image id.

Like Detectron2's ``read_image``, plus: a missing, corrupt, truncated or over-size file, or a float
image, is an error naming the file and the image id (:class:`UnreadableImageError`); grayscale,
palette, RGBA, CMYK... images are converted to ``INPUT.FORMAT`` with a log line (an alpha channel is
dropped, not composited); EXIF orientation and 16-bit pixels are handled by :mod:`.image_quirks`.
"""

import logging
from collections import defaultdict
from typing import Any, Dict, Optional, Tuple

import numpy as np
from PIL import Image

from detectron2.data import detection_utils as utils
from detectron2.utils.file_io import PathManager

from .image_quirks import (
    SIXTEEN_BIT_MODES,
    orient_as_annotated,
    sixteen_bit_to_8bit,
    size_limit_message,
)

__all__ = ["UnreadableImageError", "read_image_checked"]

logger = logging.getLogger(__name__)

_FLOAT_MODES = ("F",)
# PIL mode -> conversions logged by this process
_conversions_logged: Dict[str, int] = defaultdict(int)
_MAX_CONVERSIONS_LOGGED = 10


class UnreadableImageError(OSError):
    """An image file that exists but cannot be decoded into an 8-bit image."""


def _pil_mode_for(image_format: Optional[str]) -> Optional[str]:
    if image_format in ("BGR", "RGB", "YUV-BT.601"):
        return "RGB"
    return image_format


def _log_conversion(where: str, mode: str, image_format: str) -> None:
    count = _conversions_logged[mode]
    _conversions_logged[mode] = count + 1
    if count >= _MAX_CONVERSIONS_LOGGED:
        return
    message = f"{where} is a {mode} image: converted to {image_format} (INPUT.FORMAT)"
    if mode.upper().endswith("A"):
        message += "; its alpha channel is dropped, not composited"
    if count + 1 == _MAX_CONVERSIONS_LOGGED:
        message += f"; further {mode} images are converted without a log line"
    logger.warning(message)


def _decoded(file_name: str, where: str) -> Image.Image:
    """The file's image, decoded now (a truncated file fails here rather than later)."""
    try:
        with PathManager.open(file_name, "rb") as f:
            image = Image.open(f)
            image.load()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{where} does not exist") from e
    except Image.DecompressionBombError as e:
        raise UnreadableImageError(size_limit_message(where, e)) from e
    except (OSError, SyntaxError, ValueError) as e:
        raise UnreadableImageError(
            f"{where} cannot be decoded ({type(e).__name__}: {e}); replace the file or remove the "
            "image from the dataset"
        ) from e
    return image


def read_image_checked(
    file_name: str,
    image_format: Optional[str] = "BGR",
    image_id: Any = None,
    *,
    expected_size: Optional[Tuple[int, int]] = None,
    exif_orientation: str = "auto",
) -> np.ndarray:
    """Read an image like Detectron2's ``read_image`` (EXIF orientation applied), with clear errors.

    Args:
        file_name: path (or PathManager URI) of the image.
        image_format: ``INPUT.FORMAT`` ("BGR", "RGB", "L", ...).
        image_id: named in errors and log lines.
        expected_size: (height, width) the annotations give; with ``exif_orientation`` "auto" it
            tells whether the annotation tool showed the image turned by its EXIF orientation
            (``image_quirks.orient_as_annotated``).
        exif_orientation: "auto", "apply" (Detectron2's behaviour) or "ignore".
    Returns:
        (H, W, C) uint8 array in ``image_format``; 16-bit grayscale is scaled to 8 bits.
    Raises:
        FileNotFoundError: the file does not exist (naming it and the image id).
        UnreadableImageError: it cannot be decoded (corrupt, truncated, not an image, over PIL's
            size limit) or is a float image.
    """
    where = f"image file {file_name}" + (f" (image id {image_id})" if image_id is not None else "")
    image = _decoded(file_name, where)
    image = orient_as_annotated(image, expected_size, exif_orientation, where)
    if image.mode in _FLOAT_MODES:
        raise UnreadableImageError(
            f"{where} has {image.mode!r} pixels (floating point) of unknown range; the model takes "
            "8-bit images: convert the file to 8 bits per channel"
        )
    if image.mode in SIXTEEN_BIT_MODES:
        try:
            image = sixteen_bit_to_8bit(image, where)
        except ValueError as e:
            raise UnreadableImageError(str(e)) from e
    target_mode = _pil_mode_for(image_format)
    if target_mode is not None and image.mode != target_mode:
        _log_conversion(where, image.mode, image_format)
    return utils.convert_PIL_to_numpy(image, image_format)
