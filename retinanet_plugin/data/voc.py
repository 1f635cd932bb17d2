"""Pascal VOC XML annotations as Detectron2 dataset dicts: VOC's own layout and flat LabelImg / CVAT
folders.

Layouts of ``folder``:

- VOC: ``Annotations/<stem>.xml``, ``JPEGImages/<file name>``, ``ImageSets/Main/<split>.txt`` (one
  stem per line). Without a split every file in ``Annotations/`` is used; with one, the stems its
  list names.
- Flat (what LabelImg and CVAT's "Pascal VOC" export write): images and same-stem ``.xml`` files
  side by side. An image without an ``.xml`` file is not used (it is not known to have no objects),
  and a log line counts such images; write an XML file without ``<object>`` for an image without
  objects.

Per XML file: the image is ``<filename>`` (in ``JPEGImages/`` for VOC's layout, beside the XML for a
flat folder), else the image with the XML's stem; ``<size><width>/<height>`` are the size of the
image as the annotation tool showed it (when they are missing or 0 the file's size is read, EXIF
orientation applied); each ``<object>`` has a ``<name>`` and a ``<bndbox>`` with ``xmin ymin xmax
ymax`` in VOC's 1-based pixel coordinates (a box ``xmin=1 .. xmax=W`` covers the whole width; it
becomes ``[0, W]`` in Detectron2's pixel-edge coordinates, as Detectron2's own VOC loader converts
it). ``<difficult>1</difficult>`` objects get ``iscrowd: 1``: the plugin's anchor labelling ignores
them (neither object nor background, ``MODEL.RETINANET_PLUGIN.CROWD_BOXES``) and COCO evaluation
ignores detections on them and does not count them as missed, as VOC's own evaluation does.

Errors name the XML file (and the object's position in it): unreadable XML, an object without a name
or with a coordinate that is not a number, an image file that is not there, a class name outside a
given class list.
"""

import dataclasses
import glob
import logging
import math
import os
import xml.etree.ElementTree as ET
from typing import Any, Dict, List, Optional, Sequence, Tuple

from PIL import Image

from detectron2.structures import BoxMode

from .image_quirks import exif_orientation, oriented_size, size_limit_message

__all__ = [
    "VocAnnotationError",
    "VocImage",
    "VocObject",
    "find_voc_images",
    "parse_voc_xml",
    "voc_class_names",
    "voc_dataset_dicts",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class VocAnnotationError(ValueError):
    """A Pascal VOC folder or XML file that cannot be read; the message names the file."""


@dataclasses.dataclass
class VocObject:
    name: str
    bbox_xyxy: Tuple[
        float, float, float, float
    ]  # Detectron2 pixel-edge coordinates (VOC's xmin/ymin minus 1)
    difficult: bool


@dataclasses.dataclass
class VocImage:
    xml_file: str
    file_name: Optional[str]  # <filename>
    width: Optional[int]  # None when the XML gives no usable size
    height: Optional[int]
    objects: List[VocObject]
    image_file: Optional[str] = None  # the image found for it (find_voc_images)


def _text(element: Optional[ET.Element]) -> Optional[str]:
    if element is None or element.text is None:
        return None
    return element.text.strip()


def _positive_int(value: Optional[str]) -> Optional[int]:
    """A whole number > 0 ("64", "64.0"), else None (missing, "0", "-5", "64.5", "nan", "inf")."""
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    if number is None or not math.isfinite(number) or number <= 0 or not number.is_integer():
        return None
    return int(number)


def _coordinate(box: ET.Element, tag: str, xml_file: str, position: int) -> float:
    value = _text(box.find(tag))
    if not value:
        raise VocAnnotationError(f"{xml_file}: object #{position} has no <{tag}> in its <bndbox>")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise VocAnnotationError(
            f"{xml_file}: object #{position} has <{tag}> {value!r} in its <bndbox>, not a number"
        ) from None


def parse_voc_xml(xml_file: str) -> VocImage:
    """One VOC XML file (its image is not looked for: :func:`find_voc_images` does)."""
    try:
        root = ET.parse(xml_file).getroot()
    except (ET.ParseError, LookupError) as e:  # LookupError: an encoding Python does not know
        raise VocAnnotationError(f"{xml_file} is not readable XML ({e})") from e
    except OSError as e:
        raise VocAnnotationError(f"{xml_file} cannot be read ({type(e).__name__}: {e})") from e
    if root.tag != "annotation":
        raise VocAnnotationError(
            f"{xml_file}: the root element is <{root.tag}>, not Pascal VOC's <annotation>"
        )
    size = root.find("size")
    width = _positive_int(_text(size.find("width"))) if size is not None else None
    height = _positive_int(_text(size.find("height"))) if size is not None else None
    objects = []
    for position, element in enumerate(root.findall("object")):
        name = _text(element.find("name"))
        if not name:
            raise VocAnnotationError(f"{xml_file}: object #{position} has no <name>")
        box = element.find("bndbox")
        if box is None:
            raise VocAnnotationError(f"{xml_file}: object #{position} ({name!r}) has no <bndbox>")
        xmin, ymin, xmax, ymax = (
            _coordinate(box, tag, xml_file, position) for tag in ("xmin", "ymin", "xmax", "ymax")
        )
        difficult = _text(element.find("difficult")) in ("1", "true", "True")
        objects.append(VocObject(name, (xmin - 1.0, ymin - 1.0, xmax, ymax), difficult))
    return VocImage(xml_file, _text(root.find("filename")), width, height, objects)


def _image_beside(folder: str, stem: str, file_name: Optional[str]) -> Optional[str]:
    """The image of an XML file: ``file_name`` in ``folder``, else a file with the XML's stem and an
    image suffix."""
    if file_name:
        candidate = os.path.join(folder, os.path.basename(file_name))
        if os.path.isfile(candidate):
            return candidate
    for suffix in IMAGE_SUFFIXES:
        for candidate in (
            os.path.join(folder, stem + suffix),
            os.path.join(folder, stem + suffix.upper()),
        ):
            if os.path.isfile(candidate):
                return candidate
    return None


def _split_stems(folder: str, split: str) -> List[str]:
    split_dir = os.path.join(folder, "ImageSets", "Main")
    path = os.path.join(split_dir, f"{split}.txt")
    if os.path.exists(path) and not os.path.isfile(path):
        raise VocAnnotationError(f"voc:{folder}:{split}: the split file {path} is not a file")
    if not os.path.isfile(path):
        available = (
            sorted(os.path.splitext(f)[0] for f in os.listdir(split_dir))
            if os.path.isdir(split_dir)
            else []
        )
        available = [
            a for a in available if "_" not in a
        ] or available  # VOC's per-class lists are aeroplane_train...
        raise VocAnnotationError(
            f"voc:{folder}:{split}: there is no split file {path}"
            + (
                f" (splits there: {', '.join(available[:12])})"
                if available
                else " (no ImageSets/Main folder)"
            )
        )
    try:
        with open(path, encoding="utf-8") as f:
            stems = [line.split()[0] for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise VocAnnotationError(
            f"voc:{folder}:{split}: the split file {path} cannot be read ({e})"
        ) from e
    if not stems:
        raise VocAnnotationError(f"voc:{folder}:{split}: the split file {path} names no image")
    return stems


def _with_images(folder: str, xml_files: Sequence[str], images_dir: str) -> List[VocImage]:
    images, unfound = [], []
    for xml_file in xml_files:
        image = parse_voc_xml(xml_file)
        stem = os.path.splitext(os.path.basename(xml_file))[0]
        image.image_file = _image_beside(images_dir, stem, image.file_name)
        if image.image_file is None:
            unfound.append(xml_file)
        images.append(image)
    _raise_for_unfound_images(folder, unfound, images_dir)
    return images


def find_voc_images(folder: str, split: Optional[str] = None) -> Tuple[List[VocImage], List[str]]:
    """The parsed XML files of a VOC folder, each with its image, in a stable order; and the images
    of a flat folder that have no XML file. Raises :class:`VocAnnotationError` naming what is
    missing or unreadable."""
    if not os.path.isdir(folder):
        raise VocAnnotationError(f"voc:{folder}: the folder does not exist")
    annotations_dir = os.path.join(folder, "Annotations")
    if os.path.isdir(annotations_dir):  # VOC's own layout
        if split is not None:
            xml_files = [
                os.path.join(annotations_dir, f"{stem}.xml") for stem in _split_stems(folder, split)
            ]
            missing = [x for x in xml_files if not os.path.isfile(x)]
            if missing:
                raise VocAnnotationError(
                    f"voc:{folder}:{split}: {len(missing)} annotation files listed in the split "
                    "are not there (or not files): "
                    + ", ".join(missing[:5])
                    + (" ..." if len(missing) > 5 else "")
                )
        else:
            xml_files = sorted(glob.glob(os.path.join(annotations_dir, "*.xml")))
            if not xml_files:
                raise VocAnnotationError(f"voc:{folder}: {annotations_dir} holds no .xml file")
        return _with_images(folder, xml_files, os.path.join(folder, "JPEGImages")), []
    if split is not None:
        raise VocAnnotationError(
            f"voc:{folder}:{split}: a split needs VOC's layout (Annotations/, ImageSets/Main/)"
        )
    xml_files = sorted(glob.glob(os.path.join(folder, "*.xml")))
    if not xml_files:
        raise VocAnnotationError(
            f"voc:{folder}: neither VOC's layout (an Annotations/ folder) nor .xml files beside "
            "the images"
        )
    images = _with_images(folder, xml_files, folder)
    used = {os.path.abspath(image.image_file) for image in images}
    unannotated = sorted(
        p
        for p in glob.glob(os.path.join(folder, "*"))
        if p.lower().endswith(IMAGE_SUFFIXES) and os.path.abspath(p) not in used
    )
    return images, unannotated


def _raise_for_unfound_images(folder: str, unfound: List[str], images_dir: str) -> None:
    if unfound:
        raise VocAnnotationError(
            f"voc:{folder}: {len(unfound)} annotation files have no image in {images_dir} (neither "
            "their <filename> "
            f"nor their stem with an image suffix): "
            + ", ".join(unfound[:5])
            + (" ..." if len(unfound) > 5 else "")
        )


def voc_class_names(images: Sequence[VocImage]) -> List[str]:
    """The object names of the parsed files, sorted."""
    return sorted({o.name for image in images for o in image.objects})


def _image_size(image: VocImage) -> Tuple[int, int]:
    """(height, width) of the image as the tool showed it: from the XML, else read from the file
    (oriented)."""
    if image.width and image.height:
        return image.height, image.width
    try:
        with Image.open(image.image_file) as pil:  # reads the header, not the pixels
            width, height = oriented_size(*pil.size, exif_orientation(pil))
    except Image.DecompressionBombError as e:
        raise VocAnnotationError(
            f"{image.xml_file} has no <size>: "
            + size_limit_message(f"its image {image.image_file}", e)
        ) from e
    except (OSError, SyntaxError, ValueError) as e:  # what PIL raises on a file it cannot open
        raise VocAnnotationError(
            f"{image.xml_file} has no <size> and its image {image.image_file} cannot be read ({e})"
        ) from e
    logger.info(
        f"{image.xml_file} has no usable <size>: the size {width}x{height} is read from "
        f"{image.image_file}"
    )
    return height, width


def voc_dataset_dicts(
    images: Sequence[VocImage], class_names: Sequence[str], source: str
) -> List[Dict[str, Any]]:
    """Detectron2 dataset dicts (image ids 1, 2, ... in the order of ``images``; boxes XYXY_ABS;
    category ids the positions in ``class_names``; difficult objects ``iscrowd: 1``)."""
    index = {name: i for i, name in enumerate(class_names)}
    dicts = []
    for image_id, image in enumerate(images, start=1):
        unknown = sorted({o.name for o in image.objects if o.name not in index})
        if unknown:
            raise VocAnnotationError(
                f"{image.xml_file} has objects named {unknown}, which are not among the classes of "
                f"{source} "
                f"({', '.join(class_names)})"
            )
        height, width = _image_size(image)
        dicts.append(
            {
                "file_name": image.image_file,
                "image_id": image_id,
                "height": height,
                "width": width,
                "annotations": [
                    {
                        "bbox": list(o.bbox_xyxy),
                        "bbox_mode": BoxMode.XYXY_ABS,
                        "category_id": index[o.name],
                        "iscrowd": int(o.difficult),
                    }
                    for o in image.objects
                ],
            }
        )
    return dicts
