"""Importing the plugin registers its components; each is built through its registry from YAML;
configs."""

import re
from pathlib import Path

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import (
    ANCHOR_GENERATOR_REGISTRY,
    BACKBONE_REGISTRY,
    META_ARCH_REGISTRY,
    build_model,
)

import retinanet_plugin
from retinanet_plugin import model_zoo
from retinanet_plugin.modeling import RETINANET_PLUGIN_HEAD_REGISTRY

D2_ZOO = Path(__import__("detectron2").__file__).parent / "model_zoo" / "configs"


def test_import_registers_components_under_distinct_names():
    assert META_ARCH_REGISTRY.get("RetinaNetPlugin") is retinanet_plugin.modeling.RetinaNetPlugin
    assert BACKBONE_REGISTRY.get(
        "build_retinanet_plugin_resnet_fpn_backbone"
    ) is not BACKBONE_REGISTRY.get("build_retinanet_resnet_fpn_backbone")
    assert ANCHOR_GENERATOR_REGISTRY.get(
        "RetinaNetPluginAnchorGenerator"
    ) is not ANCHOR_GENERATOR_REGISTRY.get("DefaultAnchorGenerator")
    assert META_ARCH_REGISTRY.get("RetinaNet") is not META_ARCH_REGISTRY.get("RetinaNetPlugin")
    assert (
        RETINANET_PLUGIN_HEAD_REGISTRY.get("RetinaNetPluginHead")
        is retinanet_plugin.modeling.RetinaNetPluginHead
    )


def test_every_plugin_key_is_documented_beside_its_default():
    source = (Path(retinanet_plugin.__file__).parent / "config.py").read_text().splitlines()
    cfg = retinanet_plugin.add_retinanet_plugin_config(get_cfg())

    def dotted_keys(node, prefix=""):  # the keys of the node and of its sub-nodes (EMA.DECAY)
        for key, value in node.items():
            yield prefix + key
            if isinstance(value, CfgNode):
                yield from dotted_keys(value, prefix + key + ".")

    keys = set(dotted_keys(cfg.MODEL.RETINANET_PLUGIN))
    assert {"EMA.DECAY", "TTA.VOTING_IOU"} <= keys
    for key in keys:
        pattern = rf"\s*node\.{re.escape(key)}\s*="
        lines = [i for i, line in enumerate(source) if re.match(pattern, line)]
        assert len(lines) == 1, f"{key} is not assigned exactly once in config.py"
        above = source[lines[0] - 1].strip()
        # a key is documented by the comment right above it, or shares the comment block of the key
        # above it
        assert above.startswith("#") or re.match(r"node\.[\w.]+\s*=", above), (
            f"{key} has no comment beside it"
        )


def test_every_plugin_dataset_key_is_documented_beside_its_default():
    """The keys the plugin adds under DATASETS (those a plain Detectron2 config lacks) follow the
    same rule."""
    source = (Path(retinanet_plugin.__file__).parent / "config.py").read_text().splitlines()
    added = set(retinanet_plugin.add_retinanet_plugin_config(get_cfg()).DATASETS) - set(
        get_cfg().DATASETS
    )
    assert {"VOC_CLASSES", "EXIF_ORIENTATION", "MAX_IMAGE_PIXELS"} <= added
    for key in added:
        lines = [
            i for i, line in enumerate(source) if re.match(rf"\s*cfg\.DATASETS\.{key}\s*=", line)
        ]
        assert len(lines) == 1, f"DATASETS.{key} is not assigned exactly once in config.py"
        assert source[lines[0] - 1].strip().startswith("#"), (
            f"DATASETS.{key} has no comment beside it"
        )


def test_add_config_is_idempotent_and_keeps_values():
    cfg = retinanet_plugin.add_retinanet_plugin_config(get_cfg())
    cfg.MODEL.RETINANET_PLUGIN.P6P7_INPUT = "p5"
    retinanet_plugin.add_retinanet_plugin_config(cfg)
    assert cfg.MODEL.RETINANET_PLUGIN.P6P7_INPUT == "p5"


@pytest.mark.parametrize(
    "name", ["retinanet_R50.yaml", "retinanet_R50_3x.yaml", "retinanet_R101_3x.yaml"]
)
def test_shipped_configs_match_detectron2_model_zoo(name):
    """Our leaves carry the hyperparameters of Detectron2's own model-zoo configs, only the
    component names differ."""
    ours = model_zoo.get_config(name)
    d2_name = {
        "retinanet_R50.yaml": "retinanet_R_50_FPN_1x.yaml",
        "retinanet_R50_3x.yaml": "retinanet_R_50_FPN_3x.yaml",
        "retinanet_R101_3x.yaml": "retinanet_R_101_FPN_3x.yaml",
    }[name]
    theirs = retinanet_plugin.add_retinanet_plugin_config(get_cfg())
    theirs.merge_from_file(str(D2_ZOO / "COCO-Detection" / d2_name))
    assert ours.MODEL.META_ARCHITECTURE == "RetinaNetPlugin"
    assert ours.MODEL.BACKBONE.NAME == "build_retinanet_plugin_resnet_fpn_backbone"
    assert ours.MODEL.ANCHOR_GENERATOR.NAME == "RetinaNetPluginAnchorGenerator"
    for node in ("SOLVER", "INPUT", "DATASETS", "TEST", "DATALOADER"):
        assert ours[node] == theirs[node], node
    for node in ("RETINANET", "RESNETS", "FPN", "PIXEL_MEAN", "PIXEL_STD", "WEIGHTS"):
        assert ours.MODEL[node] == theirs.MODEL[node], node
    assert ours.MODEL.ANCHOR_GENERATOR.SIZES == theirs.MODEL.ANCHOR_GENERATOR.SIZES
    assert ours.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS == theirs.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS


def test_model_zoo_lists_and_rejects(tmp_path):
    names = model_zoo.list_configs()
    for expected in (
        "Base-RetinaNet.yaml",
        "retinanet_R50.yaml",
        "retinanet_R50_3x.yaml",
        "retinanet_R101_3x.yaml",
    ):
        assert expected in names
    with pytest.raises(FileNotFoundError, match="retinanet_R50.yaml"):
        model_zoo.get_config_file("retinanet_R5O.yaml")


def test_user_yaml_can_base_on_a_shipped_config(tmp_path):
    user = tmp_path / "my_retinanet.yaml"
    user.write_text(
        f'_BASE_: "{model_zoo.get_config_file("retinanet_R50_3x.yaml")}"\n'
        "MODEL:\n  RETINANET:\n    NUM_CLASSES: 3\n  RETINANET_PLUGIN:\n    P6P7_INPUT: p5\n"
    )
    cfg = retinanet_plugin.add_retinanet_plugin_config(get_cfg())
    cfg.merge_from_file(str(user))
    assert cfg.MODEL.RETINANET.NUM_CLASSES == 3
    assert cfg.MODEL.RETINANET_PLUGIN.P6P7_INPUT == "p5"
    assert cfg.SOLVER.MAX_ITER == 270000
    assert cfg.MODEL.META_ARCHITECTURE == "RetinaNetPlugin"


def test_misspelled_plugin_key_is_rejected_naming_it(tmp_path):
    user = tmp_path / "typo.yaml"
    user.write_text("MODEL:\n  RETINANET_PLUGIN:\n    P6P7_INPUTS: p5\n")
    cfg = retinanet_plugin.add_retinanet_plugin_config(get_cfg())
    with pytest.raises(KeyError, match="P6P7_INPUTS"):
        cfg.merge_from_file(str(user))


def test_components_are_built_through_registries_from_yaml(small_cfg):
    cfg = small_cfg(depth=50)
    model = build_model(cfg)
    assert type(model).__name__ == "RetinaNetPlugin"
    shapes = model.backbone.output_shape()
    assert sorted(shapes) == ["p3", "p4", "p5", "p6", "p7"]
    assert {k: v.stride for k, v in shapes.items()} == {
        "p3": 8,
        "p4": 16,
        "p5": 32,
        "p6": 64,
        "p7": 128,
    }
    assert {v.channels for v in shapes.values()} == {256}
    assert type(model.anchor_generator).__name__ == "RetinaNetPluginAnchorGenerator"
    assert type(model.head).__name__ == "RetinaNetPluginHead"
    assert model.anchor_matcher.allow_low_quality_matches is True


# p3-p7 of a 128 x 128 input: strides 8 to 128
P3_TO_P7_SIDES_OF_128_PX = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]


def pyramid_sides_of_a_128_px_image(backbone):
    out = backbone(torch.zeros(1, 3, 128, 128))
    return [tuple(out[k].shape[-2:]) for k in ("p3", "p4", "p5", "p6", "p7")]


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_backbone_depths(small_cfg, depth):
    from detectron2.modeling import build_backbone

    cfg = small_cfg(depth=depth)
    backbone = build_backbone(cfg)
    assert pyramid_sides_of_a_128_px_image(backbone) == P3_TO_P7_SIDES_OF_128_PX


def test_basic_block_resnets_of_width_64_are_detectron2s_own(small_cfg):
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    from retinanet_plugin.modeling.resnet import build_resnet

    for depth in (18, 50):
        cfg = small_cfg(depth=depth)
        torch.manual_seed(0)
        ours = build_resnet(cfg, ShapeSpec(channels=3))
        torch.manual_seed(0)
        reference = build_resnet_backbone(cfg, ShapeSpec(channels=3))
        ours_state, reference_state = ours.state_dict(), reference.state_dict()
        assert list(ours_state) == list(reference_state)
        assert all(torch.equal(ours_state[k], reference_state[k]) for k in ours_state)


def test_narrow_r18_has_the_widths_asked_for_and_the_same_layout(small_cfg):
    from detectron2.modeling import build_backbone

    narrow_cfg = small_cfg(
        depth=18, **{"MODEL.RESNETS.RES2_OUT_CHANNELS": 32, "MODEL.RESNETS.STEM_OUT_CHANNELS": 16}
    )
    narrow, wide = build_backbone(narrow_cfg), build_backbone(small_cfg(depth=18))
    shapes = narrow.bottom_up.output_shape()
    assert {k: v.channels for k, v in shapes.items()} == {"res3": 64, "res4": 128, "res5": 256}
    assert narrow.bottom_up.stem.conv1.out_channels == 16
    # the same modules under the same names: only the widths differ (res2's first block gets a
    # shortcut, its input having 16 channels)
    narrow_names = set(narrow.state_dict()) - {
        n for n in narrow.state_dict() if "res2.0.shortcut" in n
    }
    assert narrow_names == set(wide.state_dict())
    params = sum(p.numel() for p in narrow.bottom_up.parameters())
    wide_params = sum(p.numel() for p in wide.bottom_up.parameters())
    assert params < wide_params / 3.5
    assert pyramid_sides_of_a_128_px_image(narrow) == P3_TO_P7_SIDES_OF_128_PX


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("MODEL.RESNETS.RES2_OUT_CHANNELS", 0, "RES2_OUT_CHANNELS must be positive"),
        ("MODEL.RESNETS.RES5_DILATION", 2, "RES5_DILATION must be 1 for R18"),
        ("MODEL.RESNETS.NUM_GROUPS", 2, "NUM_GROUPS must be 1 for R18"),
        ("MODEL.RESNETS.DEFORM_ON_PER_STAGE", [False, True, False, False], "DEFORM_ON"),
    ],
)
def test_narrow_r18_refuses_what_basic_blocks_do_not_have(small_cfg, key, value, message):
    from detectron2.modeling import build_backbone

    overrides = {"MODEL.RESNETS.RES2_OUT_CHANNELS": 32, key: value}
    with pytest.raises(ValueError, match=message):
        build_backbone(small_cfg(depth=18, **overrides))


def test_p6_from_p5_option(small_cfg):
    from detectron2.modeling import build_backbone

    res5 = build_backbone(small_cfg(depth=50))
    p5 = build_backbone(small_cfg(depth=50, **{"MODEL.RETINANET_PLUGIN.P6P7_INPUT": "p5"}))
    assert res5.top_block.p6.in_channels == 2048 and res5.top_block.in_feature == "res5"
    assert p5.top_block.p6.in_channels == 256 and p5.top_block.in_feature == "p5"
    with pytest.raises(ValueError, match="MODEL.RETINANET_PLUGIN.P6P7_INPUT"):
        build_backbone(small_cfg(**{"MODEL.RETINANET_PLUGIN.P6P7_INPUT": "c6"}))


@pytest.mark.parametrize(
    "key,value,message",
    [
        (
            "MODEL.RETINANET.IN_FEATURES",
            ["p3", "p4", "p5", "p6", "p8"],
            "MODEL.RETINANET.IN_FEATURES",
        ),
        ("MODEL.RETINANET.IOU_THRESHOLDS", [0.5, 0.4], "MODEL.RETINANET.IOU_THRESHOLDS"),
        ("MODEL.ANCHOR_GENERATOR.SIZES", [[32], [64], [128]], "MODEL.ANCHOR_GENERATOR.SIZES"),
        (
            "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS",
            [[0.5], [1.0]],
            "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS",
        ),
        (
            "MODEL.RETINANET_PLUGIN.LOSS_NORMALIZER",
            "mean",
            "MODEL.RETINANET_PLUGIN.LOSS_NORMALIZER",
        ),
        (
            "MODEL.RETINANET_PLUGIN.FOCAL_LOSS_IMPL",
            "cuda",
            "MODEL.RETINANET_PLUGIN.FOCAL_LOSS_IMPL",
        ),
        ("MODEL.RETINANET.BBOX_REG_LOSS_TYPE", "l2", "MODEL.RETINANET.BBOX_REG_LOSS_TYPE"),
        ("MODEL.RETINANET.PRIOR_PROB", 1.5, "MODEL.RETINANET.PRIOR_PROB"),
    ],
)
def test_bad_config_values_name_the_key(small_cfg, key, value, message):
    cfg = small_cfg(**{key: value})
    with pytest.raises(ValueError, match=re.escape(message)):
        build_model(cfg)


@pytest.mark.parametrize("name,expected", [("SGD", torch.optim.SGD), ("AdamW", torch.optim.AdamW)])
def test_trainer_optimizer_choice(small_cfg, name, expected):
    from retinanet_plugin.engine import RetinaNetPluginTrainer

    cfg = small_cfg(**{"MODEL.RETINANET_PLUGIN.OPTIMIZER": name, "SOLVER.BASE_LR": 0.003})
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4))
    optimizer = RetinaNetPluginTrainer.build_optimizer(cfg, model)
    assert isinstance(optimizer, expected)
    assert all(group["lr"] == 0.003 for group in optimizer.param_groups)
    # norm parameters get SOLVER.WEIGHT_DECAY_NORM (0 by default), convs SOLVER.WEIGHT_DECAY
    assert sorted({group["weight_decay"] for group in optimizer.param_groups}) == [
        0.0,
        cfg.SOLVER.WEIGHT_DECAY,
    ]


def test_trainer_rejects_unknown_optimizer(small_cfg):
    from retinanet_plugin.engine import RetinaNetPluginTrainer

    with pytest.raises(ValueError, match="MODEL.RETINANET_PLUGIN.OPTIMIZER"):
        RetinaNetPluginTrainer.build_optimizer(
            small_cfg(**{"MODEL.RETINANET_PLUGIN.OPTIMIZER": "Adam"}), torch.nn.Linear(2, 2)
        )
