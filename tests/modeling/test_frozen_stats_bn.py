"""BN with frozen statistics and trained affine parameters
(``MODEL.RESNETS.FROZEN_BN_TRAIN_AFFINE``), as the official SOLO code and mmdetection train their
ResNet (``norm_eval=True``, ``frozen_stages=1``)."""

import glob
import os

import pytest
import torch
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from torch import nn

from solo_d2.checkpoint.core import build_cfg
from solo_d2.modeling.backbone import FrozenStatsBatchNorm2d, train_frozen_bn_affine
from tests.helpers import REPO_ROOT

REPO = str(REPO_ROOT)
SMALL = [
    "MODEL.RESNETS.DEPTH",
    "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS",
    "64",
    "MODEL.FPN.OUT_CHANNELS",
    "32",
    "MODEL.SOLO.INS_CHANNELS",
    "32",
    "MODEL.SOLO.NUM_CONVS",
    "1",
    "MODEL.SOLO.MASK_MID_CHANNELS",
    "32",
    "MODEL.SOLO.MASK_FEAT_CHANNELS",
    "32",
]


def test_equals_batchnorm_in_eval_mode_and_trains_only_weight_and_bias():
    g = torch.Generator().manual_seed(0)
    bn = nn.BatchNorm2d(5).eval()
    with torch.no_grad():
        for t in (bn.weight, bn.bias, bn.running_mean):
            t.copy_(torch.randn(5, generator=g))
        bn.running_var.copy_(torch.rand(5, generator=g) + 0.5)
    frozen = FrozenBatchNorm2d(5)
    frozen.load_state_dict({k: v for k, v in bn.state_dict().items() if k != "num_batches_tracked"})
    layer = FrozenStatsBatchNorm2d.from_frozen(frozen)
    layer.train()  # no mode changes the statistics
    x = torch.randn(3, 5, 7, 9, generator=g, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y, y_ref = layer(x), bn(x2)
    assert torch.equal(y, y_ref)
    (y * y).sum().backward()
    (y_ref * y_ref).sum().backward()
    assert torch.allclose(layer.weight.grad, bn.weight.grad) and torch.allclose(
        layer.bias.grad, bn.bias.grad
    )
    assert torch.allclose(x.grad, x2.grad)
    assert torch.equal(layer.running_mean, bn.running_mean) and torch.equal(
        layer.running_var, bn.running_var
    )
    assert sorted(n for n, _ in layer.named_parameters()) == ["bias", "weight"]
    # a checkpoint of a BatchNorm (with its counter) loads strictly
    layer.load_state_dict(bn.state_dict())


def test_recipe_trains_bn_affine_of_res3_to_res5_only():
    cfg = build_cfg("configs/SOLOv2/R50_3x.yaml", SMALL)
    assert cfg.MODEL.RESNETS.FROZEN_BN_TRAIN_AFFINE and cfg.MODEL.BACKBONE.FREEZE_AT == 2
    model = build_model(cfg)
    bottom_up = model.backbone.bottom_up
    for name, m in bottom_up.named_modules():
        if name.endswith("norm"):
            frozen_stage = name.startswith(("stem", "res2"))
            assert isinstance(m, FrozenBatchNorm2d if frozen_stage else FrozenStatsBatchNorm2d), (
                name
            )
    trainable = [n for n, p in bottom_up.named_parameters() if p.requires_grad and "norm" in n]
    assert trainable and all(n.startswith(("res3", "res4", "res5")) for n in trainable)
    # AdelaiDet's behaviour is the option
    off = build_model(
        build_cfg(
            "configs/SOLOv2/R50_3x.yaml", SMALL + ["MODEL.RESNETS.FROZEN_BN_TRAIN_AFFINE", "False"]
        )
    )
    assert not any(isinstance(m, FrozenStatsBatchNorm2d) for m in off.modules())
    assert set(off.state_dict()) == set(model.state_dict())  # checkpoints load either way


RECIPES = sorted(
    os.path.relpath(p, REPO)
    for d in (
        "SOLO",
        "DecoupledSOLO",
        "SOLOv2",
        "Cityscapes",
        "Panoptic",
        "Converted/SOLO-official",
        "Converted/mmdet",
    )
    for p in glob.glob(os.path.join(REPO, "configs", d, "*.yaml"))
)


@pytest.mark.parametrize("config", RECIPES)
def test_every_solo_family_recipe_and_converted_config_trains_the_bn_affine(config):
    cfg = build_cfg(config)
    assert (
        cfg.MODEL.META_ARCHITECTURE in ("SOLO", "SOLOPanoptic")
        and cfg.MODEL.RESNETS.NORM == "FrozenBN"
    ), config
    assert cfg.MODEL.RESNETS.FROZEN_BN_TRAIN_AFFINE, config
    assert cfg.SOLVER.WEIGHT_DECAY_NORM == cfg.SOLVER.WEIGHT_DECAY == 1e-4, (
        config
    )  # official: decay on all
    assert cfg.SOLVER.WARMUP_ITERS == 500, config
    # official warmup_ratio: 1/3 in the SOLO and Decoupled SOLO configs, 0.01 in the SOLOv2 ones
    ratio = 0.01 if cfg.MODEL.SOLO.HEAD_NAME == "SOLOv2Head" else 1 / 3
    assert cfg.SOLVER.WARMUP_FACTOR == pytest.approx(ratio), config


def test_no_frozen_bn_means_nothing_to_do():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4))
    assert train_frozen_bn_affine(m) == 0
