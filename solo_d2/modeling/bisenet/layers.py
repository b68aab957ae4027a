"""Small building blocks shared by BiSeNet V1 and V2 (all built on detectron2's Conv2d)."""

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.layers import Conv2d, get_norm
from detectron2.modeling import Backbone
from torch import nn
from torch.nn import functional as F

from ..layers import conv_norm_act

__all__ = [
    "SegOutput",
    "AttentionRefinement",
    "FeatureFusion",
    "upsample_to",
]


def upsample_to(x, size, mode="bilinear"):
    """Resize [N, C, h, w] to ``size`` = (H, W)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


class SegOutput(nn.Module):
    """3x3 conv-norm-ReLU -> (dropout) -> 1x1 conv to classes: [N, Cin, h, w] -> [N, K, h, w]."""

    def __init__(self, in_ch, mid_ch, num_classes, norm="BN", dropout=0.0):
        super().__init__()
        self.conv = conv_norm_act(in_ch, mid_ch, 3, norm=norm)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.predictor = Conv2d(mid_ch, num_classes, 1)
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, x):
        return self.predictor(self.dropout(self.conv(x)))


class AttentionRefinement(nn.Module):
    """ARM: 3x3 conv-norm-ReLU to ``out_ch``, then x * sigmoid(norm(1x1 conv(GAP(x))))."""

    def __init__(self, in_ch, out_ch, norm="BN"):
        super().__init__()
        self.conv = conv_norm_act(in_ch, out_ch, 3, norm=norm)
        self.attention = Conv2d(out_ch, out_ch, 1, bias=False, norm=get_norm(norm, out_ch))
        weight_init.c2_msra_fill(self.attention)

    def forward(self, x):
        x = self.conv(x)
        att = torch.sigmoid(self.attention(x.mean(dim=(2, 3), keepdim=True)))
        return x * att


class FeatureFusion(nn.Module):
    """FFM: concat -> 1x1 conv-norm-ReLU; att = sigmoid(norm(1x1 conv(GAP))); out = x * att + x."""

    def __init__(self, in_ch, out_ch, norm="BN"):
        super().__init__()
        self.fuse = conv_norm_act(in_ch, out_ch, 1, norm=norm)
        self.attention = Conv2d(out_ch, out_ch, 1, bias=False, norm=get_norm(norm, out_ch))
        weight_init.c2_msra_fill(self.attention)

    def forward(self, spatial, context):
        x = self.fuse(torch.cat([spatial, context], dim=1))
        att = torch.sigmoid(self.attention(x.mean(dim=(2, 3), keepdim=True)))
        return x * att + x


class FixedShapeBackbone(Backbone):
    """Base of the BiSeNet backbones: outputs described by ``self._out_shapes``
    (name -> ShapeSpec, set in ``__init__``); inputs padded to a multiple of 32."""

    @property
    def size_divisibility(self):
        return 32

    def output_shape(self):
        return dict(self._out_shapes)
