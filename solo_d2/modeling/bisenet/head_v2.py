"""BiSeNetV2 head: bilateral guided aggregation (BGA), segmentation head and training-only boosters.

Inputs (from ``build_bisenet_v2_backbone``): ``detail`` [N, Cd, H/8, W/8], ``semantic``
[N, Cs, H/32, W/32], and the booster inputs ``stem`` (H/4), ``s3`` (H/8), ``s4`` (H/16) and
``s5`` (H/32, the semantic branch before the context embedding).

Every layer computes what CoinCheung/BiSeNet's ``lib/models/bisenetv2.py`` (commit 6b4b67a8)
computes: BGA with nearest x4 upsampling, the main head ``SegmentHead(aux=False)`` and the
booster heads ``SegmentHead(aux=True)`` (:class:`Booster`).
"""

from typing import Dict

import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn
from torch.nn import functional as F

from ..layers import conv_norm_act
from .layers import SegOutput, upsample_to
from .loss import head_loss_config, seg_loss

__all__ = ["BilateralGuidedAggregation", "Booster", "BiSeNetV2Head"]

_BOOSTER_FEATURES = ("stem", "s3", "s4", "s5")


class BilateralGuidedAggregation(nn.Module):
    """Detail [N, C, h, w] and semantic [N, C, h/4, w/4] guide each other -> [N, C, h, w].

    left = dw3x3-norm-1x1(detail) * sigmoid(up4(3x3-norm(semantic)));
    right = up4(avgpool3x3s2(3x3s2-norm(detail)) * sigmoid(dw3x3-norm-1x1(semantic)));
    out = 3x3 conv-norm-ReLU(left + right). ``up4`` is nearest-neighbour, as in the reference.
    """

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
        left = self.detail_keep(detail) * torch.sigmoid(
            upsample_to(self.semantic_up(semantic), high, "nearest")
        )
        right = self.detail_down(detail) * torch.sigmoid(self.semantic_keep(semantic))
        return self.fuse(left + upsample_to(right, high, "nearest"))


class Booster(nn.Module):
    """Booster (auxiliary) head on a stride-s feature:
    [N, Cin, h, w] -> [N, K, 2h, 2w] (stride s/2).

    3x3 conv-norm-ReLU (``mid_ch``) -> dropout -> nearest x2 -> 3x3 conv-norm-ReLU (``up_ch``;
    the reference uses s * s channels) -> 1x1 conv (with bias) to K classes. The reference then
    upsamples bilinearly (align_corners=False) by s/2 to the input size; the head does that.
    """

    def __init__(self, in_ch, mid_ch, up_ch, num_classes, norm="BN", dropout=0.0):
        super().__init__()
        self.conv = conv_norm_act(in_ch, mid_ch, 3, norm=norm)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.up_conv = conv_norm_act(mid_ch, up_ch, 3, norm=norm)
        self.predictor = Conv2d(up_ch, num_classes, 1)
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, x):
        x = F.interpolate(self.dropout(self.conv(x)), scale_factor=2.0, mode="nearest")
        return self.predictor(self.up_conv(x))


@SEM_SEG_HEADS_REGISTRY.register()
class BiSeNetV2Head(nn.Module):
    """``(None, losses)`` in training (main + 4 booster losses), ``(logits, {})`` at inference.

    ``predictor`` is the reference's ``head`` (3x3 conv-norm-ReLU to ``head_channels``, dropout,
    1x1 conv, bilinear x8); ``boosters[k]`` are its ``aux2``, ``aux3``, ``aux4``, ``aux5_4``
    (:class:`Booster` with ``booster_channels`` and stride**2 channels after the x2 upsampling).
    """

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
                raise ValueError(
                    f"BiSeNetV2Head needs backbone feature {name!r}; got {sorted(input_shape)}"
                )
        cd, cs = input_shape["detail"].channels, input_shape["semantic"].channels
        if cd != cs:
            raise ValueError(f"BiSeNetV2 BGA needs equal detail/semantic widths, got {cd} and {cs}")
        self.common_stride = input_shape["detail"].stride
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight
        self.aux_loss_weight = aux_loss_weight
        self.loss_cfg = dict(
            loss_type=loss_type,
            ignore_value=ignore_value,
            thresh=ohem_thresh,
            min_kept_divisor=ohem_min_kept_divisor,
        )
        self.bga = BilateralGuidedAggregation(cd, norm)
        self.predictor = SegOutput(cd, head_channels, num_classes, norm, dropout)
        self.boosters = nn.ModuleDict(
            {
                k: Booster(
                    input_shape[k].channels,
                    booster_channels,
                    input_shape[k].stride ** 2,
                    num_classes,
                    norm,
                    dropout,
                )
                for k in _BOOSTER_FEATURES
            }
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

    def outputs(self, features, with_boosters=True) -> Dict[str, torch.Tensor]:
        """Logits [N, K, H, W] at input resolution (H = 8 x the detail height): ``"main"`` and,
        with ``with_boosters``, one per booster (``"stem"``, ``"s3"``, ``"s4"``, ``"s5"``: the
        reference's ``logits``, ``logits_aux2``, ``logits_aux3``, ``logits_aux4``,
        ``logits_aux5_4``). Every upsampling is bilinear with align_corners=False,
        as the reference's."""
        detail = features["detail"]
        size = (detail.shape[-2] * self.common_stride, detail.shape[-1] * self.common_stride)
        out = {"main": upsample_to(self.predictor(self.bga(detail, features["semantic"])), size)}
        if with_boosters:
            for name, booster in self.boosters.items():
                out[name] = upsample_to(booster(features[name]), size)
        return out

    def forward(self, features, targets=None):
        """targets: [N, H, W] labels padded with ``ignore_value`` (training only)."""
        if not self.training:  # the boosters only exist for the losses
            return self.outputs(features, with_boosters=False)["main"], {}
        if targets is None:
            raise ValueError("BiSeNetV2Head needs targets (batched 'sem_seg') in training")
        logits = self.outputs(features)
        losses = {
            "loss_sem_seg": seg_loss(logits.pop("main"), targets, **self.loss_cfg)
            * self.loss_weight
        }
        for name, booster_logits in logits.items():
            losses[f"loss_booster_{name}"] = (
                seg_loss(booster_logits, targets, **self.loss_cfg) * self.aux_loss_weight
            )
        return None, losses
