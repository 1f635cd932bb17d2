"""Input that cannot hurt: ``.pkl`` checkpoints are read with a restricted unpickler, in the
conversion tool and in the trainer's checkpointer (``train_net.py --eval-only MODEL.WEIGHTS
x.pkl``), and the plugin's YAML files load with ``yaml.safe_load``.

A crafted pickle whose unpickling would run ``touch <marker>`` through ``os.system`` is the attack:
it is shown to run the command through plain ``pickle.load`` (so the refusals below refuse something
real), and then to be refused, with the file and the global named, through every plugin path, the
marker never appearing.
"""

import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from detectron2 import model_zoo as d2_model_zoo
from detectron2.modeling import build_model

from retinanet_plugin import model_zoo
from retinanet_plugin.checkpoint import (
    CheckedDetectionCheckpointer,
    CheckpointReadError,
    ForbiddenPickleGlobalError,
    UnreadablePickleError,
    load_detectron2_checkpoint,
    load_pickle_checkpoint,
)
from retinanet_plugin.checkpoint.safe_pickle import restricted_pickle_load
from retinanet_plugin.engine import config_from_file
from script_module import load_script  # a helper beside the tests

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "convert_detectron2_retinanet.py"
SYNTHETIC = "synthetic/retinanet_R18_synthetic.yaml"


def _env():
    """For programs run by the tests: this checkout's package first, one thread."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")


convert_tool = load_script("tools/convert_detectron2_retinanet.py")


class _RunsCommand:
    """Pickles to ``os.system(command)``: what a crafted checkpoint does (os.system pickles as
    posix.system)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _small_model():
    cfg = model_zoo.get_config(SYNTHETIC)
    cfg.MODEL.RETINANET_PLUGIN.FOCAL_LOSS_IMPL = "reference"
    return build_model(cfg).eval()


@pytest.fixture(scope="module")
def source_model():
    torch.manual_seed(0)
    model = _small_model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # differs from any fresh initialisation
    return model


def _model_zoo_pkl(model, path, protocol=pickle.DEFAULT_PROTOCOL, **extra):
    """A .pkl as Detectron2's model zoo writes it: numpy arrays under "model", plus "__author__" and
    friends."""
    with open(path, "wb") as f:
        state = {k: v.numpy() for k, v in model.state_dict().items()}
        pickle.dump(
            {"model": state, "__author__": "Detectron2 Model Zoo", **extra}, f, protocol=protocol
        )
    return str(path)


def _crafted_pkl(model, path, marker):
    """A real-looking model-zoo .pkl with one extra entry whose unpickling runs ``touch marker``."""
    with open(path, "wb") as f:
        state = {k: v.numpy() for k, v in model.state_dict().items()}
        state["head.extra"] = _RunsCommand(f"touch {marker}")
        pickle.dump({"model": state, "__author__": "Detectron2 Model Zoo"}, f)
    return str(path)


def _assert_same_weights(expected_model, model):
    expected = expected_model.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


# ==================================================================================================
# .pkl checkpoints
# ==================================================================================================


def test_the_crafted_pickle_runs_its_command_under_plain_pickle(source_model, tmp_path):
    """The attack is real: plain pickle.load (what Detectron2's DetectionCheckpointer does) runs the
    command."""
    marker = tmp_path / "ran"
    path = _crafted_pkl(source_model, tmp_path / "crafted.pkl", marker)
    with open(path, "rb") as f:
        pickle.load(f, encoding="latin1")
    assert marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("heuristics", [False, True])
def test_a_model_zoo_pkl_loads_through_the_checkpointer_and_the_tool(
    source_model, tmp_path, protocol, heuristics
):
    extra = {"matching_heuristics": True} if heuristics else {}
    path = _model_zoo_pkl(source_model, tmp_path / "model_zoo.pkl", protocol=protocol, **extra)

    data = load_pickle_checkpoint(path)
    assert (
        set(data) == {"model", "__author__", *extra}
        and data["__author__"] == "Detectron2 Model Zoo"
    )
    for key, value in source_model.state_dict().items():
        assert isinstance(data["model"][key], np.ndarray) and np.array_equal(
            data["model"][key], value.numpy()
        ), key

    model = _small_model()
    CheckedDetectionCheckpointer(model).load(path, checkpointables=[])
    _assert_same_weights(source_model, model)

    # the tool on one variant: it reads .pkl files with the same unpickler
    if protocol == 2 and not heuristics:
        output = tmp_path / "converted.pth"
        report = convert_tool.main(["--input", path, "--output", str(output)])
        assert report["num_classes"] == 5 and report["converted_from_numpy"] == len(
            source_model.state_dict()
        )
        model = _small_model()
        CheckedDetectionCheckpointer(model).load(str(output), checkpointables=[])
        _assert_same_weights(source_model, model)


def test_a_caffe2_style_pkl_still_goes_to_detectron2s_name_matching(tmp_path):
    """Detectron1/Caffe2 files (ImageNet-pretrained backbones, "blobs") keep Detectron2's
    interpretation."""
    path = tmp_path / "R-18.pkl"
    blobs = {
        "conv1_w": np.ones((64, 3, 7, 7), np.float32),
        "conv1_w_momentum": np.zeros((64, 3, 7, 7), np.float32),
    }
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs}, f, protocol=2)
    checkpointer = CheckedDetectionCheckpointer(_small_model())
    data = checkpointer._read(str(path))
    assert data["__author__"] == "Caffe2" and data["matching_heuristics"] is True
    assert list(data["model"]) == ["conv1_w"]  # momentum blobs dropped, as Detectron2 does


def test_a_crafted_pkl_is_refused_by_the_checkpointer_naming_file_and_global(
    source_model, tmp_path
):
    marker = tmp_path / "ran"
    path = _crafted_pkl(source_model, tmp_path / "crafted.pkl", marker)
    with pytest.raises(CheckpointReadError) as error:
        CheckedDetectionCheckpointer(_small_model()).load(path, checkpointables=[])
    message = str(error.value)
    assert message.startswith(
        f"checkpoint file {path} is refused: it asks for the global 'posix.system'"
    )
    assert "nothing in it was run" in message
    assert not marker.exists()


def test_a_crafted_pkl_is_refused_by_train_net_eval_only(source_model, tmp_path):
    """The path of ``train_net.py --eval-only MODEL.WEIGHTS x.pkl``, as a program."""
    marker = tmp_path / "ran"
    path = _crafted_pkl(source_model, tmp_path / "crafted.pkl", marker)
    config = model_zoo.get_config_file(SYNTHETIC)
    proc = subprocess.run(
        [
            sys.executable,
            "train_net.py",
            "--config-file",
            config,
            "--eval-only",
            "MODEL.WEIGHTS",
            path,
            "DATASETS.TEST",
            "()",
            "MODEL.RETINANET_PLUGIN.FOCAL_LOSS_IMPL",
            "reference",
            "OUTPUT_DIR",
            str(tmp_path / "out"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
    )
    assert proc.returncode != 0
    assert (
        f"CheckpointReadError: checkpoint file {path} is refused: it asks for the global "
        "'posix.system'" in proc.stderr
    )
    assert not marker.exists()


def test_a_crafted_pkl_is_refused_by_the_conversion_tool(source_model, tmp_path):
    marker = tmp_path / "ran"
    path = _crafted_pkl(source_model, tmp_path / "crafted.pkl", marker)
    output = tmp_path / "out.pth"
    proc = subprocess.run(
        [sys.executable, str(TOOL), "--input", path, "--output", str(output)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
    )
    assert proc.returncode == 1
    assert (
        f"error: checkpoint file {path} is refused: it asks for the global 'posix.system'"
        in proc.stderr
    )
    assert "Traceback" not in proc.stderr
    assert not marker.exists() and not output.exists()
    with pytest.raises(
        ForbiddenPickleGlobalError
    ) as error:  # in-process: the same refusal, as a ValueError
        convert_tool.main(["--input", path, "--output", str(output)])
    assert error.value.global_name == "posix.system" and error.value.path == path
    assert isinstance(error.value, ValueError) and not marker.exists()


def _global_opcodes(module, name, argument="x"):
    """Hand-written pickles that call ``module.name(argument)``, through each opcode that names a
    global."""
    arg = argument.encode()

    def short(s):  # SHORT_BINUNICODE
        return b"\x8c" + bytes([len(s)]) + s.encode()

    return {
        "GLOBAL": b"c" + f"{module}\n{name}\n".encode() + b"(V" + arg + b"\ntR.",
        "STACK_GLOBAL": b"\x80\x04"
        + short(module)
        + short(name)
        + b"\x93"
        + short(argument)
        + b"\x85R.",
        "INST": b"(V" + arg + b"\ni" + f"{module}\n{name}\n".encode() + b".",
    }


@pytest.mark.parametrize(
    "global_name",
    [
        "posix.system",
        "os.system",
        "builtins.eval",
        "builtins.exec",
        "builtins.getattr",
        "builtins.__import__",
        "__builtin__.eval",
        "subprocess.Popen",
        "pickle.loads",
        "copyreg._reconstructor",
        "torch._utils._rebuild_tensor_v2",
        "numpy.load",
        "numpy.testing._private.utils.runstring",
        "collections.defaultdict",
        "builtins.object",
    ],
)
def test_every_global_outside_the_admitted_ones_is_refused_before_it_is_called(
    tmp_path, global_name
):
    module, name = global_name.rsplit(".", 1)
    for opcode, data in _global_opcodes(module, name).items():
        path = tmp_path / f"{opcode}.pkl"
        path.write_bytes(data)
        with pytest.raises(ForbiddenPickleGlobalError) as error:
            load_pickle_checkpoint(str(path))
        assert error.value.global_name == global_name, opcode
        assert f"checkpoint file {path} is refused: it asks for the global '{global_name}'" in str(
            error.value
        )
        with pytest.raises(CheckpointReadError, match=f"asks for the global '{global_name}'"):
            CheckedDetectionCheckpointer(torch.nn.Linear(1, 1))._read(str(path))


def test_the_hand_written_pickles_do_call_their_global():
    """The opcodes above are well formed: with an admitted global they build the object."""
    for opcode, data in _global_opcodes("builtins", "str", "42").items():
        assert restricted_pickle_load(data) == "42", opcode
        assert pickle.loads(data) == "42", opcode


def test_admitted_callables_cannot_be_turned_into_huge_allocations():
    """bytes(n), numpy.ndarray(shape) and _reconstruct with a real shape would allocate whatever the
    file asks."""
    huge = 2**62
    cases = {
        f"cbuiltins\nbytes\n(I{huge}\ntR.": "bytes(4611686018427387904) from an integer size",
        f"c__builtin__\nbytearray\n(I{huge}\ntR.": (
            "bytearray(4611686018427387904) from an integer size"
        ),
        f"cnumpy\nndarray\n((I{huge}\nttR.": "not callable",
        f"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(I{huge}\ntVb\ntR.": (
            "empty placeholder shape"
        ),
        "c_codecs\nencode\n(Vabc\nVrot13\ntR.": "is not how pickle stores bytes",
    }
    for text, expected in cases.items():
        with pytest.raises(UnreadablePickleError, match="cannot be read") as error:
            restricted_pickle_load(text.encode(), "bomb.pkl")
        assert expected in str(error.value), text


def test_a_pth_that_asks_for_a_global_is_refused_naming_it(source_model, tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "crafted.pth"
    torch.save({"model": source_model.state_dict(), "extra": _RunsCommand(f"touch {marker}")}, path)
    with pytest.raises(CheckpointReadError) as error:
        CheckedDetectionCheckpointer(_small_model()).load(str(path), checkpointables=[])
    assert (
        f"checkpoint file {path} holds objects that torch.load(weights_only=True) refuses"
        in str(error.value)
    )
    assert "it asks for the global 'posix.system'" in str(error.value)
    with pytest.raises(ValueError, match="it asks for the global 'posix.system'"):
        load_detectron2_checkpoint(str(path))
    assert not marker.exists()


@pytest.mark.parametrize(
    "bad, expected",
    [
        ("text", "holds 'head.cls_score.bias' as a str, not a tensor or numpy array"),
        (
            np.array(["a", "b"]),
            "holds 'head.cls_score.bias' as a numpy array of dtype <U1, which torch cannot take",
        ),
        (
            np.full(4, np.nan, np.float32),
            "holds NaN or infinite values in 1 weights (head.cls_score.bias)",
        ),
    ],
)
def test_weights_that_are_not_numbers_are_named(source_model, tmp_path, bad, expected):
    state = {k: v.numpy() for k, v in source_model.state_dict().items()}
    state["head.cls_score.bias"] = bad
    path = tmp_path / "bad.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "someone"}, f)
    with pytest.raises(CheckpointReadError) as error:
        CheckedDetectionCheckpointer(_small_model()).load(str(path), checkpointables=[])
    assert str(error.value) == f"checkpoint file {path} {expected}" + (
        ": it is damaged" if "NaN" in expected else ""
    )


# ==================================================================================================
# YAML
# ==================================================================================================

CONFIG_ROOT = REPO / "configs"
PLUGIN_YAMLS = sorted(str(p.relative_to(CONFIG_ROOT)) for p in CONFIG_ROOT.rglob("*.yaml"))
D2_ZOO = Path(d2_model_zoo.__file__).parent / "configs"


def _paper_sizes(smallest):
    """The paper's anchor sizes as Detectron2's Base-RetinaNet.yaml computes them with
    !!python/object/apply:eval."""
    return [
        [x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [smallest * 2**i for i in range(5)]
    ]


def test_there_are_plugin_yamls_to_check():
    assert {
        "Base-RetinaNet.yaml",
        "retinanet_R50.yaml",
        "synthetic/retinanet_R18_synthetic.yaml",
    } <= set(PLUGIN_YAMLS)


@pytest.mark.parametrize("name", PLUGIN_YAMLS)
def test_every_plugin_yaml_loads_with_the_safe_loader(name, caplog):
    text = (CONFIG_ROOT / name).read_text()
    assert all("!!python" not in line.split("#")[0] for line in text.splitlines()), (
        f"{name} has a python tag"
    )
    assert isinstance(yaml.safe_load(text), dict)  # raises ConstructorError on any python tag
    # through Detectron2's loader: fvcore tries yaml.safe_load first and says so when it falls back
    # to unsafe_load
    with caplog.at_level(logging.WARNING, logger="fvcore.common.config"):
        config_from_file(str(CONFIG_ROOT / name))
    assert "unsafe_load" not in caplog.text


@pytest.mark.parametrize(
    "name, smallest",
    [
        ("Base-RetinaNet.yaml", 32),
        ("retinanet_R50.yaml", 32),
        ("retinanet_R50_3x.yaml", 32),
        ("retinanet_R101_3x.yaml", 32),
        ("synthetic/retinanet_R18_synthetic.yaml", 16),
    ],
)
def test_written_out_anchor_sizes_equal_the_evaluated_expression(name, smallest):
    sizes = model_zoo.get_config(name).MODEL.ANCHOR_GENERATOR.SIZES
    # exactly: the YAML holds the floats' shortest round-trip digits
    assert sizes == _paper_sizes(smallest)
    assert len(sizes) == 5 and all(len(level) == 3 for level in sizes)


@pytest.mark.parametrize(
    "name",
    [
        "COCO-Detection/retinanet_R_50_FPN_1x.yaml",
        "COCO-Detection/retinanet_R_101_FPN_3x.yaml",
        "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml",
    ],
)
def test_detectron2_model_zoo_yamls_still_load_through_the_plugin_config_path(name, caplog):
    path = D2_ZOO / name
    assert path.is_file()
    with caplog.at_level(logging.WARNING, logger="fvcore.common.config"):
        cfg, _ = config_from_file(str(path))
    # Detectron2's own Base-RetinaNet.yaml still uses the python tag: it loads, with fvcore's unsafe
    # fallback
    if "retinanet" in name:
        assert (
            cfg.MODEL.META_ARCHITECTURE == "RetinaNet"
            and cfg.MODEL.ANCHOR_GENERATOR.SIZES == _paper_sizes(32)
        )
        assert "unsafe_load" in caplog.text
    assert "RETINANET_PLUGIN" in cfg.MODEL


def test_a_user_yaml_based_on_detectron2s_zoo_still_loads(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text(
        f'_BASE_: "{D2_ZOO / "COCO-Detection" / "retinanet_R_50_FPN_1x.yaml"}"\n'
        "MODEL:\n  RETINANET:\n    NUM_CLASSES: 3\n"
    )
    cfg, _ = config_from_file(str(user))
    assert (
        cfg.MODEL.RETINANET.NUM_CLASSES == 3
        and cfg.MODEL.ANCHOR_GENERATOR.SIZES == _paper_sizes(32)
    )


# ==================================================================================================
# COCO json files that Detectron2 cannot load (found by tests/test_fuzz_input.py)
# ==================================================================================================


@pytest.fixture
def coco_dataset(tmp_path):
    """write(coco dict or raw bytes) -> (registered dataset name, json path); unregistered after the
    test."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.new("RGB", (64, 48), (90, 40, 200)).save(tmp_path / "images" / "0.png")
    names = []

    def write(content):
        json_file = tmp_path / f"{len(names)}.json"
        json_file.write_bytes(
            content if isinstance(content, bytes) else json.dumps(content).encode()
        )
        name = f"untrusted_{len(names)}_{os.getpid()}"
        register_coco_instances(name, {}, str(json_file), str(tmp_path / "images"))
        names.append(name)
        return name, json_file

    yield write
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _coco(**changes):
    coco = {
        "images": [{"id": 1, "file_name": "0.png", "height": 48, "width": 64}],
        "annotations": [
            {"id": 7, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20], "iscrowd": 0}
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    coco.update(changes)
    return coco


def _load(name):
    from retinanet_plugin.data import load_checked_dataset_dicts

    cfg = model_zoo.get_config(SYNTHETIC)
    cfg.MODEL.RETINANET.NUM_CLASSES = 2
    return load_checked_dataset_dicts(cfg, name, is_train=True)


def test_a_malformed_coco_json_is_named_with_where_it_breaks(coco_dataset):
    from retinanet_plugin.data import DatasetValidationError

    text = json.dumps(_coco())
    with pytest.raises(json.JSONDecodeError) as parse_error:
        json.loads(text[:40])
    where = f"{parse_error.value.msg}: line 1, column {parse_error.value.colno}"
    for content, expected in (
        (text[:40].encode(), f"is not valid JSON ({where}): it is truncated or corrupt"),
        (b"\xff\xfe" + text.encode(), "is not UTF-8 text (byte 0xff at offset 0)"),
        (
            b"[1, 2]",
            "holds a JSON list, not an object with 'images', 'annotations' and 'categories'",
        ),
        (b"", "is empty"),
    ):
        name, json_file = coco_dataset(content)
        with pytest.raises(DatasetValidationError) as error:
            _load(name)
        assert str(error.value).startswith(
            f"Dataset '{name}': the COCO json file {json_file} {expected}"
        ), str(error.value)


def test_coco_entries_detectron2_cannot_read_are_listed_by_index_and_id(coco_dataset):
    from retinanet_plugin.data import DatasetValidationError

    annotations = [
        {"id": 7, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20], "keypoints": 3},
        {
            "id": 7,
            "image_id": 1,
            "category_id": 2,
            "bbox": [4, 4, 20, 20],
            "segmentation": {"size": [48, 64]},
        },
    ]
    name, json_file = coco_dataset(
        _coco(images=[{"id": 1, "file_name": "0.png", "width": 64}], annotations=annotations)
    )
    with pytest.raises(DatasetValidationError) as error:
        _load(name)
    message = str(error.value)
    assert message.startswith(
        f"Dataset '{name}': the COCO json file {json_file} is not a COCO instances file"
    )
    for expected in (
        "1 images without height or width: images[0] (id 1) has no ['height']",
        "1 annotations with the same id: annotations[1] repeats id 7",
        "1 annotations whose keypoints are not a list of numbers: annotations[0] (id 7)",
        "1 annotations with an unreadable segmentation: annotations[1] (id 7): RLE counts is a "
        "NoneType",
    ):
        assert expected in message, message
    assert "(Detectron2: " in message  # and what Detectron2 itself raised, for reference


def test_text_boxes_and_a_train_file_without_annotations_are_errors(coco_dataset):
    from retinanet_plugin.data import DatasetValidationError

    boxes = [
        {"id": 7, "image_id": 1, "category_id": 1, "bbox": ["4", "4", "20", "20"], "iscrowd": 0}
    ]
    name, _ = coco_dataset(_coco(annotations=boxes))
    with pytest.raises(
        DatasetValidationError,
        match=r"annotation id 7 has bbox \['4', '4', '20', '20'\], not 4 numbers",
    ):
        _load(name)
    coco = _coco()
    del coco["annotations"]  # an image-info file: Detectron2 loads it as images without objects
    name, json_file = coco_dataset(coco)
    with pytest.raises(DatasetValidationError) as error:
        _load(name)
    assert (
        f"no image of ['{name}'] (from {json_file}) has an object: there is nothing to train on"
        in str(error.value)
    )
    assert len(_load(coco_dataset(_coco())[0])) == 1  # the same file with its annotations loads
