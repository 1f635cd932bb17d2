"""The checkpoint package: ``path?matching_heuristics=True`` in the trainer's checkpointer (as
Detectron2's ``DetectionCheckpointer`` reads it), and the package's shape (one home per fact, no
module reaching into another's underscored names).
"""

import ast
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from retinanet_plugin import model_zoo
from retinanet_plugin.checkpoint import (
    CheckedDetectionCheckpointer,
    CheckpointPathError,
    CheckpointReadError,
    parse_checkpoint_path,
)
from retinanet_plugin.checkpoint.retinanet_layout import class_count

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC = "synthetic/retinanet_R18_synthetic.yaml"


def _small_model(seed=123):
    cfg = model_zoo.get_config(SYNTHETIC)
    cfg.MODEL.RETINANET_PLUGIN.FOCAL_LOSS_IMPL = "reference"
    torch.manual_seed(seed)
    return build_model(cfg).eval()


@pytest.fixture(scope="module")
def source_model():
    model = _small_model(seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # differs from any fresh initialisation
    return model


def _other_prefixes(name):
    """Names as a bare ResNet and a bare FPN write them: ``backbone.bottom_up.res2.0.conv1.weight``
    -> ``res2.0.conv1.weight``, ``backbone.fpn_lateral3.weight`` -> ``fpn_lateral3.weight``."""
    for prefix in ("backbone.bottom_up.", "backbone."):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def _write(model, path, rename=lambda name: name):
    """A model-zoo ``.pkl`` (numpy arrays, ``__author__``) or a ``.pth`` of tensors."""
    state = {rename(k): v for k, v in model.state_dict().items()}
    if path.suffix == ".pkl":
        with open(path, "wb") as f:
            arrays = {k: v.numpy() for k, v in state.items()}
            pickle.dump({"model": arrays, "__author__": "Detectron2 Model Zoo"}, f)
    else:
        torch.save({"model": state}, path)
    return str(path)


def _differing(expected_model, model):
    expected = expected_model.state_dict()
    return sorted(k for k, v in model.state_dict().items() if not torch.equal(v, expected[k]))


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_other_prefixes_load_with_matching_heuristics(source_model, tmp_path, suffix):
    path = _write(source_model, tmp_path / f"model_zoo{suffix}", rename=_other_prefixes)
    read = CheckedDetectionCheckpointer(_small_model())._read(path)
    assert "res2.0.conv1.weight" in read["model"]

    model = _small_model()
    returned = CheckedDetectionCheckpointer(model).load(
        path + "?matching_heuristics=True", checkpointables=[]
    )
    assert _differing(source_model, model) == []  # every weight where it belongs
    assert "model" not in returned and returned["matching_heuristics"] is True

    if suffix == ".pth":  # Detectron2's own checkpointer puts them in the same places
        reference = _small_model()
        DetectionCheckpointer(reference).load(path + "?matching_heuristics=True")
        for key, value in reference.state_dict().items():
            assert torch.equal(value, model.state_dict()[key]), key


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_a_path_without_the_query_loads_as_before(source_model, tmp_path, suffix):
    same_names = _write(source_model, tmp_path / f"same{suffix}")
    model = _small_model()
    assert CheckedDetectionCheckpointer(model).load(same_names, checkpointables=[]) is not None
    assert _differing(source_model, model) == []

    # names with other prefixes are not matched without the query: those weights stay fresh
    other = _write(source_model, tmp_path / f"other{suffix}", rename=_other_prefixes)
    model, fresh = _small_model(), _small_model()
    CheckedDetectionCheckpointer(model).load(other, checkpointables=[])
    renamed = [k for k in model.state_dict() if _other_prefixes(k) != k]
    unchanged = [k for k in renamed if torch.equal(model.state_dict()[k], fresh.state_dict()[k])]
    assert renamed and unchanged == renamed
    assert parse_checkpoint_path(other).file == other

    missing = str(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match=f"checkpoint file {missing} does not exist"):
        CheckedDetectionCheckpointer(_small_model()).load(missing)
    with pytest.raises(FileNotFoundError, match=f"checkpoint file {missing} does not exist"):
        CheckedDetectionCheckpointer(_small_model()).load(missing + "?matching_heuristics=True")


@pytest.mark.parametrize(
    "query, expected",
    [
        ("matching_heuristics=yes", "matching_heuristics='yes', expected True or False"),
        ("matching_heuristics=true", "matching_heuristics='true', expected True or False"),
        ("matching_heuristics", "matching_heuristics='', expected True or False"),
        ("matching_heuristic=True", "unknown option 'matching_heuristic'"),
        (
            "matching_heuristics=True&matching_heuristics=False",
            "'matching_heuristics' is given twice",
        ),
    ],
)
def test_a_bad_query_is_an_error_naming_the_path(source_model, tmp_path, query, expected):
    path = _write(source_model, tmp_path / "model.pth") + "?" + query
    model, fresh = _small_model(), _small_model()
    with pytest.raises(CheckpointPathError) as error:
        CheckedDetectionCheckpointer(model).load(path)
    assert str(error.value).startswith(f"checkpoint path {path}: ") and expected in str(error.value)
    assert isinstance(error.value, CheckpointReadError) and isinstance(error.value, ValueError)
    assert _differing(fresh, model) == []  # nothing was loaded


def test_class_count_reads_the_head_shapes_and_never_divides_by_zero():
    def head(cls_out, box_out):
        return {
            "head.cls_score.weight": np.zeros((cls_out, 1, 3, 3)),
            "head.bbox_pred.weight": np.zeros((box_out, 1, 3, 3)),
        }

    assert class_count(head(9 * 80, 9 * 4)) == 80
    assert class_count(head(10, 9 * 4)) is None  # not a multiple of the 9 anchors
    assert class_count(head(10, 0)) is None and class_count(head(10, 6)) is None
    assert class_count({"head.cls_score.weight": np.zeros(())}) is None


# ------------------------------------------------------------------------------------------------
# The package's shape
# ------------------------------------------------------------------------------------------------

CHECKPOINT_MODULES = sorted((REPO / "retinanet_plugin" / "checkpoint").glob("*.py"))
USERS = [
    REPO / "retinanet_plugin" / "engine" / "batch_predictor.py",
    REPO / "tools" / "convert_detectron2_retinanet.py",
]


@pytest.mark.parametrize("path", CHECKPOINT_MODULES + USERS, ids=lambda p: p.name)
def test_no_module_imports_another_modules_underscored_names(path):
    tree = ast.parse(path.read_text())
    private = [
        f"{node.module}.{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.name.startswith("_") and node.module != "__future__"
    ]
    assert private == []


@pytest.mark.parametrize("path", CHECKPOINT_MODULES, ids=lambda p: p.name)
def test_checkpoint_modules_are_short_with_short_lines_and_functions(path):
    text = path.read_text()
    assert len(text.splitlines()) < 400
    assert [n for n, line in enumerate(text.splitlines(), 1) if len(line) > 100] == []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert node.end_lineno - node.lineno < 60, node.name


def test_the_facts_have_one_home():
    """The head names, the ``module.`` prefix and torch's weights_only refusal are written once."""
    texts = {p.name: p.read_text() for p in CHECKPOINT_MODULES + USERS}
    for fact, home in (
        ('"head.cls_score.weight"', "retinanet_layout.py"),
        ('"module."', "weight_entries.py"),
        ('"weights_only"', "reading.py"),
        ("pickle.load(", None),  # never plain pickle: .pkl files go through safe_pickle
    ):
        holders = sorted(name for name, text in texts.items() if fact in text)
        assert holders == ([home] if home else []), fact
