"""Datasets given by their files on the command line: ``coco:JSON[:IMAGE_ROOT]`` and
``voc:FOLDER[:SPLIT]`` (VOC's layout and flat LabelImg/CVAT folders), class names from the data
(``NUM_CLASSES_FROM_DATA``) reaching the evaluator and the ``Visualizer``, and a whole
``train_net.py`` run on VOC folders without a line of Python.
"""

import importlib.util
import json
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode, Instances, Boxes

from conftest import REPO_ROOT
from retinanet_plugin.data.file_datasets import (
    parse_file_dataset_name,
    register_file_datasets,
    unregister_file_datasets,
)
from retinanet_plugin.data.voc import VocAnnotationError
from retinanet_plugin.engine import RetinaNetPluginTrainer, config_from_file
from script_module import load_script  # a helper beside the tests

SYNTHETIC = os.path.join(REPO_ROOT, "configs", "synthetic", "retinanet_R18_synthetic.yaml")


@pytest.fixture(autouse=True)
def forget_registrations():
    """Unregister the file datasets a test registered (their names are tmp paths, unique per
    test)."""
    before = set(DatasetCatalog.list())
    yield
    unregister_file_datasets(sorted(set(DatasetCatalog.list()) - before))


def _image(path, size=(96, 128), boxes=()):
    pixels = np.full((*size, 3), 40, dtype=np.uint8)
    for x0, y0, x1, y1 in boxes:
        pixels[int(y0) : int(y1), int(x0) : int(x1)] = (230, 200, 30)
    Image.fromarray(pixels).save(path)


def _xml(path, file_name, objects, size=(96, 128)):
    """objects: (name, (xmin, ymin, xmax, ymax) in VOC's 1-based pixels, difficult)."""
    parts = "".join(
        f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>{int(d)}</difficult>"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects
    )
    size_xml = (
        f"<size><width>{size[1]}</width><height>{size[0]}</height><depth>3</depth></size>"
        if size
        else ""
    )
    path.write_text(
        f"<annotation><folder>x</folder><filename>{file_name}</filename>{size_xml}{parts}</annotation>"
    )


def _flat_folder(folder, images):
    """A LabelImg/CVAT-style folder: images[i] = list of objects; image i is i.jpg (PNG data) beside
    i.xml."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, objects in enumerate(images):
        _image(folder / f"{i}.png", boxes=[(b[0] - 1, b[1] - 1, b[2], b[3]) for _, b, _ in objects])
        _xml(folder / f"{i}.xml", f"{i}.png", objects)
    return folder


def _voc_layout(root, images, splits):
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for i, objects in enumerate(images):
        _image(root / "JPEGImages" / f"{i:04d}.png")
        _xml(root / "Annotations" / f"{i:04d}.xml", f"{i:04d}.png", objects)
    for split, indices in splits.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text(
            "".join(f"{i:04d}\n" for i in indices)
        )
    # a per-class list, not a split
    (root / "ImageSets" / "Main" / "tree_train.txt").write_text("0000  1\n")
    return root


TREE, BUSH = ("tree", (11, 21, 50, 60), False), ("bush", (61, 11, 100, 40), False)


def test_coco_json_names_register_on_first_use_with_their_image_root(tmp_path):
    (tmp_path / "ann").mkdir()
    (tmp_path / "pics").mkdir()
    _image(tmp_path / "ann" / "a.png")
    _image(tmp_path / "pics" / "a.png")
    coco = {
        "images": [{"id": 3, "file_name": "a.png", "height": 96, "width": 128}],
        "annotations": [
            {
                "id": 1,
                "image_id": 3,
                "category_id": 7,
                "bbox": [1, 2, 30, 40],
                "area": 1200,
                "iscrowd": 0,
            }
        ],
        "categories": [{"id": 7, "name": "cell"}],
    }
    json_file = tmp_path / "ann" / "train.json"
    json_file.write_text(json.dumps(coco))
    default_root, given_root = f"coco:{json_file}", f"coco:{json_file}:{tmp_path / 'pics'}"
    cfg, _ = config_from_file(
        SYNTHETIC, ["DATASETS.TRAIN", f"('{default_root}',)", "DATASETS.TEST", f"('{given_root}',)"]
    )
    assert {default_root, given_root} <= set(DatasetCatalog.list())
    assert DatasetCatalog.get(default_root)[0]["file_name"] == str(tmp_path / "ann" / "a.png")
    record = DatasetCatalog.get(given_root)[0]
    assert record["file_name"] == str(tmp_path / "pics" / "a.png") and record["image_id"] == 3
    assert record["annotations"][0]["category_id"] == 0
    assert MetadataCatalog.get(given_root).thing_classes == ["cell"]
    assert parse_file_dataset_name(f"coco:{json_file}") == (
        "coco",
        str(json_file),
        str(tmp_path / "ann"),
    )


@pytest.mark.parametrize(
    "name, message",
    [
        ("coco:", r"give a path after 'coco:'"),
        ("coco:/x/y.txt:/images", r"'/x/y.txt' is not a .json file"),
        ("yolo:/data", None),  # not a file dataset: left alone
    ],
)
def test_malformed_file_dataset_names_are_explained(name, message):
    if message is None:
        assert register_file_datasets([name]) == []
        return
    with pytest.raises(
        ValueError, match=message + r".*forms: coco:JSON, coco:JSON:IMAGE_ROOT, voc:FOLDER"
    ):
        register_file_datasets([name])


def test_a_flat_labelimg_folder_gives_classes_boxes_and_difficult_objects_ignored(tmp_path, caplog):
    folder = _flat_folder(
        tmp_path / "flat", [[TREE], [TREE, BUSH, ("bush", (1, 1, 128, 96), True)], []]
    )
    _image(folder / "unlabelled.png")
    name = f"voc:{folder}"
    with caplog.at_level(logging.INFO, logger="retinanet_plugin"):
        register_file_datasets([name])
        dicts = DatasetCatalog.get(name)
    assert MetadataCatalog.get(name).thing_classes == ["bush", "tree"]
    assert [d["file_name"] for d in dicts] == [str(folder / f"{i}.png") for i in range(3)]
    assert [d["image_id"] for d in dicts] == [1, 2, 3] and dicts[2]["annotations"] == []
    anns = dicts[1]["annotations"]
    assert [a["bbox"] for a in anns] == [
        [10, 20, 50, 60],
        [60, 10, 100, 40],
        [0, 0, 128, 96],
    ]  # VOC 1-based -> edges
    assert [a["category_id"] for a in anns] == [1, 0, 0] and [a["iscrowd"] for a in anns] == [
        0,
        0,
        1,
    ]
    assert all(a["bbox_mode"] == BoxMode.XYXY_ABS for a in anns)
    assert (
        "1 images have no .xml file beside them and are not used (e.g. unlabelled.png)"
        in caplog.text
    )


def test_voc_layout_with_and_without_a_split(tmp_path):
    root = _voc_layout(
        tmp_path / "VOC", [[TREE], [BUSH], [TREE, BUSH]], {"train": [0, 2], "val": [1]}
    )
    everything = f"voc:{root}"
    train, val = f"voc:{root}:train", f"voc:{root}:val"
    register_file_datasets([everything, train, val])
    assert len(DatasetCatalog.get(everything)) == 3
    assert [d["file_name"] for d in DatasetCatalog.get(train)] == [
        str(root / "JPEGImages" / f"{i:04d}.png") for i in (0, 2)
    ]
    assert [a["category_id"] for a in DatasetCatalog.get(val)[0]["annotations"]] == [0]
    with pytest.raises(
        VocAnnotationError, match=r"there is no split file .*test\.txt \(splits there: train, val\)"
    ):
        register_file_datasets([f"voc:{root}:test"])
        DatasetCatalog.get(f"voc:{root}:test")


def test_train_and_test_folders_number_the_classes_alike_even_when_one_lacks_a_class(tmp_path):
    train = _flat_folder(tmp_path / "train", [[TREE, BUSH], [("rock", (1, 1, 9, 9), False)]])
    val = _flat_folder(tmp_path / "val", [[TREE]])
    cfg, _ = config_from_file(
        SYNTHETIC, ["DATASETS.TRAIN", f"('voc:{train}',)", "DATASETS.TEST", f"('voc:{val}',)"]
    )
    for name in cfg.DATASETS.TRAIN + cfg.DATASETS.TEST:
        DatasetCatalog.get(name)
        assert MetadataCatalog.get(name).thing_classes == ["bush", "rock", "tree"]
    assert DatasetCatalog.get(f"voc:{val}")[0]["annotations"][0]["category_id"] == 2


def test_voc_classes_key_fixes_the_order_and_names_objects_outside_it(tmp_path):
    folder = _flat_folder(tmp_path / "f", [[TREE, BUSH]])
    cfg, _ = config_from_file(
        SYNTHETIC,
        [
            "DATASETS.TRAIN",
            f"('voc:{folder}',)",
            "DATASETS.TEST",
            "()",
            "DATASETS.VOC_CLASSES",
            "('tree', 'bush')",
        ],
    )
    assert [a["category_id"] for a in DatasetCatalog.get(f"voc:{folder}")[0]["annotations"]] == [
        0,
        1,
    ]
    other = _flat_folder(tmp_path / "g", [[TREE, BUSH]])
    register_file_datasets([f"voc:{other}"], voc_classes=("tree",))
    with pytest.raises(
        VocAnnotationError,
        match=rf"{other / '0.xml'} has objects named \['bush'\], which are not "
        r"among the classes of voc:.* \(tree\)",
    ):
        DatasetCatalog.get(f"voc:{other}")


@pytest.mark.parametrize(
    "problem, message",
    [
        ("xml", r"0\.xml is not readable XML \(.*line 1"),
        ("coordinate", r"0\.xml: object #0 has <xmax> 'wide' in its <bndbox>, not a number"),
        ("name", r"0\.xml: object #0 has no <name>"),
        ("image", r"1 annotation files have no image in .*: .*0\.xml"),
        ("no coordinate", r"0\.xml: object #0 has no <ymin> in its <bndbox>"),
        ("encoding", r"0\.xml is not readable XML \(unknown encoding: no-such-codec"),
        ("folder", r"0\.xml cannot be read \(IsADirectoryError"),
    ],
)
def test_broken_voc_files_are_named(tmp_path, problem, message):
    folder = _flat_folder(tmp_path / "f", [[TREE]])
    xml = folder / "0.xml"
    if problem == "xml":
        xml.write_text("<annotation><object>")
    elif problem == "coordinate":
        xml.write_text(xml.read_text().replace("<xmax>50</xmax>", "<xmax>wide</xmax>"))
    elif problem == "name":
        xml.write_text(xml.read_text().replace("<name>tree</name>", ""))
    elif problem == "no coordinate":
        xml.write_text(xml.read_text().replace("<ymin>21</ymin>", ""))
    elif problem == "encoding":
        xml.write_text("<?xml version='1.0' encoding='no-such-codec'?>" + xml.read_text())
    elif problem == "folder":
        os.remove(xml)
        xml.mkdir()
    else:
        os.remove(folder / "0.png")
    register_file_datasets([f"voc:{folder}"])
    with pytest.raises(VocAnnotationError, match=message):
        DatasetCatalog.get(f"voc:{folder}")


@pytest.mark.parametrize("size", [None, "0", "-5", "64.5", "x", "nan", "inf", "1e400"])
def test_an_xml_without_a_usable_size_takes_it_from_the_image(tmp_path, size):
    folder = tmp_path / "f"
    folder.mkdir()
    _image(folder / "0.png", size=(50, 70))
    _xml(folder / "0.xml", "0.png", [TREE], size=None if size is None else (7, 9))
    if size is not None:
        text = (folder / "0.xml").read_text()
        (folder / "0.xml").write_text(text.replace(">7<", f">{size}<").replace(">9<", f">{size}<"))
    register_file_datasets([f"voc:{folder}"])
    record = DatasetCatalog.get(f"voc:{folder}")[0]
    assert (record["height"], record["width"]) == (50, 70)


@pytest.mark.parametrize(
    "split_file, message",
    [
        (b"", r"the split file .*train\.txt names no image"),
        (b"\n   \n", r"the split file .*train\.txt names no image"),
        (b"0000\n\xff\xfe0001\n", r"the split file .*train\.txt cannot be read \('utf-8' codec"),
        (None, r"the split file .*train\.txt is not a file"),
        (b"0000\n0007\n", r"1 annotation files listed in the split .*: .*0007\.xml"),
    ],
)
def test_broken_split_files_are_named(tmp_path, split_file, message):
    root = _voc_layout(tmp_path / "VOC", [[TREE], [BUSH]], {})
    split = root / "ImageSets" / "Main" / "train.txt"
    if split_file is None:
        split.mkdir()
    else:
        split.write_bytes(split_file)
    register_file_datasets([f"voc:{root}:train"])
    with pytest.raises(VocAnnotationError, match=message):
        DatasetCatalog.get(f"voc:{root}:train")


def test_a_folder_used_for_training_and_testing_is_named_once(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    _image(folder / "0.png")
    _xml(folder / "0.xml", "0.png", [])
    name = f"voc:{folder}"
    register_file_datasets([name, name])
    with pytest.raises(VocAnnotationError, match=r"no XML file has an <object>") as error:
        DatasetCatalog.get(name)
    assert str(error.value).count(name) == 1, str(error.value)


def test_unregistered_folders_are_read_again(tmp_path):
    folder = _flat_folder(tmp_path / "f", [[TREE]])
    name = f"voc:{folder}"
    register_file_datasets([name])
    assert len(DatasetCatalog.get(name)[0]["annotations"]) == 1
    _xml(folder / "0.xml", "0.png", [TREE, BUSH])
    unregister_file_datasets([name, "not_a_file_dataset", f"voc:{tmp_path}/never_registered"])
    assert name not in DatasetCatalog.list()
    register_file_datasets([name])
    assert len(DatasetCatalog.get(name)[0]["annotations"]) == 2


def test_an_xml_without_size_takes_the_size_the_exif_orientation_shows(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned by 90 degrees
    Image.new("RGB", (70, 50)).save(folder / "0.jpg", exif=exif.tobytes())
    _xml(folder / "0.xml", "0.jpg", [("tree", (5, 5, 40, 60), False)], size=None)
    register_file_datasets([f"voc:{folder}"])
    record = DatasetCatalog.get(f"voc:{folder}")[0]
    assert (record["height"], record["width"]) == (70, 50)


def test_an_xml_without_size_and_a_bomb_of_an_image_is_named(tmp_path, monkeypatch):
    folder = tmp_path / "f"
    folder.mkdir()
    _image(folder / "0.png", size=(50, 70))
    _xml(folder / "0.xml", "0.png", [TREE], size=None)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 50 x 70 is over twice that
    register_file_datasets([f"voc:{folder}"])
    message = r"0\.xml has no <size>: its image .*0\.png is larger"
    with pytest.raises(VocAnnotationError, match=message):
        DatasetCatalog.get(f"voc:{folder}")


def test_num_classes_from_data_and_mismatches_name_both_numbers(tmp_path):
    train = _flat_folder(tmp_path / "train", [[TREE, BUSH]])
    three = _flat_folder(tmp_path / "three", [[TREE, ("rock", (1, 1, 9, 9), False), BUSH]])
    cfg, _ = config_from_file(
        SYNTHETIC,
        [
            "DATASETS.TRAIN",
            f"('voc:{train}',)",
            "DATASETS.TEST",
            "()",
            "MODEL.RETINANET_PLUGIN.NUM_CLASSES_FROM_DATA",
            "True",
        ],
    )
    assert cfg.MODEL.RETINANET.NUM_CLASSES == 2  # the YAML says 5
    given = _flat_folder(tmp_path / "given", [[TREE, BUSH]])
    cfg, _ = config_from_file(
        SYNTHETIC,
        [
            "DATASETS.TRAIN",
            f"('voc:{given}',)",
            "DATASETS.TEST",
            "()",
            "DATASETS.VOC_CLASSES",
            "('bush', 'tree')",
        ],
    )
    assert cfg.MODEL.RETINANET.NUM_CLASSES == 5  # the setting is off: as given...
    with pytest.raises(
        ValueError, match=rf"NUM_CLASSES is 5 but dataset 'voc:{given}' has 2 classes"
    ):
        RetinaNetPluginTrainer.build_train_loader(cfg)  # ... and a mismatch is an error naming both
    with pytest.raises(
        ValueError,
        match=r"is already registered with classes \['bush', 'tree'\]; "
        r"DATASETS.VOC_CLASSES now says \['tree', 'bush'\]",
    ):
        register_file_datasets([f"voc:{given}"], voc_classes=("tree", "bush"))
    coco_json = tmp_path / "three.json"
    coco_json.write_text(
        json.dumps(
            {
                "images": [],
                "annotations": [],
                "categories": [{"id": i, "name": n} for i, n in enumerate("abc", 1)],
            }
        )
    )
    with pytest.raises(
        ValueError,
        match=r"the training datasets have different classes: 'voc:.*train' \['bush', 'tree'\]",
    ):
        config_from_file(
            SYNTHETIC,
            [
                "DATASETS.TRAIN",
                f"('voc:{train}', 'coco:{coco_json}')",
                "DATASETS.TEST",
                "()",
                "MODEL.RETINANET_PLUGIN.NUM_CLASSES_FROM_DATA",
                "True",
            ],
        )
    cfg, _ = config_from_file(
        SYNTHETIC,
        [
            "DATASETS.TRAIN",
            f"('voc:{given}',)",
            "DATASETS.TEST",
            f"('voc:{three}',)",
            "DATASETS.VOC_CLASSES",
            "('bush', 'tree')",
            "MODEL.RETINANET_PLUGIN.NUM_CLASSES_FROM_DATA",
            "True",
        ],
    )
    assert cfg.MODEL.RETINANET.NUM_CLASSES == 2
    with pytest.raises(VocAnnotationError, match=r"has objects named \['rock'\]"):
        RetinaNetPluginTrainer.build_test_loader(cfg, f"voc:{three}")


def _load_predict_tool():
    return load_script("tools/predict.py")


class _OneBoxPredictor:
    """A stand-in for the model: one detection of class 1 per image."""

    def __init__(self, cfg):
        pass

    def __call__(self, images):
        out = []
        for image in images:
            instances = Instances(image.shape[:2])
            instances.pred_boxes = Boxes(torch.tensor([[10.0, 20.0, 50.0, 60.0]]))
            instances.scores = torch.tensor([0.9])
            instances.pred_classes = torch.tensor([1])
            out.append({"instances": instances})
        return out


def test_class_names_reach_the_visualizer_of_the_predict_tool(tmp_path, monkeypatch):
    from detectron2.utils.visualizer import Visualizer

    folder = _flat_folder(tmp_path / "val", [[TREE, BUSH]])
    drawn_labels = []
    original = Visualizer.overlay_instances

    def recording_overlay(self, *args, **kwargs):
        drawn_labels.append(kwargs.get("labels"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Visualizer, "overlay_instances", recording_overlay)
    predict = _load_predict_tool()
    records = predict.main(
        [
            "--config-file",
            SYNTHETIC,
            "--input",
            str(folder / "0.png"),
            "--output",
            str(tmp_path / "out"),
            "DATASETS.TEST",
            f"('voc:{folder}',)",
            "DATASETS.TRAIN",
            "()",
        ],
        make_predictor=_OneBoxPredictor,
    )
    assert records[0]["labels"] == ["tree"]  # class 1 of ['bush', 'tree']
    assert len(drawn_labels) == 1 and drawn_labels[0][0].startswith("tree ")


def test_train_net_on_voc_folders_without_python(tmp_path):
    """train_net.py main with voc: datasets from the command line: the classes come from the XML,
    the evaluator names them, the evaluation folder is named after the dataset."""
    train = _flat_folder(tmp_path / "train", [[TREE, BUSH], [TREE], [BUSH], [TREE, BUSH]])
    val = _flat_folder(tmp_path / "val", [[TREE, BUSH], [("tree", (1, 1, 40, 30), True), BUSH]])
    spec = importlib.util.spec_from_file_location(
        "train_net_voc", os.path.join(REPO_ROOT, "train_net.py")
    )
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)
    from detectron2.engine import default_argument_parser

    out = tmp_path / "out"
    args = default_argument_parser().parse_args(
        [
            "--config-file",
            SYNTHETIC,
            "DATASETS.TRAIN",
            f"('voc:{train}',)",
            "DATASETS.TEST",
            f"('voc:{val}',)",
            "MODEL.RETINANET_PLUGIN.NUM_CLASSES_FROM_DATA",
            "True",
            "SOLVER.IMS_PER_BATCH",
            "2",
            "SOLVER.MAX_ITER",
            "2",
            "SOLVER.WARMUP_ITERS",
            "1",
            "SOLVER.STEPS",
            "(5,)",
            "SOLVER.CHECKPOINT_PERIOD",
            "100",
            "INPUT.MIN_SIZE_TRAIN",
            "(96,)",
            "INPUT.MIN_SIZE_TEST",
            "96",
            "DATALOADER.NUM_WORKERS",
            "0",
            "MODEL.RETINANET.SCORE_THRESH_TEST",
            "0.0",
            "OUTPUT_DIR",
            str(out),
        ]
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_net.main(args)
    finally:
        torch.set_num_threads(threads)
    with open(out / "config.yaml") as f:
        assert "NUM_CLASSES: 2" in f.read()
    with open(out / "metrics.json") as f:
        evaluated = [json.loads(line) for line in f if "bbox/AP" in line][-1]
    assert {"bbox/AP", "bbox/AP50", "bbox/AP-bush", "bbox/AP-tree"} <= set(evaluated)
    folders = os.listdir(out / "inference")
    assert len(folders) == 1 and ":" not in folders[0] and "/" not in folders[0]
    assert (out / "inference" / folders[0] / "coco_instances_results.json").is_file()
    assert f"Evaluation results for voc:{val} in csv format" in (out / "log.txt").read_text()
