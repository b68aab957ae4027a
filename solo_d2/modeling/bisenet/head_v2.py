"""BiSeNetV2 head: bilateral guided aggregation (BGA), segmentation head and training-only boosters.

Inputs (from ``build_bisenet_v2_backbone``): ``detail`` [N, Cd, H/8, W/8], ``semantic``
[N, Cs, H/32, W/32], and the booster inputs ``stem``, ``s3``, ``s4``, ``s5``.
"""
from typing import Dict

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from .layers import SegOutput, conv_norm_act, upsample_to
from .loss import head_loss_config, seg_loss

__all__ = ["BilateralGuidedAggregation", "BiSeNetV2Head"]

_BOOSTER_FEATURES = ("stem", "s3", "s4", "s5")


class BilateralGuidedAggregation(nn.Module):
    """Detail [N, C, h, w] and semantic [N, C, h/4, w/4] guide each other -> [N, C, h, w]."""

    def __init__(self, channels, norm="BN"):
        super().__init__()
        c = channels
        self.detail_keep = nn.Sequential(
            conv_norm_act(c, c, 3, groups=c, norm=norm, act=False), Conv2d(c, c, 1, bias=False)
        )
        self.detail_down = nn.Sequential(
            conv_norm_act(c, c, 3, stride=2, norm=norm, act=False),
            nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=False),
        )
        self.semantic_up = conv_norm_act(c, c, 3, norm=norm, act=False)
        self.semantic_keep = nn.Sequential(
            conv_norm_act(c, c, 3, groups=c, norm=norm, act=False), Conv2d(c, c, 1, bias=False)
        )
        self.fuse = conv_norm_act(c, c, 3, norm=norm)

    def forward(self, detail, semantic):
        high = detail.shape[-2:]
        left = self.detail_keep(detail) * torch.sigmoid(upsample_to(self.semantic_up(semantic), high))
        right = self.detail_down(detail) * torch.sigmoid(self.semantic_keep(semantic))
        return self.fuse(left + upsample_to(right, high))


@SEM_SEG_HEADS_REGISTRY.register()
class BiSeNetV2Head(nn.Module):
    """``(None, losses)`` in training (main + 4 booster losses), ``(logits, {})`` at inference."""

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        num_classes: int,
        ignore_value: int = 255,
        head_channels: int = 1024,
        booster_channels: int = 128,
        dropout: float = 0.1,
        norm: str = "BN",
        loss_weight: float = 1.0,
        aux_loss_weight: float = 1.0,
        loss_type: str = "ohem",
        ohem_thresh: float = 0.7,
        ohem_min_kept_divisor: int = 16,
    ):
        super().__init__()
        for name in ("detail", "semantic") + _BOOSTER_FEATURES:
            if name not in input_shape:
                raise ValueError(f"BiSeNetV2Head needs backbone feature {name!r}; got {sorted(input_shape)}")
        cd, cs = input_shape["detail"].channels, input_shape["semantic"].channels
        if cd != cs:
            raise ValueError(f"BiSeNetV2 BGA needs equal detail/semantic widths, got {cd} and {cs}")
        self.common_stride = input_shape["detail"].stride
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight
        self.aux_loss_weight = aux_loss_weight
        self.loss_cfg = dict(
            loss_type=loss_type, ignore_value=ignore_value, thresh=ohem_thresh, min_kept_divisor=ohem_min_kept_divisor
        )
        self.bga = BilateralGuidedAggregation(cd, norm)
        self.predictor = SegOutput(cd, head_channels, num_classes, norm, dropout)
        self.boosters = nn.ModuleDict(
            {k: SegOutput(input_shape[k].channels, booster_channels, num_classes, norm, dropout) for k in _BOOSTER_FEATURES}
        )

    @classmethod
    def from_config(cls, cfg, input_shape):
        v2 = cfg.MODEL.BISENET_V2
        return {
            "input_shape": input_shape,
            "head_channels": v2.HEAD_CHANNELS,
            "booster_channels": v2.BOOSTER_CHANNELS,
            "dropout": v2.DROPOUT,
            **head_loss_config(cfg),
        }

    def forward(self, features, targets=None):
        """targets: [N, H, W] labels padded with ``ignore_value`` (training only)."""
        main = self.predictor(self.bga(features["detail"], features["semantic"]))
        if self.training:
            if targets is None:
                raise ValueError("BiSeNetV2Head needs targets (batched 'sem_seg') in training")
            losses = {"loss_sem_seg": seg_loss(main, targets, **self.loss_cfg) * self.loss_weight}
            for name, booster in self.boosters.items():
                loss = seg_loss(booster(features[name]), targets, **self.loss_cfg)
                losses[f"loss_booster_{name}"] = loss * self.aux_loss_weight
            return None, losses
        size = (main.shape[-2] * self.common_stride, main.shape[-1] * self.common_stride)
        return upsample_to(main, size), {}
