"""Seeded, time-bounded fuzzing of what a user hands the plugin: COCO json files, images and
checkpoints.

Every case is a randomly corrupted copy of a valid input, fed through the path the trainer uses:

- COCO json: ``load_checked_dataset_dicts`` (the train and test loaders' dataset check), then the
  trainer's ``CheckedDatasetMapper`` on every image it accepts, then a training forward of a small
  RetinaNet on them;
- images: ``CheckedDatasetMapper`` (decoding, EXIF orientation, mode conversion, size check,
  augmentations), then a training forward;
- checkpoints (``.pkl`` and ``.pth``): ``CheckedDetectionCheckpointer.load`` (``MODEL.WEIGHTS`` of
  ``train_net.py``, ``tools/predict.py``, ``tools/export_model.py``), ``--resume`` from a damaged
  last checkpoint, and ``tools/convert_detectron2_retinanet.py``.

A case passes when it ends in one of the plugin's errors whose message names the file (for a
class-count mismatch: the dataset and ``MODEL.RETINANET.NUM_CLASSES``), or when the input is
accepted, possibly repaired with a log line, and what comes out is sound (boxes inside their image,
finite losses, finite weights). It fails on any other exception (a traceback from inside Detectron2,
pycocotools, PIL, torch or the model) and on a case that runs past its time limit. Pascal VOC XML
datasets are fuzzed in ``test_fuzz_voc.py``; the seeding, budgets and time limits are
``fuzzing.py``'s.
"""

import collections
import contextlib
import copy
import importlib
import importlib.util
import io
import json
import logging
import os
import pickle
import struct
import uuid
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.data.detection_utils import SizeMismatchError
from detectron2.modeling import build_model
from detectron2.structures import BoxMode

from fuzzing import (  # helpers beside the tests
    IMAGE_SIZE,
    NUM_CLASSES,
    Fuzzer,
    assert_names,
    fuzz_cfg,
    image_pixels,
    junk,
    one_thread,
    train_forward,
)
from script_module import load_script
from retinanet_plugin.data import (
    CheckedDatasetMapper,
    DatasetValidationError,
    UnreadableImageError,
    load_checked_dataset_dicts,
)
from retinanet_plugin.checkpoint import (
    CheckedDetectionCheckpointer,
    CheckpointMismatchError,
    CheckpointReadError,
)

TOOL = Path(__file__).resolve().parents[1] / "tools" / "convert_detectron2_retinanet.py"

CASES = {"coco_json": 200, "image": 150, "checkpoint": 150}  # 500 in all
BUDGET_S = {
    "coco_json": 16.0,
    "image": 9.0,
    "checkpoint": 9.0,
}  # CPU seconds per family; the whole file stays well under 60 s on a quiet machine


convert_tool = load_script("tools/convert_detectron2_retinanet.py")


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def model_and_cfg(tmp_path_factory):
    cfg = fuzz_cfg(tmp_path_factory.mktemp("fuzz_out"))
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    return model, cfg


# ==================================================================================================
# COCO json
# ==================================================================================================


@pytest.fixture(scope="module")
def coco_base(tmp_path_factory):
    """A valid COCO dataset of 4 small images: (json dict, image folder)."""
    root = tmp_path_factory.mktemp("fuzz_coco")
    (root / "images").mkdir()
    images, annotations = [], []
    for i in range(4):
        Image.fromarray(image_pixels(i)).save(root / "images" / f"{i}.png")
        images.append(
            {"id": i + 1, "file_name": f"{i}.png", "height": IMAGE_SIZE[0], "width": IMAGE_SIZE[1]}
        )
        for j in range(2):
            annotations.append(
                {
                    "id": 10 * (i + 1) + j,
                    "image_id": i + 1,
                    "category_id": 1 + (i + j) % 2,
                    "bbox": [12.0 + 3 * j, 10.0, 28.0, 20.0],
                    "area": 560.0,
                    "iscrowd": 0,
                    "segmentation": [[12, 10, 40, 10, 40, 30, 12, 30]],
                }
            )
    (root / "images" / "not_an_image.png").write_bytes(b"plain text, not a png" * 10)
    (root / "images" / "a_folder.png").mkdir()
    coco = {
        "info": {"description": "fuzz"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    return coco, root / "images"


def _mutate_coco_structure(coco, rng):
    """1-3 structural corruptions of a COCO dict, in place; returns what was done."""
    done = []
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(
            [
                "top",
                "image",
                "image",
                "annotation",
                "annotation",
                "annotation",
                "bbox",
                "bbox",
                "category",
                "duplicate",
                "many",
            ]
        )
        if kind == "top":
            key = rng.choice(["images", "annotations", "categories"])
            if rng.random() < 0.5:
                coco.pop(key, None)
                done.append(f"removed '{key}'")
            else:
                coco[key] = junk(rng)
                done.append(f"'{key}' = {coco[key]!r}")
        elif kind == "image" and isinstance(coco.get("images"), list) and coco["images"]:
            image = rng.choice(coco["images"])
            key = rng.choice(["id", "file_name", "height", "width"])
            if not isinstance(image, dict):
                continue
            choice = rng.random()
            if choice < 0.25:
                image.pop(key, None)
                done.append(f"image: removed '{key}'")
            elif key == "file_name" and choice < 0.7:
                image[key] = rng.choice(
                    [
                        "missing.png",
                        "not_an_image.png",
                        "a_folder.png",
                        "",
                        "../images/0.png",
                        "/nonexistent/x.png",
                        "1.png",
                    ]
                )
                done.append(f"image: file_name {image[key]!r}")
            elif key in ("height", "width") and choice < 0.7:
                image[key] = rng.choice([1, 2, 47, 49, 64, 480, 10**6, 48.0, -48])
                done.append(f"image: {key} {image[key]!r}")
            else:
                image[key] = junk(rng)
                done.append(f"image: {key} {image[key]!r}")
        elif (
            kind == "annotation"
            and isinstance(coco.get("annotations"), list)
            and coco["annotations"]
        ):
            annotation = rng.choice(coco["annotations"])
            if not isinstance(annotation, dict):
                continue
            key = rng.choice(
                [
                    "id",
                    "image_id",
                    "category_id",
                    "category_id",
                    "iscrowd",
                    "area",
                    "segmentation",
                    "keypoints",
                    "ignore",
                ]
            )
            if rng.random() < 0.25:
                annotation.pop(key, None)
                done.append(f"annotation: removed '{key}'")
            elif key == "category_id" and rng.random() < 0.5:
                annotation[key] = rng.choice([0, 3, 99, -1, 1.0, "1", True])
                done.append(f"annotation: category_id {annotation[key]!r}")
            elif key == "segmentation" and rng.random() < 0.6:
                annotation[key] = rng.choice(
                    [
                        [[1, 2, 3]],
                        [],
                        {"counts": [1, 2], "size": [48, 64]},
                        {"counts": "xyz", "size": [48, 64]},
                        {"size": [48, 64]},
                        "polygon",
                        [[1, 2, 3, 4, 5, 6, 7]],
                        {"counts": [4000], "size": [48, 64]},
                    ]
                )
                done.append(f"annotation: segmentation {annotation[key]!r}")
            else:
                annotation[key] = junk(rng)
                done.append(f"annotation: {key} {annotation[key]!r}")
        elif kind == "bbox" and isinstance(coco.get("annotations"), list) and coco["annotations"]:
            annotation = rng.choice(coco["annotations"])
            if not isinstance(annotation, dict):
                continue
            annotation["bbox"] = rng.choice(
                [
                    [],
                    [1, 2, 3],
                    [1, 2, 3, 4, 5],
                    [float("nan"), 1, 2, 3],
                    [1, 1, float("inf"), 3],
                    ["1", "2", "3", "4"],
                    [-10, -10, 20, 20],
                    [60, 40, 30, 30],
                    [100, 100, 5, 5],
                    [5, 5, 0, 10],
                    [5, 5, -4, 10],
                    [0, 0, 64, 48],
                    [1e30, 1e30, 1e30, 1e30],
                    [[1, 2], [3, 4]],
                    "1 2 3 4",
                    None,
                    [0.1, 0.1, 0.2, 0.2],
                    [True, 1, 2, 3],
                    [0, 0, 1e-9, 1e-9],
                    [-1e308, -1e308, 1e308, 1e308],
                ]
            )
            done.append(f"bbox {annotation['bbox']!r}")
        elif kind == "category" and isinstance(coco.get("categories"), list):
            choice = rng.random()
            if choice < 0.25:
                coco["categories"].append({"id": 3, "name": "c"})
                done.append("added category 3")
            elif choice < 0.45 and coco["categories"]:
                coco["categories"].pop(rng.randrange(len(coco["categories"])))
                done.append("removed a category")
            elif choice < 0.6 and coco["categories"] and isinstance(coco["categories"][0], dict):
                coco["categories"][0].pop(rng.choice(["id", "name"]), None)
                done.append("category without id or name")
            elif coco["categories"] and isinstance(coco["categories"][-1], dict):
                coco["categories"][-1]["id"] = rng.choice([1, 0, -1, "2", None, 2.0, 2**40])
                done.append(f"category id {coco['categories'][-1]['id']!r}")
        elif kind == "duplicate":
            key = rng.choice(["images", "annotations"])
            if isinstance(coco.get(key), list) and coco[key]:
                coco[key].append(copy.deepcopy(rng.choice(coco[key])))
                done.append(f"duplicated an entry of '{key}'")
        elif kind == "many" and isinstance(coco.get("annotations"), list):
            count = rng.choice([50, 300])
            for k in range(count):
                x, y = rng.uniform(-20, 70), rng.uniform(-20, 50)
                coco["annotations"].append(
                    {
                        "id": 10**6 + k,
                        "image_id": 1,
                        "category_id": rng.choice([1, 2]),
                        "bbox": [x, y, rng.uniform(-5, 40), rng.uniform(-5, 40)],
                        "iscrowd": 0,
                    }
                )
            done.append(f"{count} more annotations on image 1")
    return "; ".join(done) or "no change"


def _mutate_coco_text(text, rng):
    kind = rng.choice(["truncate", "flip", "delete", "insert", "replace", "deep", "bytes"])
    if kind == "truncate":
        cut = rng.randrange(len(text))
        return text[:cut].encode(), f"truncated at {cut}"
    if kind == "flip":
        chars = list(text)
        for _ in range(rng.randint(1, 8)):
            chars[rng.randrange(len(chars))] = rng.choice('{}[]":,0123456789-eE.aZ \n\\')
        return "".join(chars).encode(), "flipped characters"
    if kind == "delete":
        a = rng.randrange(len(text))
        b = min(len(text), a + rng.randint(1, 40))
        return (text[:a] + text[b:]).encode(), f"deleted [{a}:{b}]"
    if kind == "insert":
        a = rng.randrange(len(text))
        return (
            text[:a] + rng.choice([",", "]", "}", "null", "NaN", '"x"', "\x00"]) + text[a:]
        ).encode(), "inserted"
    if kind == "replace":
        replacement = rng.choice(
            [
                "",
                "null",
                "[]",
                "{}",
                "0",
                '"text"',
                "[1, 2, 3]",
                '{"images": []}',
                '{"images": [], "annotations": [], "categories": []}',
            ]
        )
        return replacement.encode(), f"replaced by {replacement!r}"
    if kind == "deep":
        depth = rng.choice([1000, 100000])
        return ('{"images": ' + "[" * depth + "]" * depth + "}").encode(), f"nested {depth} deep"
    return b"\xff\xfe" + os.urandom(rng.randint(1, 200)), "random bytes"


def test_fuzz_coco_json(tmp_path, coco_base, model_and_cfg, capsys, caplog):
    coco, image_root = coco_base
    model, cfg = model_and_cfg
    train_mapper = CheckedDatasetMapper(cfg, is_train=True)
    test_mapper = CheckedDatasetMapper(cfg, is_train=False)
    caplog.set_level(logging.WARNING, logger="retinanet_plugin")

    def case(rng, index, info):
        json_file = tmp_path / f"case{index}.json"
        if rng.random() < 0.3:
            data, info["description"] = _mutate_coco_text(json.dumps(coco), rng)
            json_file.write_bytes(data)
        else:
            mutated = copy.deepcopy(coco)
            info["description"] = _mutate_coco_structure(mutated, rng)
            json_file.write_text(json.dumps(mutated))
        name = f"fuzz_{uuid.uuid4().hex[:8]}"
        register_coco_instances(name, {}, str(json_file), str(image_root))
        cfg.defrost()
        cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (name,), (name,)
        caplog.clear()
        try:
            try:
                dicts = load_checked_dataset_dicts(cfg, name, is_train=True)
                test_dicts = load_checked_dataset_dicts(cfg, name, is_train=False)
            except (DatasetValidationError, FileNotFoundError) as e:
                assert_names(e, json_file, image_root)
                return f"error: {type(e).__name__}"
            except ValueError as e:  # the class count check: names the dataset and the config key
                if not str(e).startswith("MODEL.RETINANET.NUM_CLASSES is"):
                    raise
                assert f"dataset '{name}'" in str(e), str(e)
                return "error: NUM_CLASSES"
            for record in dicts:
                height, width = record["height"], record["width"]
                for a in record["annotations"]:
                    assert 0 <= a["category_id"] < NUM_CLASSES, (
                        f"accepted category {a['category_id']!r}"
                    )
                    x0, y0, w, h = (float(v) for v in a["bbox"])
                    assert a["bbox_mode"] == BoxMode.XYWH_ABS
                    assert w > 0 and h > 0 and x0 >= 0 and y0 >= 0, f"accepted box {a['bbox']}"
                    assert x0 + w <= width + 1e-3 and y0 + h <= height + 1e-3, (
                        f"accepted box {a['bbox']} outside"
                    )
            try:
                batch = [train_mapper(r) for r in dicts]
                for r in test_dicts:
                    test_mapper(r)
            except (UnreadableImageError, FileNotFoundError, SizeMismatchError) as e:
                assert_names(e, image_root)
                return f"error when read: {type(e).__name__}"
            if batch:
                train_forward(model, batch[:4])
            repaired = any(
                r.levelno >= logging.WARNING and r.name.startswith("retinanet_plugin")
                for r in caplog.records
            )
            return "accepted, repairs logged" if repaired else "accepted"
        finally:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)

    fuzzer = Fuzzer("coco_json", CASES["coco_json"], BUDGET_S["coco_json"])
    fuzzer.run(case)
    fuzzer.report(capsys)


# ==================================================================================================
# Images
# ==================================================================================================


def _png_chunk(kind, data):
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _with_png_header(png, rng):
    """The PNG with its IHDR rewritten (size, bit depth, colour type...), CRC recomputed so the
    chunk still checks."""
    width, height, depth, color, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", png[16:29]
    )
    field = rng.choice(["size", "size", "depth", "color", "interlace", "other"])
    if field == "size":
        width, height = rng.choice(
            [
                (0, 48),
                (64, 0),
                (1, 1),
                (65, 48),
                (64, 47),
                (20000, 20000),
                (2**31 - 1, 1),
                (64, 4800),
                (48, 64),
            ]
        )
    elif field == "depth":
        depth = rng.choice([1, 2, 4, 16, 3, 0, 255])
    elif field == "color":
        color = rng.choice([0, 3, 4, 6, 1, 7])
    elif field == "interlace":
        interlace = rng.choice([1, 2])
    else:
        compression, filtering = rng.choice([(1, 0), (0, 1), (255, 255)])
    header = struct.pack(">IIBBBBB", width, height, depth, color, compression, filtering, interlace)
    description = f"IHDR {width}x{height} depth {depth} colour {color} interlace {interlace}"
    return png[:8] + _png_chunk(b"IHDR", header) + png[33:], description


def _with_exif_orientation(pixels, rng):
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 255, 65535])
    out = io.BytesIO()
    image.save(out, format="JPEG", exif=exif.tobytes())
    return out.getvalue(), f"JPEG with EXIF orientation {exif[0x0112]}"


@pytest.fixture(scope="module")
def image_bases():
    """Valid encodings of one 48x64 picture: {name: (bytes, PIL format)}."""
    pixels = image_pixels(7)
    bases = {}
    for name, mode, fmt in (
        ("rgb.png", "RGB", "PNG"),
        ("gray.png", "L", "PNG"),
        ("rgba.png", "RGBA", "PNG"),
        ("palette.png", "P", "PNG"),
        ("rgb.jpg", "RGB", "JPEG"),
        ("cmyk.jpg", "CMYK", "JPEG"),
        ("rgb.bmp", "RGB", "BMP"),
        ("rgb.gif", "P", "GIF"),
        ("rgb.tif", "RGB", "TIFF"),
        ("rgb.webp", "RGB", "WEBP"),
        ("deep.png", "I;16", "PNG"),
    ):
        image = Image.fromarray(pixels)
        image = (
            Image.fromarray((pixels[..., 0].astype(np.uint16) * 257))
            if mode == "I;16"
            else image.convert(mode)
        )
        out = io.BytesIO()
        image.save(out, format=fmt)
        bases[name] = out.getvalue()
    return bases, pixels


def _mutate_image_bytes(data, rng):
    kind = rng.choice(
        ["flip", "flip", "truncate", "insert", "zero", "append", "random", "empty", "head"]
    )
    data = bytearray(data)
    if kind == "flip":
        count = rng.choice([1, 2, 8, 32])
        for _ in range(count):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data), f"{count} random bytes"
    if kind == "truncate":
        cut = rng.randrange(len(data))
        return bytes(data[:cut]), f"truncated at {cut} of {len(data)}"
    if kind == "insert":
        at = rng.randrange(len(data))
        return bytes(
            data[:at] + os.urandom(rng.randint(1, 64)) + data[at:]
        ), f"bytes inserted at {at}"
    if kind == "zero":
        at = rng.randrange(len(data))
        length = rng.randint(1, 256)
        data[at : at + length] = bytes(len(data[at : at + length]))
        return bytes(data), f"zeroed [{at}:{at + length}]"
    if kind == "append":
        return bytes(data) + os.urandom(rng.randint(1, 512)), "garbage appended"
    if kind == "random":
        return os.urandom(rng.randint(1, 4096)), "random bytes"
    if kind == "empty":
        return b"", "empty file"
    return bytes(data[: rng.randint(1, 40)]), "header only"


def test_fuzz_images(tmp_path, image_bases, model_and_cfg, capsys, caplog):
    bases, pixels = image_bases
    model, cfg = model_and_cfg
    mapper = CheckedDatasetMapper(cfg, is_train=True)
    caplog.set_level(logging.WARNING, logger="retinanet_plugin")

    def case(rng, index, info):
        name = rng.choice(sorted(bases))
        choice = rng.random()
        if choice < 0.15 and name.endswith(".png"):
            data, description = _with_png_header(bases[name], rng)
        elif choice < 0.25:
            name = "exif.jpg"
            data, description = _with_exif_orientation(pixels, rng)
        else:
            data, description = _mutate_image_bytes(bases[name], rng)
        description = f"{name}: {description}"
        path = tmp_path / f"case{index}_{name}"
        path.write_bytes(data)
        height, width = IMAGE_SIZE
        if rng.random() < 0.1:
            height, width = rng.choice([(64, 48), (47, 64), (48, 65)])
            description += f"; dataset says {height}x{width}"
        info["description"] = description
        record = {
            "file_name": str(path),
            "image_id": index,
            "height": height,
            "width": width,
            "annotations": [
                {
                    "bbox": [12.0, 10.0, 28.0, 20.0],
                    "bbox_mode": BoxMode.XYWH_ABS,
                    "category_id": 1,
                    "iscrowd": 0,
                }
            ],
        }
        caplog.clear()
        try:
            sample = mapper(record)
        except (UnreadableImageError, FileNotFoundError, SizeMismatchError) as e:
            assert_names(e, path)
            return f"error: {type(e).__name__}"
        image = sample["image"]
        assert image.dtype == torch.uint8 and image.dim() == 3 and image.shape[0] == 3, (
            f"image {image.shape}"
        )
        train_forward(model, [sample])
        converted = any("converted to" in r.getMessage() for r in caplog.records)
        return "decoded, converted (logged)" if converted else "decoded"

    fuzzer = Fuzzer("image", CASES["image"], BUDGET_S["image"])
    fuzzer.run(case)
    fuzzer.report(capsys)


# ==================================================================================================
# Checkpoints
# ==================================================================================================


class _Block(torch.nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels, channels, 3, bias=False)
        self.conv2 = torch.nn.Conv2d(channels, channels, 3, bias=False)


class TinyRetinaNetWeights(torch.nn.Module):
    """The weight names and kinds of a ResNet-FPN RetinaNet (those the checkpointer and the
    converter read), with 4 channels: checkpoints of a few KB, so that hundreds of corrupted copies
    take no time."""

    def __init__(self, num_classes=NUM_CLASSES, anchors=9, channels=4):
        super().__init__()
        conv = torch.nn.Conv2d
        self.backbone = torch.nn.Module()
        bottom_up = self.backbone.bottom_up = torch.nn.Module()
        bottom_up.stem = torch.nn.Module()
        bottom_up.stem.conv1 = conv(3, channels, 3, bias=False)
        for stage in ("res2", "res3", "res4", "res5"):
            setattr(bottom_up, stage, torch.nn.Sequential(_Block(channels), _Block(channels)))
        self.backbone.fpn_lateral3 = conv(channels, channels, 1)
        self.backbone.fpn_output3 = conv(channels, channels, 3)
        self.backbone.top_block = torch.nn.Module()
        self.backbone.top_block.p6 = conv(channels, channels + 1, 3)
        self.backbone.top_block.p7 = conv(channels + 1, channels + 1, 3)
        self.head = torch.nn.Module()
        self.head.cls_subnet = torch.nn.Sequential(conv(channels, channels, 3), torch.nn.ReLU())
        self.head.bbox_subnet = torch.nn.Sequential(conv(channels, channels, 3), torch.nn.ReLU())
        self.head.cls_score = conv(channels, anchors * num_classes, 3)
        self.head.bbox_pred = conv(channels, anchors * 4, 3)


_FORBIDDEN = [
    ("posix", "system"),
    ("builtins", "eval"),
    ("subprocess", "Popen"),
    ("builtins", "getattr"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("numpy", "load"),
    ("copyreg", "_reconstructor"),
]


class _Forbidden:
    """Pickles to a call of a forbidden global by reference (never called here: every path must
    refuse it first)."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __reduce__(self):
        return getattr(importlib.import_module(self.module), self.name), ("echo never",)


def _forbidden_pickle(module, name):
    """A pickle of {"model": {"w": array}, "x": module.name("echo never")}, written opcode by
    opcode."""
    inner = pickle.dumps({"w": np.zeros(2, np.float32)}, protocol=2)[
        2:-1
    ]  # the dict, without PROTO and STOP
    call = b"c" + f"{module}\n{name}\n".encode() + b"(Vecho never\ntR"
    return b"\x80\x02}(Vmodel\n" + inner + b"Vx\n" + call + b"u."


def _structural_variants(state, rng):
    """A checkpoint dict with one structural corruption of its content; returns (dict,
    description)."""
    state = dict(state)
    kind = rng.choice(
        ["value", "value", "value", "key", "drop", "model", "author", "blobs", "shape", "nested"]
    )
    key = rng.choice(sorted(state))
    if kind == "value":
        bad = rng.choice(
            [
                ("str", "text"),
                ("None", None),
                ("int", 3),
                ("list", [1.0, 2.0]),
                ("dict", {"a": np.zeros(1)}),
                ("object array", np.array([1, "a"], dtype=object)),
                ("string array", np.array(["a", "b"])),
                ("float128", np.zeros(3, dtype=np.longdouble)),
                ("big-endian", state[key].astype(state[key].dtype.newbyteorder(">"))),
                ("complex", state[key].astype(np.complex64)),
                ("bool", state[key] > 0),
                ("0-d", np.array(1.5, np.float32)),
                ("NaN", np.full(state[key].shape, np.nan, np.float32)),
                ("inf", np.full(state[key].shape, np.inf, np.float32)),
                ("empty", np.zeros((0,), np.float32)),
                ("int64", state[key].astype(np.int64)),
                ("float16", state[key].astype(np.float16)),
                ("tensor", torch.from_numpy(state[key].copy())),
                ("matrix", np.zeros((3, 3), np.float32)),
                ("5-d", state[key][None]),
            ]
        )
        state[key] = bad[1]
        return {"model": state, "__author__": "fuzz"}, f"{key} := {bad[0]}"
    if kind == "key":
        new_key = rng.choice([3, 2.5, ("a", "b"), b"bytes", None, "", "module." + key, key.upper()])
        state[new_key] = state.pop(key)
        return {"model": state, "__author__": "fuzz"}, f"{key} renamed {new_key!r}"
    if kind == "drop":
        for k in rng.sample(sorted(state), rng.randint(1, len(state))):
            del state[k]
        return {"model": state, "__author__": "fuzz"}, f"{len(state)} weights left"
    if kind == "model":
        value = rng.choice([None, [], "model", 3, [np.zeros(1)], {}, np.zeros(3)])
        return {"model": value, "__author__": "fuzz"}, f"model := {type(value).__name__}"
    # no __author__: Detectron2 reads it as a Caffe2 file, by name-matching heuristics
    if kind == "author":
        return {"model": state}, "no __author__ (Caffe2 heuristics)"
    if kind == "blobs":
        renamed = {k.replace(".", "_"): v for k, v in state.items()}
        return {"blobs": renamed}, "Caffe2 blobs"
    if kind == "shape":
        state[key] = (
            np.ascontiguousarray(np.swapaxes(state[key], 0, -1))
            if state[key].ndim > 1
            else state[key][:-1]
        )
        return {"model": state, "__author__": "fuzz"}, f"{key} reshaped to {state[key].shape}"
    value = rng.choice([collections.OrderedDict(state), {"inner": state}, [state], (state,)])
    return {"model": value, "__author__": "fuzz"}, f"model := {type(value).__name__} of weights"


def _as_tensors(value):
    if isinstance(value, np.ndarray):
        try:
            return torch.from_numpy(value.copy())
        except (TypeError, ValueError, RuntimeError):
            return value
    if isinstance(value, dict):
        return type(value)((k, _as_tensors(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_as_tensors(v) for v in value)
    return value


def _mutate_bytes(data, rng):
    data = bytearray(data)
    kind = rng.choice(
        ["flip", "flip", "truncate", "insert", "delete", "zero", "duplicate", "empty", "random"]
    )
    if kind == "flip":
        count = rng.choice([1, 1, 2, 4, 16])
        for _ in range(count):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data), f"{count} random bytes"
    if kind == "truncate":
        cut = rng.randrange(len(data))
        return bytes(data[:cut]), f"truncated at {cut} of {len(data)}"
    if kind == "insert":
        at = rng.randrange(len(data))
        return bytes(data[:at] + os.urandom(rng.randint(1, 16)) + data[at:]), f"inserted at {at}"
    if kind == "delete":
        at = rng.randrange(len(data))
        return bytes(data[:at] + data[at + rng.randint(1, 64) :]), f"deleted at {at}"
    if kind == "zero":
        at = rng.randrange(len(data))
        data[at : at + 64] = bytes(len(data[at : at + 64]))
        return bytes(data), f"zeroed at {at}"
    if kind == "duplicate":
        a = rng.randrange(len(data))
        b = min(len(data), a + rng.randint(1, 128))
        return bytes(data[:b] + data[a:b] + data[b:]), f"duplicated [{a}:{b}]"
    if kind == "empty":
        return b"", "empty"
    return os.urandom(rng.randint(1, 2048)), "random bytes"


def test_fuzz_checkpoints(tmp_path, capsys, caplog):
    torch.manual_seed(0)
    source = TinyRetinaNetWeights()
    state = {k: v.numpy().copy() for k, v in source.state_dict().items()}
    good_pth = io.BytesIO()
    torch.save({"model": source.state_dict(), "iteration": 3}, good_pth)
    caplog.set_level(logging.WARNING)

    def write_case(rng, index):
        suffix = rng.choice([".pkl", ".pkl", ".pth"])
        path = tmp_path / f"case{index}" / f"model_0000003{suffix}"
        path.parent.mkdir()
        choice = rng.random()
        protocol = rng.randint(0, 5)
        if choice < 0.12:
            module, name = rng.choice(_FORBIDDEN)
            if suffix == ".pkl":
                path.write_bytes(_forbidden_pickle(module, name))
            else:
                torch.save({"model": source.state_dict(), "x": _Forbidden(module, name)}, path)
            return path, f"{suffix} asking for {module}.{name}"
        if choice < 0.5:
            checkpoint, description = _structural_variants(state, rng)
            if suffix == ".pkl":
                path.write_bytes(pickle.dumps(checkpoint, protocol=protocol))
            # what torch.save users write: tensors (arrays torch cannot take stay arrays, and are
            # refused)
            else:
                torch.save(_as_tensors(checkpoint), path)
            return path, f"{suffix}: {description}"
        base = (
            pickle.dumps({"model": state, "__author__": "fuzz"}, protocol=protocol)
            if suffix == ".pkl"
            else good_pth.getvalue()
        )
        data, description = _mutate_bytes(base, rng)
        path.write_bytes(data)
        return (
            path,
            f"{suffix} (protocol {protocol}): {description}"
            if suffix == ".pkl"
            else f".pth: {description}",
        )

    def case(rng, index, info):
        path, info["description"] = write_case(rng, index)
        outcomes = []
        # MODEL.WEIGHTS: train_net.py (--eval-only or not), tools/predict.py, tools/export_model.py
        model = TinyRetinaNetWeights()
        try:
            CheckedDetectionCheckpointer(model).load(str(path), checkpointables=[])
            for k, v in model.state_dict().items():
                assert torch.isfinite(v).all(), f"loaded non-finite {k}"
            outcomes.append("loaded")
        except (CheckpointReadError, CheckpointMismatchError, FileNotFoundError) as e:
            assert_names(e, path)
            outcomes.append("refused")
        # --resume from a damaged last checkpoint: falls back to the older good one, or names every
        # file
        if path.suffix == ".pth":
            (path.parent / "model_0000001.pth").write_bytes(good_pth.getvalue())
            os.utime(path.parent / "model_0000001.pth", (1_000_000, 1_000_000))
            (path.parent / "last_checkpoint").write_text(path.name)
            model = TinyRetinaNetWeights()
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            try:
                checkpoint = CheckedDetectionCheckpointer(
                    model, str(path.parent), optimizer=optimizer
                ).resume_or_load("", resume=True)
                assert checkpoint.get("iteration") in (3, None), checkpoint.get("iteration")
                outcomes.append("resumed")
            except (CheckpointReadError, CheckpointMismatchError) as e:
                assert_names(e, path)
                outcomes.append("resume refused")
        # tools/convert_detectron2_retinanet.py (its __main__ prints "error: <message>" for these)
        output = path.parent / "converted.pth"
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                convert_tool.main(["--input", str(path), "--output", str(output)])
            assert torch.load(output, map_location="cpu", weights_only=True)["model"], (
                "empty conversion"
            )
            outcomes.append("converted")
        except (ValueError, FileNotFoundError) as e:
            assert_names(e, path)
            assert not output.exists(), "a refused conversion wrote its output"
            outcomes.append("conversion refused")
        return " / ".join(outcomes)

    fuzzer = Fuzzer("checkpoint", CASES["checkpoint"], BUDGET_S["checkpoint"])
    fuzzer.run(case)
    fuzzer.report(capsys)
