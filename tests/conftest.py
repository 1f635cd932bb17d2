"""Shared fixtures: small CPU configs of the plugin's RetinaNet."""

import os
import sys

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# helpers beside the tests (spawned workers)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: end-to-end runs of train_net.py / tools (run in CI too)"
    )
    config.addinivalue_line("markers", "cuda: needs a CUDA device; skipped without one")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device on this machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def make_small_cfg(depth: int = 18, num_classes: int = 5, **overrides):
    """The R50 config shrunk for CPU tests: ResNet ``depth``, plugin keys added, CPU device."""
    from retinanet_plugin import model_zoo

    cfg = model_zoo.get_config("retinanet_R50.yaml")
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH = depth
    if depth in (18, 34):
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RETINANET.NUM_CLASSES = num_classes
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = getattr(node, p)
        setattr(node, leaf, value)
    return cfg


@pytest.fixture
def small_cfg():
    return make_small_cfg


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory):
    """A DETECTRON2_DATASETS folder holding the synthetic dataset (generated once per test
    module)."""
    from retinanet_plugin.data.synthetic_shapes import DATASET_DIRNAME, ensure_synthetic_shapes

    root = tmp_path_factory.mktemp("datasets")
    ensure_synthetic_shapes(str(root / DATASET_DIRNAME))
    return root
