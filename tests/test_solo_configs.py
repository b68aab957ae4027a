"""Every SOLO-family config loads with ``solo_d2.get_cfg()``, has at most two levels of
``_BASE_``, matches the published settings and builds; one config per variant runs a forward."""

import os

import pytest
import torch
import yaml
from detectron2.config import get_cfg as d2_get_cfg
from detectron2.modeling import build_model

import solo_d2
from solo_d2 import model_zoo
from solo_d2.modeling.backbone import DeformConv2d, DeformConvBase

pytestmark = pytest.mark.usefixtures("single_thread")


# Detectron2 Panoptic FPN baselines (tests/tools/test_panoptic_side_by_side.py trains them)
# are not SOLO configs
SOLO_CONFIGS = [
    c for c in model_zoo.list_configs() if "BiSeNet" not in c and "PanopticFPN" not in c
]
# Models of the converted checkpoints are built (and loaded strictly) in
# tests/checkpoint/test_convert_solo.py.
CONVERTED = [c for c in SOLO_CONFIGS if c.startswith("Converted/")]
SOLO_CONFIGS = [c for c in SOLO_CONFIGS if c not in CONVERTED]

EXPECTED = {  # config -> (head, depth, published schedule, min test size)
    "SOLO/R50_1x.yaml": ("SOLOHead", 50, 90000, 800),
    "SOLO/R50_3x.yaml": ("SOLOHead", 50, 270000, 800),
    "SOLO/R101_3x.yaml": ("SOLOHead", 101, 270000, 800),
    "DecoupledSOLO/R50_1x.yaml": ("DecoupledSOLOHead", 50, 90000, 800),
    "DecoupledSOLO/R50_3x.yaml": ("DecoupledSOLOHead", 50, 270000, 800),
    "DecoupledSOLO/Light_R50_3x.yaml": ("DecoupledSOLOLightHead", 50, 270000, 512),
    "SOLOv2/R50_1x.yaml": ("SOLOv2Head", 50, 90000, 800),
    "SOLOv2/R50_3x.yaml": ("SOLOv2Head", 50, 270000, 800),
    "SOLOv2/R101_3x.yaml": ("SOLOv2Head", 101, 270000, 800),
    "SOLOv2/R101_DCN_3x.yaml": ("SOLOv2Head", 101, 270000, 800),
    "SOLOv2/Light448_R18_3x.yaml": ("SOLOv2Head", 18, 270000, 448),
    "SOLOv2/Light448_R34_3x.yaml": ("SOLOv2Head", 34, 270000, 448),
    "SOLOv2/Light448_R50_3x.yaml": ("SOLOv2Head", 50, 270000, 448),
    "SOLOv2/Light512_DCN_R50_3x.yaml": ("SOLOv2Head", 50, 270000, 512),
    "Cityscapes/SOLOv2_R50.yaml": ("SOLOv2Head", 50, 24000, 1024),
    "Cityscapes/SOLOv2_Light448_R50_3x.yaml": ("SOLOv2Head", 50, 72000, 448),
}

QUICK = [
    "Synthetic/SOLO_R18.yaml",
    "Synthetic/DecoupledSOLO_R18.yaml",
    "Synthetic/DecoupledSOLOLight_R18.yaml",
    "Synthetic/SOLOv2_R18.yaml",
    "Synthetic/SOLOv2Light_R18.yaml",
    "Synthetic/SOLOv2_DCN_R18.yaml",
    "Synthetic/SOLOv2_R18_cityscapes.yaml",
]


def _base_depth(path):
    with open(path) as f:
        base = (yaml.safe_load(f) or {}).get("_BASE_")
    return 0 if base is None else 1 + _base_depth(os.path.join(os.path.dirname(path), base))


def test_all_expected_configs_exist():
    missing = sorted((set(EXPECTED) | set(QUICK)) - set(SOLO_CONFIGS))
    assert not missing, missing


def test_add_solo_config_only_adds_keys():
    ours, base = solo_d2.get_cfg(), d2_get_cfg()

    def walk(a, b, prefix=""):
        for k, v in b.items():
            assert k in a, prefix + k
            if isinstance(v, dict):
                walk(a[k], v, prefix + k + ".")
            else:
                assert a[k] == v, f"{prefix}{k} changed: {v} -> {a[k]}"

    walk(ours, base)
    s = ours.MODEL.SOLO
    assert s.NUM_GRIDS == [40, 36, 24, 16, 12] and s.FPN_STRIDES == [8, 8, 16, 32, 32]
    assert s.SCALE_RANGES == [[1, 96], [48, 192], [96, 384], [192, 768], [384, 2048]]
    assert (s.SIGMA, s.LOSS.FOCAL_ALPHA, s.LOSS.FOCAL_GAMMA, s.LOSS.DICE_WEIGHT) == (
        0.2,
        0.25,
        2.0,
        3.0,
    )
    assert (s.SCORE_THR, s.MASK_THR, s.UPDATE_THR, s.NMS_PRE, s.MAX_PER_IMG) == (
        0.1,
        0.5,
        0.05,
        500,
        100,
    )
    assert (s.NMS_METHOD, s.NMS_KERNEL, s.NMS_SIGMA, s.PRIOR_PROB) == (
        "matrix",
        "gaussian",
        2.0,
        0.01,
    )


@pytest.mark.parametrize("name", CONVERTED)
def test_converted_config_loads(name):
    assert _base_depth(model_zoo.get_config_file(name)) <= 2, (
        f"{name}: more than two levels of _BASE_"
    )
    cfg = model_zoo.get_config(name)
    assert cfg.MODEL.META_ARCHITECTURE == ("SOLOPanoptic" if "panoptic" in name.lower() else "SOLO")


@pytest.mark.parametrize("name", SOLO_CONFIGS)
def test_config_loads_and_builds(name):
    path = model_zoo.get_config_file(name)
    assert _base_depth(path) <= 2, f"{name}: more than two levels of _BASE_"
    cfg = model_zoo.get_config(name)
    cfg.MODEL.DEVICE = "cpu"
    assert cfg.MODEL.META_ARCHITECTURE == ("SOLOPanoptic" if "panoptic" in name.lower() else "SOLO")
    # recipes name their pretrained weights (tests/test_config_weights.py); build_model never loads
    # them, so nothing is downloaded here
    cfg.MODEL.WEIGHTS = ""
    assert cfg.SOLVER.CLIP_GRADIENTS.ENABLED and cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE == 35.0
    model = build_model(cfg)
    assert type(model.ins_head).__name__ == cfg.MODEL.SOLO.HEAD_NAME
    assert (model.mask_head is not None) == (cfg.MODEL.SOLO.HEAD_NAME == "SOLOv2Head")
    if name in EXPECTED:
        head, depth, max_iter, test_size = EXPECTED[name]
        assert (type(model.ins_head).__name__, cfg.MODEL.RESNETS.DEPTH) == (head, depth)
        assert (cfg.SOLVER.MAX_ITER, cfg.INPUT.MIN_SIZE_TEST) == (max_iter, test_size)
        if not name.startswith("Cityscapes"):
            assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR, cfg.MODEL.SOLO.NUM_CLASSES) == (
                16,
                0.01,
                80,
            )
    if "panoptic" in name.lower():  # stuff + 1 "things" classes of the dataset it names
        assert type(model.sem_seg_head).__name__ == cfg.MODEL.SEM_SEG_HEAD.NAME
        if name.startswith("Panoptic/"):  # the recipes' measured choice (docs/PANOPTIC.md)
            assert (cfg.MODEL.SEM_SEG_HEAD.NAME, cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT) == (
                "SOLOv2StuffHead",
                2.0,
            )
        assert (
            model.sem_seg_head.predictor.out_channels  # both heads end in a 1x1 conv
            == len(model.combine_cfg["stuff_ids"])
            == cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        )
        assert len(model.combine_cfg["thing_ids"]) == cfg.MODEL.SOLO.NUM_CLASSES
    if "DCN" in name:
        deform = [m for m in model.backbone.modules() if isinstance(m, DeformConvBase)]
        assert deform and any(isinstance(m, DeformConvBase) for m in model.ins_head.modules())
    if "Light512_DCN" in name:  # as the official model: DCNv1 in the last tower conv only
        for tower in (model.ins_head.cate_tower, model.ins_head.kernel_tower):
            assert [type(m) is DeformConv2d for m in tower] == [False, False, True]


def test_light_and_cityscapes_settings():
    light = model_zoo.get_config("SOLOv2/Light448_R50_3x.yaml").MODEL.SOLO
    assert (light.INS_CHANNELS, light.NUM_CONVS, light.MASK_FEAT_CHANNELS) == (256, 2, 128)
    assert light.SCALE_RANGES[0] == [1, 56]
    assert model_zoo.get_config("SOLOv2/Light512_DCN_R50_3x.yaml").MODEL.SOLO.SCALE_RANGES[0] == [
        1,
        64,
    ]
    city = model_zoo.get_config("Cityscapes/SOLOv2_R50.yaml")
    assert city.MODEL.SOLO.NUM_CLASSES == 8 and city.MODEL.SOLO.NUM_GRIDS[0] > 40
    assert city.INPUT.MAX_SIZE_TEST == 2048
    clight = model_zoo.get_config("Cityscapes/SOLOv2_Light448_R50_3x.yaml")
    assert (clight.MODEL.SOLO.NUM_CLASSES, clight.MODEL.SOLO.MASK_FEAT_CHANNELS) == (8, 128)
    assert clight.SOLVER.IMS_PER_BATCH == 8  # 2 GPUs x 4 images


# The full-size heads cost the same at any input size (e.g. SOLOv2's 512-ch towers on 40x40
# grids: ~70 GFLOPs, ~9 s here), so only the quick configs, one per variant, run a forward.
@pytest.mark.parametrize("name", QUICK)
def test_forward_eval_one_per_variant(name):
    cfg = model_zoo.get_config(name)
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model(
            [
                {
                    "image": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8),
                    "height": 96,
                    "width": 80,
                }
            ]
        )
    inst = out[0]["instances"]
    assert inst.image_size == (96, 80)
    assert inst.pred_masks.dtype == torch.bool and inst.pred_masks.shape[1:] == (96, 80)
    assert (
        len(inst.scores)
        == len(inst.pred_classes)
        == len(inst.pred_boxes)
        <= cfg.MODEL.SOLO.MAX_PER_IMG
    )
