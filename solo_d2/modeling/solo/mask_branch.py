"""SOLOv2's unified mask-feature branch (1/4 scale).

Level ``i`` of ``MODEL.SOLO.MASK_IN_FEATURES`` (P2..P5, strides 4..32) goes through ``max(i, 1)``
3x3 conv + norm + ReLU blocks, each but level 0's followed by 2x bilinear upsampling, so every
level reaches 1/4 scale; the coarsest level gets two coordinate channels (CoordConv). The sum
passes a 1x1 conv + norm + ReLU to ``MASK_FEAT_CHANNELS`` (the dynamic-kernel size D).
"""

from typing import Dict, List

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from torch import nn

from .heads import coord_features, head_conv, init_head_weights


def fused_channels(names: List[str], input_shape: Dict[str, ShapeSpec], key: str) -> int:
    """The common channel count of the backbone features ``names``; raises naming ``key`` when
    one is missing or their channels differ."""
    missing = [f for f in names if f not in input_shape]
    if missing:
        raise ValueError(
            f"{key} {missing} not produced by the backbone (it gives {sorted(input_shape)})"
        )
    channels = {input_shape[f].channels for f in names}
    if len(channels) != 1:
        raise ValueError(f"{key} need equal channels, got {sorted(channels)}")
    return channels.pop()


class SOLOv2MaskBranch(nn.Module):
    """Unified mask features: ``Dict[name, [B, C, H_l, W_l]]`` -> ``[B, D, H_0, W_0]``."""

    @configurable
    def __init__(
        self,
        *,
        in_features: List[str],
        in_channels: int,
        mid_channels: int = 128,
        out_channels: int = 256,
        norm: str = "GN",
        use_dcn: bool = False,
    ):
        """
        Args:
            in_features: backbone feature names, finest first (the first sets the output size).
            in_channels: their channels (FPN: 256).
            mid_channels: channels of the per-level convs (128).
            out_channels: D, channels of the output (256; light 128).
            norm: norm after every conv; use_dcn: deformable 3x3 convs.
        """
        super().__init__()
        if not in_features:
            raise ValueError("MODEL.SOLO.MASK_IN_FEATURES must name at least one feature")
        self.in_features = list(in_features)
        last = len(in_features) - 1
        self.convs_all_levels = nn.ModuleList()
        for i in range(len(in_features)):
            blocks = []
            for k in range(max(i, 1)):
                cin = in_channels if k == 0 else mid_channels
                cin += 2 if (i == last and k == 0) else 0
                blocks.append(head_conv(cin, mid_channels, norm, use_dcn))
            self.convs_all_levels.append(nn.ModuleList(blocks))
        # deformable too with MASK_USE_DCN, as in the official and mmdetection DCN models
        self.conv_pred = head_conv(mid_channels, out_channels, norm, use_dcn, kernel_size=1)
        init_head_weights(self)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        c = cfg.MODEL.SOLO
        return {
            "in_features": c.MASK_IN_FEATURES,
            "in_channels": fused_channels(
                c.MASK_IN_FEATURES, input_shape, "MODEL.SOLO.MASK_IN_FEATURES"
            ),
            "mid_channels": c.MASK_MID_CHANNELS,
            "out_channels": c.MASK_FEAT_CHANNELS,
            "norm": c.NORM,
            "use_dcn": c.MASK_USE_DCN,
        }

    def forward(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        last = len(self.in_features) - 1
        size = features[self.in_features[0]].shape[-2:]
        out = None
        for i, (name, blocks) in enumerate(zip(self.in_features, self.convs_all_levels)):
            x = features[name]
            if i == last:
                x = torch.cat([x, coord_features(x)], dim=1)
            for block in blocks:
                x = block(x)
                if i > 0:
                    x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            if x.shape[-2:] != size:  # odd sizes: align to the finest level
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            out = x if out is None else out + x
        return self.conv_pred(out)
