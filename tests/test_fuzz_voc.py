"""Seeded, time-bounded fuzzing of Pascal VOC XML datasets (``voc:FOLDER``, ``voc:FOLDER:SPLIT``).

Every case writes a small valid dataset (four 48x64 images), as a flat LabelImg/CVAT folder or in
VOC's layout with a split file, corrupts it, and feeds it through the trainer's path:
``register_datasets_of_config``, ``load_checked_dataset_dicts`` for training and for testing, the
trainer's ``CheckedDatasetMapper`` on every image accepted, and a training forward of a small
RetinaNet. The corruptions are of the XML text (truncation, flipped characters, random bytes, an
entity bomb, an external entity, deep nesting, a bad encoding), of its structure (root, ``<size>``,
``<object>``, ``<name>``, ``<bndbox>`` and its coordinates, ``<difficult>``, ``<filename>``), and of
the folder (missing or corrupt images, an XML name that is a folder, split files that are missing,
undecodable or list absent stems).

A case passes when it ends in one of the plugin's errors whose message names the dataset's folder or
a file in it (for a class-count mismatch: the dataset and ``MODEL.RETINANET.NUM_CLASSES``), or when
the dataset is accepted, possibly repaired with a log line, and what comes out is sound (boxes
finite, inside their image, of positive size; class ids in range; finite losses). Seeding, budget
and time limits: ``fuzzing.py``.
"""

import io
import logging
import os
import random
import struct
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from detectron2.data import MetadataCatalog
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
    one_thread,
    train_forward,
)
from retinanet_plugin.data import (
    CheckedDatasetMapper,
    DatasetValidationError,
    UnreadableImageError,
    VocAnnotationError,
    load_checked_dataset_dicts,
    register_datasets_of_config,
    unregister_file_datasets,
)

CASES, BUDGET_S = 300, 16.0  # cases at most; CPU seconds at most
CLASSES = ("a", "b")
JUNK_TEXT = [
    "",
    " ",
    "x",
    "0",
    "-5",
    "nan",
    "inf",
    "-inf",
    "1e30",
    "1e400",
    "64.5",
    " 48 ",
    "0x40",
    "\u0664\u0668",  # Arabic-Indic digits: float() reads them as 48
    "12,5",
    "9" * 400,
]


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def model_and_cfg(tmp_path_factory):
    cfg = fuzz_cfg(tmp_path_factory.mktemp("fuzz_voc_out"))
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    return model, cfg


@pytest.fixture(scope="module")
def png_bytes():
    out = io.BytesIO()
    Image.fromarray(image_pixels(3)).save(out, format="PNG")
    return out.getvalue()


# ==================================================================================================
# A valid dataset
# ==================================================================================================


def _annotation(stem, rng):
    """The XML tree of one valid 48x64 image with 1-3 objects (VOC's 1-based pixel coordinates)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "fuzz"
    ET.SubElement(root, "filename").text = f"{stem}.png"
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(IMAGE_SIZE[1])
    ET.SubElement(size, "height").text = str(IMAGE_SIZE[0])
    ET.SubElement(size, "depth").text = "3"
    for position in range(rng.randint(1, 3)):
        element = ET.SubElement(root, "object")
        ET.SubElement(element, "name").text = CLASSES[(position + len(stem)) % 2]
        ET.SubElement(element, "difficult").text = "0"
        box = ET.SubElement(element, "bndbox")
        x0, y0 = rng.randint(1, 30), rng.randint(1, 20)
        for tag, value in zip(
            ("xmin", "ymin", "xmax", "ymax"),
            (x0, y0, x0 + rng.randint(4, 30), y0 + rng.randint(4, 25)),
        ):
            ET.SubElement(box, tag).text = str(value)
    return root


class _Dataset:
    """The files of one case: ``layout`` "flat" or "voc"; XML trees and image bytes by stem."""

    def __init__(self, folder, layout, rng, png):
        self.folder, self.layout = folder, layout
        self.stems = [f"img{i}" for i in range(4)]
        self.trees = {stem: _annotation(stem, rng) for stem in self.stems}
        self.xml_bytes = {}  # stem -> bytes that replace the tree's serialisation
        self.images = {stem: png for stem in self.stems}  # stem -> bytes, or None: not written
        self.split = "\n".join(self.stems) + "\n" if layout == "voc" else None
        self.folder_instead = set()  # paths to create as folders instead of files

    def xml_path(self, stem):
        if self.layout == "voc":
            return self.folder / "Annotations" / f"{stem}.xml"
        return self.folder / f"{stem}.xml"

    def image_path(self, stem):
        return (self.folder / "JPEGImages" if self.layout == "voc" else self.folder) / f"{stem}.png"

    def split_path(self):
        return self.folder / "ImageSets" / "Main" / "train.txt"

    def write(self):
        for stem in self.stems:
            for path, data in (
                (self.xml_path(stem), self.xml_bytes.get(stem)),
                (self.image_path(stem), self.images[stem]),
            ):
                path.parent.mkdir(parents=True, exist_ok=True)
                if path in self.folder_instead:
                    path.mkdir()
                elif path.suffix == ".xml":
                    path.write_bytes(data if data is not None else ET.tostring(self.trees[stem]))
                elif data is not None:
                    path.write_bytes(data)
        if self.split is not None:
            self.split_path().parent.mkdir(parents=True, exist_ok=True)
            if isinstance(self.split, bytes):
                self.split_path().write_bytes(self.split)
            elif self.split_path() in self.folder_instead:
                self.split_path().mkdir()
            elif self.split != "<none>":
                self.split_path().write_text(self.split)

    @property
    def dataset_name(self):
        return f"voc:{self.folder}" + (":train" if self.layout == "voc" else "")


# ==================================================================================================
# Corruptions
# ==================================================================================================


def _mutate_xml_text(text, rng):
    """Bytes that replace one XML file, and what was done."""
    kind = rng.choice(
        ["truncate", "flip", "delete", "bytes", "bomb", "entity", "deep", "encoding", "empty"]
    )
    if kind == "truncate":
        cut = rng.randrange(len(text))
        return text[:cut].encode(), f"truncated at {cut}"
    if kind == "flip":
        chars = list(text)
        for _ in range(rng.randint(1, 8)):
            chars[rng.randrange(len(chars))] = rng.choice("<>/&;\"'=x0123456789.- \n")
        return "".join(chars).encode(), "flipped characters"
    if kind == "delete":
        a = rng.randrange(len(text))
        b = min(len(text), a + rng.randint(1, 40))
        return (text[:a] + text[b:]).encode(), f"deleted [{a}:{b}]"
    if kind == "bytes":
        return b"\xff\xfe" + os.urandom(rng.randint(1, 200)), "random bytes"
    if kind == "bomb":
        entities = '<!ENTITY e0 "laugh">' + "".join(
            f'<!ENTITY e{i} "{f"&e{i - 1};" * 10}">' for i in range(1, 10)
        )
        return (
            f"<?xml version='1.0'?><!DOCTYPE annotation [{entities}]>"
            "<annotation><filename>&e9;</filename></annotation>"
        ).encode(), "entity bomb (10^9 expansions)"
    if kind == "entity":
        return (
            "<?xml version='1.0'?><!DOCTYPE annotation [<!ENTITY x SYSTEM 'file:///etc/passwd'>]>"
            + text.replace("<folder>fuzz</folder>", "<folder>&x;</folder>")
        ).encode(), "external entity"
    if kind == "deep":
        depth = rng.choice([1000, 100000])
        return (
            "<annotation>" + "<object>" * depth + "</object>" * depth + "</annotation>"
        ).encode(), f"objects nested {depth} deep"
    if kind == "encoding":
        encoding = rng.choice(["latin-1", "utf-16", "no-such-codec", "utf-8"])
        body = text.replace(">a<", ">\u00e4\u00df<")
        return (
            f"<?xml version='1.0' encoding='{encoding}'?>".encode()
            + body.encode(rng.choice(["latin-1", "utf-8"]))
        ), f"declared {encoding}"
    return b"", "empty file"


def _pick(root, tag, rng):
    found = root.findall(tag)
    return rng.choice(found) if found else None


def _mutate_tree(root, rng):
    """One structural corruption of an XML tree, in place; returns what was done."""
    kind = rng.choice(
        [
            "root",
            "size",
            "size",
            "object",
            "name",
            "name",
            "bndbox",
            "coordinate",
            "coordinate",
            "coordinate",
            "box",
            "box",
            "difficult",
            "filename",
            "many",
            "no objects",
        ]
    )
    obj = _pick(root, "object", rng)
    if kind == "root":
        root.tag = rng.choice(["annotations", "Annotation", "x"])
        return f"root <{root.tag}>"
    if kind == "size":
        size = root.find("size")
        if size is None or size.find("width") is None or size.find("height") is None:
            return "no <size> to corrupt"
        what = rng.choice(["remove", "width", "height", "both", "swap", "other"])
        if what == "remove":
            root.remove(size)
            return "no <size>"
        if what == "swap":
            size.find("width").text, size.find("height").text = (
                size.find("height").text,
                size.find("width").text,
            )
            return "<size> width and height swapped"
        if what == "other":
            size.find("width").text, size.find("height").text = rng.choice(
                [("100", "100"), ("65", "48"), ("64", "47"), ("1", "1")]
            )
            return f"<size> {size.find('width').text}x{size.find('height').text}"
        value = rng.choice(JUNK_TEXT)
        for tag in ("width", "height") if what == "both" else (what,):
            size.find(tag).text = value
        return f"<size> {what} {value!r}"
    if obj is None:
        return "no object to corrupt"
    if kind == "object":
        extra = ET.SubElement(obj, rng.choice(["object", "part", "bndbox", "name"]))
        extra.text = rng.choice(JUNK_TEXT)
        return f"<object> holds an extra <{extra.tag}>"
    if kind == "name":
        name = obj.find("name")
        if name is None:
            return "no <name> to corrupt"
        choice = rng.choice(["remove", "junk", "other class", "children"])
        if choice == "remove":
            obj.remove(name)
            return "an object without <name>"
        if choice == "children":
            name.text = None
            ET.SubElement(name, "b").text = "a"
            return "a <name> with a child element"
        name.text = rng.choice(["c", "A", " a ", "a b", "\u00e4", "x" * 300, "", " "])
        return f"<name> {name.text!r}"
    box = obj.find("bndbox")
    if kind in ("bndbox", "coordinate", "box") and (
        box is None or any(box.find(tag) is None for tag in ("xmin", "ymin", "xmax", "ymax"))
    ):
        return "no whole <bndbox> to corrupt"
    if kind == "bndbox":
        obj.remove(box)
        return "an object without <bndbox>"
    if kind == "coordinate":
        tag = rng.choice(["xmin", "ymin", "xmax", "ymax"])
        if rng.random() < 0.25:
            box.remove(box.find(tag))
            return f"no <{tag}>"
        box.find(tag).text = rng.choice(JUNK_TEXT)
        return f"<{tag}> {box.find(tag).text!r}"
    if kind == "box":
        values = rng.choice(
            [
                (20, 10, 5, 30),  # xmin > xmax
                (5, 30, 20, 10),  # ymin > ymax
                (5, 5, 5, 20),  # zero width
                (-10, -10, 20, 20),  # partly outside
                (60, 40, 90, 70),  # partly outside, right and bottom
                (100, 100, 200, 200),  # entirely outside
                (1, 1, 64, 48),  # the whole image
                (0, 0, 65, 49),  # one pixel over every border
                (1.5, 2.25, 30.75, 20.5),  # fractional
            ]
        )
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), values):
            box.find(tag).text = str(value)
        return f"box {values}"
    if kind == "difficult":
        if obj.find("difficult") is None:
            return "no <difficult> to corrupt"
        obj.find("difficult").text = rng.choice(["1", "2", "true", "yes", "", "nan"])
        return f"<difficult> {obj.find('difficult').text!r}"
    if kind == "filename":
        filename = root.find("filename")
        if filename is None:
            return "no <filename> to corrupt"
        choice = rng.choice(["remove", "absent", "dirs", "absolute", "empty"])
        if choice == "remove":
            root.remove(filename)
            return "no <filename>"
        filename.text = {
            "absent": "not_there.jpg",
            "dirs": "../../elsewhere/img0.png",
            "absolute": "/etc/passwd",
            "empty": "",
        }[choice]
        return f"<filename> {filename.text!r}"
    if kind == "many":
        count = rng.choice([50, 500])
        for _ in range(count):
            root.append(obj)
        return f"{count} more objects"
    for element in root.findall("object"):
        root.remove(element)
    return "no objects"


def _mutate_folder(dataset, rng, png):
    """One corruption of the dataset's files; returns what was done."""
    stem = rng.choice(sorted(dataset.trees))
    kinds = ["image missing", "image truncated", "image random", "xml is a folder", "image other"]
    kinds += ["image huge, no <size>", "image turned by EXIF, no <size>"]
    if dataset.layout == "voc":
        kinds += ["split missing", "split absent stem", "split bytes", "split blank", "split dir"]
    elif "extra" not in dataset.stems:
        kinds += ["unannotated image", "xml missing"]
    kind = rng.choice(kinds)
    if kind == "image missing":
        dataset.images[stem] = None
    elif kind == "image truncated":
        dataset.images[stem] = png[: rng.randrange(8, len(png))]
    elif kind == "image random":
        dataset.images[stem] = os.urandom(rng.randint(1, 300))
    elif kind == "image other":
        out = io.BytesIO()
        Image.fromarray(image_pixels(5)[:30, :50]).save(out, format="PNG")
        dataset.images[stem] = out.getvalue()
        kind = "image 30x50, not the 48x64 <size> says"
    elif kind.endswith("no <size>"):
        size = dataset.trees[stem].find("size")
        if size is not None:
            dataset.trees[stem].remove(size)
        if kind.startswith("image huge"):  # a PNG header that says 30000x30000 (CRC fixed)
            header = struct.pack(">II", 30000, 30000) + png[24:29]
            chunk = b"IHDR" + header
            dataset.images[stem] = (
                png[:8]
                + struct.pack(">I", 13)
                + chunk
                + struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF)
                + png[33:]
            )
        else:
            exif = Image.Exif()
            exif[0x0112] = rng.choice([3, 6, 8])
            out = io.BytesIO()
            Image.fromarray(image_pixels(3)).save(out, format="JPEG", exif=exif.tobytes())
            dataset.images[stem] = out.getvalue()  # JPEG bytes in a .png file: PIL reads either
            kind += f" (orientation {exif[0x0112]})"
    elif kind == "xml is a folder":
        dataset.folder_instead.add(dataset.xml_path(stem))
    elif kind == "split missing":
        dataset.split = "<none>"
    elif kind == "split absent stem":
        dataset.split += "not_there\n"
    elif kind == "split bytes":
        dataset.split = b"img0\n\xff\xfe\x00img1\n"
    elif kind == "split blank":
        dataset.split = "\n\n   \n"
    elif kind == "split dir":
        dataset.folder_instead.add(dataset.split_path())
    elif kind == "unannotated image":
        dataset.stems.append("extra")
        dataset.images["extra"] = png
        dataset.folder_instead.add(dataset.xml_path("extra"))
        kind = "an image whose .xml is a folder"
    elif kind == "xml missing":
        if stem not in dataset.stems:
            return f"xml of {stem} missing already"
        dataset.stems.remove(stem)
        (dataset.folder).mkdir(parents=True, exist_ok=True)
        dataset.image_path(stem).write_bytes(png)
    return f"{kind} ({stem})"


def _make_case(folder, rng, png):
    dataset = _Dataset(folder, rng.choice(["flat", "voc"]), rng, png)
    done = [dataset.layout]
    for _ in range(rng.randint(1, 2)):
        where = rng.random()
        stem = rng.choice(sorted(dataset.trees))
        if where < 0.25:
            data, what = _mutate_xml_text(ET.tostring(dataset.trees[stem]).decode(), rng)
            dataset.xml_bytes[stem] = data
            done.append(f"{stem}.xml: {what}")
        elif where < 0.8:
            done.append(f"{stem}.xml: {_mutate_tree(dataset.trees[stem], rng)}")
        else:
            done.append(_mutate_folder(dataset, rng, png))
    dataset.write()
    return dataset, "; ".join(done)


# ==================================================================================================
# The test
# ==================================================================================================


def _check_accepted(dicts, *, is_train=True):
    """Sound sizes; for training also sound boxes and class ids (a test loader drops the
    annotations, and the evaluator reads them from the dataset itself)."""
    for record in dicts:
        height, width = record["height"], record["width"]
        assert isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0, (
            f"accepted size {height}x{width}"
        )
        for a in record["annotations"] if is_train else ():
            assert 0 <= a["category_id"] < NUM_CLASSES, f"accepted category {a['category_id']!r}"
            assert a["bbox_mode"] == BoxMode.XYXY_ABS, a["bbox_mode"]
            x0, y0, x1, y1 = (float(v) for v in a["bbox"])
            assert all(map(torch.isfinite, torch.tensor([x0, y0, x1, y1]))), (
                f"accepted box {a['bbox']}"
            )
            assert 0 <= x0 < x1 <= width + 1e-3 and 0 <= y0 < y1 <= height + 1e-3, (
                f"accepted box {a['bbox']} in a {width}x{height} image"
            )


def test_fuzz_voc_xml(tmp_path, png_bytes, model_and_cfg, capsys, caplog):
    model, cfg = model_and_cfg
    train_mapper = CheckedDatasetMapper(cfg, is_train=True)
    test_mapper = CheckedDatasetMapper(cfg, is_train=False)
    caplog.set_level(logging.WARNING, logger="retinanet_plugin")

    def case(rng, index, info):
        dataset, info["description"] = _make_case(tmp_path / f"case{index}", rng, png_bytes)
        name = dataset.dataset_name
        given_classes = rng.random() < 0.5
        cfg.defrost()
        cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (name,), (name,)
        cfg.DATASETS.VOC_CLASSES = CLASSES if given_classes else ()
        caplog.clear()
        try:
            try:
                register_datasets_of_config(cfg)
                dicts = load_checked_dataset_dicts(cfg, name, is_train=True)
                test_dicts = load_checked_dataset_dicts(cfg, name, is_train=False)
            except (VocAnnotationError, DatasetValidationError, FileNotFoundError) as e:
                assert_names(e, dataset.folder)
                return f"error: {type(e).__name__}"
            except ValueError as e:  # the class count check: names the dataset and the config key
                if not str(e).startswith("MODEL.RETINANET.NUM_CLASSES is"):
                    raise
                assert f"dataset '{name}'" in str(e), str(e)
                return "error: NUM_CLASSES"
            _check_accepted(dicts)
            _check_accepted(test_dicts, is_train=False)
            try:
                batch = [train_mapper(r) for r in dicts]
                for r in test_dicts:
                    test_mapper(r)
            except (UnreadableImageError, FileNotFoundError, SizeMismatchError) as e:
                assert_names(e, dataset.folder)
                return f"error when read: {type(e).__name__}"
            if batch:
                train_forward(model, batch[:4])
            repaired = any(
                r.levelno >= logging.WARNING and r.name.startswith("retinanet_plugin")
                for r in caplog.records
            )
            return "accepted, repairs logged" if repaired else "accepted"
        finally:
            unregister_file_datasets([name])

    fuzzer = Fuzzer("voc_xml", CASES, BUDGET_S)
    fuzzer.run(case)
    fuzzer.report(capsys)


def test_the_valid_dataset_is_accepted(tmp_path, png_bytes, model_and_cfg):
    """The base of every case, uncorrupted, in both layouts: accepted whole (the fuzz test's
    corruptions are what makes its cases fail)."""
    model, cfg = model_and_cfg
    for layout in ("flat", "voc"):
        dataset = _Dataset(tmp_path / layout, layout, random.Random(layout), png_bytes)
        dataset.write()
        name = dataset.dataset_name
        cfg.defrost()
        cfg.DATASETS.TRAIN, cfg.DATASETS.TEST, cfg.DATASETS.VOC_CLASSES = (name,), (name,), ()
        register_datasets_of_config(cfg)
        try:
            dicts = load_checked_dataset_dicts(cfg, name, is_train=True)
            _check_accepted(dicts)
            assert len(dicts) == 4
            expected = sum(len(t.findall("object")) for t in dataset.trees.values())
            assert sum(len(d["annotations"]) for d in dicts) == expected
            assert MetadataCatalog.get(name).thing_classes == list(CLASSES)
            mapper = CheckedDatasetMapper(cfg, is_train=True)
            train_forward(model, [mapper(d) for d in dicts])
        finally:
            unregister_file_datasets([name])
    assert Path(tmp_path / "voc" / "ImageSets" / "Main" / "train.txt").read_text().count("img") == 4
