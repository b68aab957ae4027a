"""Every config says where its initial weights come from (after ``_BASE_`` resolution):

- a non-synthetic config names pretrained weights (a ``detectron2://`` URL or a local .pkl/.pth
  path) or, where ``MODEL.WEIGHTS`` resolves to ``""``, the file that sets it says why in a
  comment on that line or the line above;
- synthetic/test configs (``configs/Synthetic/``) set ``MODEL.WEIGHTS: ""`` explicitly;
- a frozen backbone (``MODEL.BACKBONE.FREEZE_AT > 0``) never goes with empty weights;
- the SOLO-family COCO/Cityscapes recipes name the ImageNet backbone the way detectron2's own
  configs do (MSRA R-50/R-101, caffe-style BGR input) or, for R18/R34, a torchvision-converted
  .pkl used with torchvision's input convention.

Nothing is downloaded: only the config files are read.
"""

import os
import re

import pytest
import yaml

from solo_d2 import model_zoo

CONFIGS = model_zoo.list_configs()
SOLO_RECIPES = [
    c for c in CONFIGS if c.split("/")[0] in ("SOLO", "DecoupledSOLO", "SOLOv2", "Cityscapes")
]
TORCHVISION_MEAN = [123.675, 116.28, 103.53]


def _chain(path):
    """Config files from ``path`` up its ``_BASE_`` chain (most derived first)."""
    out = []
    while path:
        out.append(path)
        with open(path) as f:
            base = (yaml.safe_load(f) or {}).get("_BASE_")
        path = os.path.join(os.path.dirname(path), base) if base else None
    return out


def _sets_weights(path):
    with open(path) as f:
        model = (yaml.safe_load(f) or {}).get("MODEL") or {}
    return "WEIGHTS" in model, model.get("WEIGHTS")


def _weights_line_commented(path) -> bool:
    with open(path) as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s+WEIGHTS:", line):
            return "#" in line or (i > 0 and lines[i - 1].lstrip().startswith("#"))
    return False


@pytest.mark.parametrize("name", CONFIGS)
def test_config_names_its_weights(name):
    cfg = model_zoo.get_config(name)
    weights = cfg.MODEL.WEIGHTS
    chain = _chain(model_zoo.get_config_file(name))
    if name.startswith("Synthetic/"):
        assert _sets_weights(chain[0]) == (True, ""), (
            f'{name}: synthetic configs set MODEL.WEIGHTS: "" themselves'
        )
    elif weights:
        assert weights.startswith("detectron2://") or weights.endswith((".pkl", ".pth")), (
            f"{name}: {weights!r}"
        )
    else:
        setter = (
            next(p for p in chain if _sets_weights(p)[0])
            if any(_sets_weights(p)[0] for p in chain)
            else None
        )
        assert setter is not None and _weights_line_commented(setter), (
            f"{name}: MODEL.WEIGHTS is empty without a comment saying why (in "
            f"{setter or 'no file of its chain'})"
        )
    if cfg.MODEL.BACKBONE.FREEZE_AT > 0:
        assert weights, (
            f"{name}: FREEZE_AT {cfg.MODEL.BACKBONE.FREEZE_AT} freezes randomly initialized layers"
        )


@pytest.mark.parametrize("name", SOLO_RECIPES)
def test_solo_recipe_imagenet_backbone(name):
    cfg = model_zoo.get_config(name)
    depth, weights = cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.WEIGHTS
    if depth in (50, 101):
        assert weights == f"detectron2://ImageNetPretrained/MSRA/R-{depth}.pkl", name
        assert list(cfg.MODEL.PIXEL_STD) == [1.0, 1.0, 1.0] and cfg.INPUT.FORMAT == "BGR"
        assert cfg.MODEL.RESNETS.STRIDE_IN_1X1
    else:
        assert weights.endswith(f"R-{depth}.pkl"), name
        with open(model_zoo.get_config_file(name)) as f:
            text = f.read()
        assert f"--from torchvision-resnet resnet{depth}-" in text, (
            "the config gives the conversion command"
        )
        assert [
            round(v, 3) for v in cfg.MODEL.PIXEL_MEAN
        ] == TORCHVISION_MEAN and cfg.INPUT.FORMAT == "RGB"
        assert not cfg.MODEL.RESNETS.STRIDE_IN_1X1
