"""The semantic (stuff) branch of ``SOLOPanoptic``: ``SOLOv2StuffHead`` in Detectron2's
``SEM_SEG_HEADS_REGISTRY``.

It is built like SOLOv2's unified mask-feature branch (:class:`~.mask_branch.SOLOv2MaskBranch`:
P2..P5 fused at 1/4 scale, CoordConv on the coarsest level), followed by a 1x1 conv to
``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` (stuff classes + one "things" class), upsampled by
``COMMON_STRIDE`` to the input and trained with cross-entropy (``IGNORE_VALUE`` ignored,
``LOSS_WEIGHT``; averaged over the labelled pixels of all workers), the interface of Detectron2's
``SemSegFPNHead`` (Panoptic FPN's head, the alternative:
``MODEL.SEM_SEG_HEAD.NAME: "SemSegFPNHead"``).

Keys: ``MODEL.SEM_SEG_HEAD.{IN_FEATURES, CONVS_DIM, NORM, NUM_CLASSES, IGNORE_VALUE,
LOSS_WEIGHT, COMMON_STRIDE}``.
"""

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from detectron2.utils import comm
from torch import nn

from ...utils.comm import reduce_mean
from .mask_branch import SOLOv2MaskBranch, fused_channels

__all__ = ["SOLOv2StuffHead"]


@SEM_SEG_HEADS_REGISTRY.register()
class SOLOv2StuffHead(nn.Module):
    """``Dict[name, [B, C, H_l, W_l]]`` -> logits ``[B, num_classes, H, W]`` at the input size."""

    @configurable
    def __init__(
        self,
        *,
        in_features: List[str],
        in_channels: int,
        num_classes: int,
        conv_dims: int = 128,
        norm: str = "GN",
        ignore_value: int = 255,
        loss_weight: float = 1.0,
        common_stride: int = 4,
    ):
        super().__init__()
        self.features = SOLOv2MaskBranch(
            in_features=in_features,
            in_channels=in_channels,
            mid_channels=conv_dims,
            out_channels=conv_dims,
            norm=norm,
        )
        self.predictor = nn.Conv2d(conv_dims, num_classes, kernel_size=1)
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.zeros_(self.predictor.bias)
        self.num_classes = num_classes
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight
        self.common_stride = common_stride

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        c = cfg.MODEL.SEM_SEG_HEAD
        return {
            "in_features": c.IN_FEATURES,
            "in_channels": fused_channels(
                c.IN_FEATURES, input_shape, "MODEL.SEM_SEG_HEAD.IN_FEATURES"
            ),
            "num_classes": c.NUM_CLASSES,
            "conv_dims": c.CONVS_DIM,
            "norm": c.NORM,
            "ignore_value": c.IGNORE_VALUE,
            "loss_weight": c.LOSS_WEIGHT,
            "common_stride": c.COMMON_STRIDE,
        }

    def layers(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits ``[B, num_classes, H / stride, W / stride]``."""
        return self.predictor(self.features(features))

    def forward(self, features: Dict[str, torch.Tensor], targets: Optional[torch.Tensor] = None):
        """Training: ``(None, {"loss_sem_seg": scalar})`` against ``targets [B, H, W]`` long;
        inference: ``(logits [B, num_classes, H, W], {})``."""
        x = F.interpolate(
            self.layers(features),
            scale_factor=self.common_stride,
            mode="bilinear",
            align_corners=False,
        )
        if self.training:
            # the mean over the labelled pixels of all workers (their count all-reduced, as SOLO's
            # positives), so N workers give the loss of one process on the whole batch
            valid = reduce_mean((targets != self.ignore_value).sum().float())
            loss = F.cross_entropy(
                x.float(), targets, reduction="sum", ignore_index=self.ignore_value
            )
            world = float(comm.get_world_size())
            return None, {"loss_sem_seg": loss / valid.clamp(min=1.0 / world) * self.loss_weight}
        return x, {}
