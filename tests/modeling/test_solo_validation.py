"""Build-time validation of MODEL.SOLO values and the reference initialization of the heads."""

import pytest
import torch
from detectron2.modeling import build_model

from solo_d2.model_zoo import get_config

pytestmark = pytest.mark.usefixtures("single_thread")


def _cfg(name="Synthetic/SOLOv2_R18.yaml"):
    cfg = get_config(name)
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    return cfg


@pytest.mark.parametrize(
    "key, value",
    [
        ("SIGMA", 0.0),
        ("SIGMA", -0.2),
        ("NUM_CLASSES", 0),
        (
            "SCALE_RANGES",
            [[1, 48], [24, 96], [20, 192], [96, 384], [192, 2048]],
        ),  # lower bound decreases
        (
            "SCALE_RANGES",
            [[1, 48], [24, 96], [48, 90], [96, 384], [192, 2048]],
        ),  # upper bound decreases
        ("SCALE_RANGES", [[48, 1], [24, 96], [48, 192], [96, 384], [192, 2048]]),  # lo > hi
        ("NUM_GRIDS", [24, 20, 0, 12, 8]),
        ("SCORE_THR", 1.5),
        ("NMS_PRE", 0),
        ("MASK_PRIOR_PROB", 0.0),
        ("MASK_TARGETS", "per_image"),
        ("GRID_ROUNDING", "round"),
        ("MASK_TARGET_RESIZE", "cropped"),
        ("LOSS.DICE_NORMALIZER", "images"),
    ],
)
def test_invalid_values_fail_at_build_time_naming_the_key(key, value):
    cfg = _cfg()
    node, leaf = cfg.MODEL.SOLO, key
    if "." in key:
        parent, leaf = key.split(".")
        node = node[parent]
    node[leaf] = value
    with pytest.raises(ValueError, match=f"MODEL.SOLO.{key}"):
        build_model(cfg)


def test_valid_config_builds():
    assert build_model(_cfg()) is not None


@pytest.mark.parametrize(
    "name, expected",
    [
        ("SOLO/R50_1x.yaml", -4.59512),
        ("DecoupledSOLO/R50_1x.yaml", -4.59512),
        ("Synthetic/SOLO_R18.yaml", 0.0),
    ],
)
def test_mask_output_bias_prior(name, expected):
    """The official code starts the SOLO / Decoupled SOLO mask outputs at the 0.01 prior
    (bias -4.595); the synthetic CPU configs document their departure (0.5 -> bias 0)."""
    model = build_model(_cfg(name))
    biases = [p for n, p in model.named_parameters() if ".mask_preds" in n and n.endswith("bias")]
    assert biases
    for b in biases:
        assert torch.allclose(b.detach(), torch.full_like(b, expected), atol=1e-4)
    cate = model.ins_head.cate_pred.bias.detach()
    assert torch.allclose(cate, torch.full_like(cate, -4.59512), atol=1e-4)
