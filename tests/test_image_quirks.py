"""Real-world image files: EXIF orientation (boxes follow the pixels the annotation tool showed),
16-bit grayscale and colour PNG/TIFF (scaled, not rejected), palette PNGs with transparency, images
over PIL's size limit, and boxes on the image border.

Grayscale, plain palette and RGBA conversion and float images are in tests/test_bad_input.py.
"""

import logging

import numpy as np
import pytest
import torch
from detectron2.data import transforms as T
from detectron2.structures import BoxMode
from PIL import Image

from conftest import make_small_cfg
from retinanet_plugin.data import image_quirks
from retinanet_plugin.data import CheckedDatasetMapper, UnreadableImageError, validate_dataset_dicts

# A 40 x 60 (h x w) stored image, black, with a white 10 x 20 block at rows 5..15, columns 35..55.
STORED_HW = (40, 60)


def _stored_pixels():
    pixels = np.zeros((*STORED_HW, 3), dtype=np.uint8)
    pixels[5:15, 35:55] = 255
    return pixels


def _jpeg_with_orientation(path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(_stored_pixels()).save(path, format="JPEG", quality=100, exif=exif.tobytes())


def _mapper(**kwargs):
    kwargs.setdefault("augmentations", [])
    return CheckedDatasetMapper(is_train=True, image_format="BGR", **kwargs)


def _record(path, size, boxes, image_id=1):
    return {
        "file_name": str(path),
        "image_id": image_id,
        "height": size[0],
        "width": size[1],
        "annotations": [
            {"bbox": b, "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "iscrowd": 0}
            for b in boxes
        ],
    }


def _mean_in_box(image, box):
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    return float(image[:, y0:y1, x0:x1].float().mean())


@pytest.fixture(autouse=True)
def fresh_log_counters(monkeypatch):
    monkeypatch.setattr(image_quirks, "_logged", image_quirks.defaultdict(int))


def test_exif_rotation_turns_the_image_when_the_annotations_saw_it_turned(tmp_path):
    """Orientation 6 (rotate 90 clockwise to view): a tool that applied it saw a 60 x 40 (h x w)
    image with the block at rows 35..55, columns 25..35; the boxes are there."""
    path = tmp_path / "rot.jpg"
    _jpeg_with_orientation(path, 6)
    block_turned = [25, 35, 35, 55]
    out = _mapper()(_record(path, (60, 40), [block_turned]))
    assert tuple(out["image"].shape[1:]) == (60, 40)
    assert _mean_in_box(out["image"], block_turned) > 240  # the box lies on the block's pixels
    assert out["instances"].gt_boxes.tensor.tolist() == [block_turned]


def test_exif_rotation_is_not_applied_when_the_annotations_saw_the_stored_pixels(tmp_path, caplog):
    path = tmp_path / "rot.jpg"
    _jpeg_with_orientation(path, 6)
    block_stored = [35, 5, 55, 15]
    with caplog.at_level(logging.WARNING, logger="retinanet_plugin"):
        out = _mapper()(_record(path, STORED_HW, [block_stored], image_id=7))
    assert tuple(out["image"].shape[1:]) == STORED_HW
    assert _mean_in_box(out["image"], block_stored) > 240
    assert (
        f"{path} (image id 7) has EXIF orientation 6, but its annotations give the size of the "
        "stored pixels" in caplog.text
    )
    # Detectron2's rule (always turn) would make this image 60 x 40 and fail the size check
    with pytest.raises(Exception, match="Mismatched image shape"):
        _mapper(exif_orientation="apply")(_record(path, STORED_HW, [block_stored]))


def test_exif_orientations_that_keep_the_size_are_applied_unless_told_otherwise(tmp_path):
    path = tmp_path / "upside_down.jpg"
    _jpeg_with_orientation(path, 3)  # rotate 180: block at rows 25..35, columns 5..25 when viewed
    block_turned, block_stored = [5, 25, 25, 35], [35, 5, 55, 15]
    out = _mapper()(_record(path, STORED_HW, [block_turned]))
    assert (
        _mean_in_box(out["image"], block_turned) > 240
        and _mean_in_box(out["image"], block_stored) < 15
    )
    raw = _mapper(exif_orientation="ignore")(_record(path, STORED_HW, [block_stored]))
    assert _mean_in_box(raw["image"], block_stored) > 240


def test_sixteen_bit_grayscale_png_and_tiff_are_scaled_not_rejected(tmp_path, caplog):
    values = np.array([[0, 255, 256, 4095], [32768, 40000, 65280, 65535]], dtype=np.uint16)
    expected = (values >> 8).astype(np.uint8)
    for name in ("deep.png", "deep.tif"):
        Image.fromarray(values).save(tmp_path / name)
        assert Image.open(tmp_path / name).mode.startswith("I;16")
        with caplog.at_level(logging.WARNING, logger="retinanet_plugin"):
            image = _mapper()(_record(tmp_path / name, (2, 4), []))["image"]
        assert image.dtype == torch.uint8 and torch.equal(image[0], torch.from_numpy(expected))
        assert torch.equal(image[0], image[2])  # gray -> 3 equal channels
    assert (
        "has 16-bit pixels (I;16, largest value 65535): scaled to 8 bits (value >> 8)"
        in caplog.text
    )


def test_a_dark_twelve_bit_image_is_scaled_and_said_to_be_dark(tmp_path, caplog):
    Image.fromarray(np.full((4, 4), 4000, dtype=np.uint16)).save(tmp_path / "twelve.png")
    with caplog.at_level(logging.WARNING, logger="retinanet_plugin"):
        image = _mapper()(_record(tmp_path / "twelve.png", (4, 4), []))["image"]
    assert int(image.max()) == 4000 >> 8
    assert "uses only 12 of the 16 bits and looks dark" in caplog.text


def test_sixteen_bit_colour_png_is_read_as_8_bit(tmp_path):
    import cv2

    rgb16 = np.zeros((3, 5, 3), dtype=np.uint16)
    rgb16[..., 0], rgb16[..., 1], rgb16[..., 2] = 65535, 32768, 1000  # R, G, B
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb16[..., ::-1])  # cv2 writes BGR
    image = _mapper()(_record(tmp_path / "rgb16.png", (3, 5), []))["image"]
    assert image[:, 0, 0].tolist() == [1000 >> 8, 32768 >> 8, 255]  # BGR


def test_out_of_range_32_bit_integer_images_are_named():
    image = Image.fromarray(np.array([[0, 70000]], dtype=np.int32), "I")
    with pytest.raises(
        ValueError, match=r"x\.tif has 32-bit integer pixels from 0 to 70000, outside 16 bits"
    ):
        image_quirks.sixteen_bit_to_8bit(image, "x.tif")


def test_palette_png_with_transparency_becomes_its_colours(tmp_path):
    palette = Image.new("P", (6, 4))
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette.putpixel((0, 0), 1)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "pal.png", transparency=0)
    image = _mapper()(_record(tmp_path / "pal.png", (4, 6), []))["image"]
    assert image[:, 0, 0].tolist() == [50, 100, 200] and image[:, 1, 1].tolist() == [
        30,
        20,
        10,
    ]  # BGR


@pytest.fixture
def restore_pil_limit():
    limit = Image.MAX_IMAGE_PIXELS
    yield
    Image.MAX_IMAGE_PIXELS = limit


def test_images_over_the_size_limit_are_named_and_the_limit_is_a_config_key(
    tmp_path, restore_pil_limit
):
    Image.fromarray(np.zeros((50, 60, 3), dtype=np.uint8)).save(tmp_path / "huge.png")
    cfg = make_small_cfg()
    assert cfg.DATASETS.MAX_IMAGE_PIXELS == 89478485  # PIL's default
    cfg.DATASETS.MAX_IMAGE_PIXELS = 1000  # 3000 pixels > twice the limit
    image_quirks.apply_image_size_limit(cfg)
    with pytest.raises(
        UnreadableImageError,
        match=r"huge\.png \(image id 1\) is larger than the images PIL reads"
        r".*Image.MAX_IMAGE_PIXELS = 1000.*DATASETS.MAX_IMAGE_PIXELS",
    ):
        _mapper()(_record(tmp_path / "huge.png", (50, 60), []))
    cfg.DATASETS.MAX_IMAGE_PIXELS = 0  # no limit
    image_quirks.apply_image_size_limit(cfg)
    assert tuple(_mapper()(_record(tmp_path / "huge.png", (50, 60), []))["image"].shape) == (
        3,
        50,
        60,
    )


def test_boxes_on_the_border_survive_checks_flips_and_resizing(tmp_path):
    h, w = 48, 64
    Image.fromarray(np.full((h, w, 3), 70, dtype=np.uint8)).save(tmp_path / "border.png")
    boxes = [
        [0, 0, w, h],
        [w - 10, h - 8, w, h],
        [0, 10, 12, 30],
    ]  # whole image, bottom-right corner, left edge
    record = _record(tmp_path / "border.png", (h, w), boxes)
    checked, report = validate_dataset_dicts([record], "border", num_classes=1)
    # nothing to repair
    assert checked == [record] and not report.clipped and not report.dropped_outside
    flip = _mapper(augmentations=[T.RandomFlip(prob=1.0, horizontal=True)])
    out = flip(record)["instances"].gt_boxes.tensor.tolist()
    assert out == [[0, 0, w, h], [0, h - 8, 10, h], [w - 12, 10, w, 30]]
    resized = _mapper(augmentations=[T.Resize((96, 128))])(record)[
        "instances"
    ].gt_boxes.tensor.tolist()
    assert resized == [[0, 0, 128, 96], [108, 80, 128, 96], [0, 20, 24, 60]]
