"""BiSeNetV1 head: context path tail (ARMs + GAP), feature fusion, main and auxiliary outputs.

Inputs (from ``build_bisenet_v1_backbone``): ``spatial`` [N, Cs, H/s, W/s] (s = 8,
or 4 with res2), ``res4`` [N, C4, H/16, W/16], ``res5`` [N, C5, H/32, W/32].
"""

from typing import Dict

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from ..layers import conv_norm_act
from .layers import AttentionRefinement, FeatureFusion, SegOutput, upsample_to
from .loss import head_loss_config, seg_loss

__all__ = ["BiSeNetV1Head"]


@SEM_SEG_HEADS_REGISTRY.register()
class BiSeNetV1Head(nn.Module):
    """Follows detectron2's head contract: ``(None, losses)`` in training,
    ``(logits, {})`` otherwise.

    Losses: ``loss_sem_seg`` (FFM output), ``loss_aux8`` and ``loss_aux16`` (context
    features at 1/8 and 1/16), each OHEM (or plain) cross entropy.

    With the ResNet-18 spatial-path backbone this computes what CoinCheung/BiSeNet's BiSeNetV1
    (commit 6b4b67a8) computes: ``arm16``/``arm32``/``global_context``/``refine32``/``refine16``
    are its context path's ``arm16``/``arm32``/``conv_avg``/``conv_head32``/``conv_head16``,
    ``ffm`` its FFM, ``predictor``/``aux8``/``aux16`` its
    ``conv_out``/``conv_out16``/``conv_out32``.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        num_classes: int,
        ignore_value: int = 255,
        context_channels: int = 128,
        ffm_channels: int = 256,
        aux_channels: int = 64,
        norm: str = "BN",
        loss_weight: float = 1.0,
        aux_loss_weight: float = 1.0,
        loss_type: str = "ohem",
        ohem_thresh: float = 0.7,
        ohem_min_kept_divisor: int = 16,
    ):
        super().__init__()
        for name in ("spatial", "res4", "res5"):
            if name not in input_shape:
                raise ValueError(
                    f"BiSeNetV1Head needs backbone feature {name!r}; got {sorted(input_shape)}"
                )
        c4, c5, cs = (
            input_shape["res4"].channels,
            input_shape["res5"].channels,
            input_shape["spatial"].channels,
        )
        self.common_stride = input_shape["spatial"].stride
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight
        self.aux_loss_weight = aux_loss_weight
        self.loss_cfg = dict(
            loss_type=loss_type,
            ignore_value=ignore_value,
            thresh=ohem_thresh,
            min_kept_divisor=ohem_min_kept_divisor,
        )

        self.arm16 = AttentionRefinement(c4, context_channels, norm)
        self.arm32 = AttentionRefinement(c5, context_channels, norm)
        self.global_context = conv_norm_act(c5, context_channels, 1, norm=norm)
        self.refine32 = conv_norm_act(context_channels, context_channels, 3, norm=norm)
        self.refine16 = conv_norm_act(context_channels, context_channels, 3, norm=norm)
        self.ffm = FeatureFusion(cs + context_channels, ffm_channels, norm)
        self.predictor = SegOutput(ffm_channels, ffm_channels, num_classes, norm)
        self.aux8 = SegOutput(context_channels, aux_channels, num_classes, norm)
        self.aux16 = SegOutput(context_channels, aux_channels, num_classes, norm)

    @classmethod
    def from_config(cls, cfg, input_shape):
        b = cfg.MODEL.BISENET
        return {
            "input_shape": input_shape,
            "context_channels": b.CONTEXT_CHANNELS,
            "ffm_channels": b.FFM_CHANNELS,
            "aux_channels": b.AUX_CHANNELS,
            **head_loss_config(cfg),
        }

    def layers(self, features):
        """Returns main logits [N, K, H/s, W/s] and the context features at 1/8 and 1/16
        ([N, 128, H/8, W/8], [N, 128, H/16, W/16]) that feed the auxiliary outputs."""
        res4, res5, spatial = features["res4"], features["res5"], features["spatial"]
        size16 = res4.shape[-2:]
        size8 = (2 * size16[0], 2 * size16[1])
        tail = self.global_context(res5.mean(dim=(2, 3), keepdim=True))
        feat32 = self.arm32(res5) + tail
        feat16_ctx = self.refine32(upsample_to(feat32, size16, "nearest"))
        feat16 = self.arm16(res4) + feat16_ctx
        feat8_ctx = self.refine16(upsample_to(feat16, size8, "nearest"))
        fused = self.ffm(spatial, upsample_to(feat8_ctx, spatial.shape[-2:]))
        return self.predictor(fused), feat8_ctx, feat16_ctx

    def outputs(self, features, with_aux=True) -> Dict[str, torch.Tensor]:
        """Logits [N, K, H, W] at input resolution (H = stride x the spatial feature's height):
        ``"main"`` and, with ``with_aux``, ``"aux8"`` and ``"aux16"`` (CoinCheung/BiSeNet's
        ``feat_out``, ``feat_out16``, ``feat_out32``),
        each upsampled bilinearly (align_corners=False)."""
        main, feat8_ctx, feat16_ctx = self.layers(features)
        spatial = features["spatial"]
        size = (spatial.shape[-2] * self.common_stride, spatial.shape[-1] * self.common_stride)
        out = {"main": upsample_to(main, size)}
        if with_aux:
            out["aux8"] = upsample_to(self.aux8(feat8_ctx), size)
            out["aux16"] = upsample_to(self.aux16(feat16_ctx), size)
        return out

    def forward(self, features, targets=None):
        """targets: [N, H, W] labels padded with ``ignore_value`` (training only)."""
        if not self.training:  # the auxiliary outputs only exist for the losses
            return self.outputs(features, with_aux=False)["main"], {}
        if targets is None:
            raise ValueError("BiSeNetV1Head needs targets (batched 'sem_seg') in training")
        logits = self.outputs(features)
        return None, {
            "loss_sem_seg": seg_loss(logits["main"], targets, **self.loss_cfg) * self.loss_weight,
            "loss_aux8": seg_loss(logits["aux8"], targets, **self.loss_cfg) * self.aux_loss_weight,
            "loss_aux16": seg_loss(logits["aux16"], targets, **self.loss_cfg)
            * self.aux_loss_weight,
        }
