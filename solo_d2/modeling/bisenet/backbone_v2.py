"""BiSeNetV2 backbone: detail branch and semantic branch (stem, gather-and-expansion,
context embedding).

Layer for layer what CoinCheung/BiSeNet's ``lib/models/bisenetv2.py`` (commit 6b4b67a8) computes,
so that its published Cityscapes weights convert (``tools/convert_checkpoint.py --from
coincheung-bisenetv2``) and reproduce its outputs (``tests/parity/test_parity_bisenet.py``).

Outputs for [N, 3, H, W] (H, W multiples of 32), with default widths:

- ``"detail"``: [N, 128, H/8, W/8]  (detail branch)
- ``"stem"``: [N, 16, H/4, W/4], ``"s3"``: [N, 32, H/8, W/8], ``"s4"``: [N, 64, H/16, W/16],
  ``"s5"``: [N, 128, H/32, W/32]  (semantic stages, inputs of the booster heads)
- ``"semantic"``: [N, 128, H/32, W/32]  (after the context embedding)
"""

import torch
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY
from torch import nn

from ..layers import conv_norm_act
from .layers import FixedShapeBackbone

__all__ = [
    "GatherExpansion",
    "StemBlock",
    "ContextEmbedding",
    "BiSeNetV2Backbone",
    "build_bisenet_v2_backbone",
]


class StemBlock(nn.Module):
    """[N, Cin, H, W] -> [N, C, H/4, W/4]: 3x3 s2 conv; then [1x1 (C/2) -> 3x3 s2] and [3x3 s2 max
    pool] concatenated -> 3x3 conv (every conv with norm and ReLU)."""

    def __init__(self, in_ch, out_ch, norm="BN"):
        super().__init__()
        self.conv = conv_norm_act(in_ch, out_ch, 3, stride=2, norm=norm)
        self.left = nn.Sequential(
            conv_norm_act(out_ch, out_ch // 2, 1, norm=norm),
            conv_norm_act(out_ch // 2, out_ch, 3, stride=2, norm=norm),
        )
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=False)
        self.fuse = conv_norm_act(2 * out_ch, out_ch, 3, norm=norm)

    def forward(self, x):
        x = self.conv(x)
        return self.fuse(torch.cat([self.left(x), self.pool(x)], dim=1))


class GatherExpansion(nn.Module):
    """GE layer, as in CoinCheung/BiSeNet (the public implementation with published weights).

    [N, Cin, H, W] -> [N, Cout, H/s, W/s]:
    3x3 conv-norm-ReLU (Cin) -> depthwise 3x3 expanding to ``Cin * expansion`` (stride s) -> norm;
    when s = 2 a second depthwise 3x3 (stride 1) -> norm; ReLU after the last depthwise norm (not
    in the paper's figure, but in the reference code) -> 1x1 projection -> norm; plus the residual
    (identity, or depthwise 3x3 s2-norm -> 1x1-norm when s = 2); ReLU.
    """

    def __init__(self, in_ch, out_ch, stride=1, expansion=6, norm="BN"):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"GatherExpansion stride must be 1 or 2, got {stride}")
        if stride == 1 and in_ch != out_ch:
            raise ValueError(
                f"GatherExpansion with stride 1 needs in_ch == out_ch, got {in_ch} -> {out_ch}"
            )
        mid = in_ch * expansion
        self.conv = conv_norm_act(in_ch, in_ch, 3, norm=norm)
        dw = [conv_norm_act(in_ch, mid, 3, stride=stride, groups=in_ch, norm=norm, act=stride == 1)]
        if stride == 2:
            dw.append(conv_norm_act(mid, mid, 3, groups=mid, norm=norm, act=True))
        self.dwconv = nn.Sequential(*dw)
        self.project = conv_norm_act(mid, out_ch, 1, norm=norm, act=False)
        self.act = nn.ReLU(inplace=True)  # on the fresh sum: safe in place
        self.shortcut = None
        if stride == 2:
            self.shortcut = nn.Sequential(
                conv_norm_act(in_ch, in_ch, 3, stride=2, groups=in_ch, norm=norm, act=False),
                conv_norm_act(in_ch, out_ch, 1, norm=norm, act=False),
            )

    def forward(self, x):
        y = self.project(self.dwconv(self.conv(x)))
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return self.act(y + shortcut)


class ContextEmbedding(nn.Module):
    """[N, C, h, w] -> [N, C, h, w]: GAP -> norm -> 1x1 conv-norm-ReLU, broadcast-added to x ->
    3x3 conv-norm-ReLU (the reference's CE block; the paper draws a plain 3x3 conv last)."""

    def __init__(self, channels, norm="BN"):
        super().__init__()
        self.gap_norm = get_norm(norm, channels) or nn.Identity()
        self.gap_conv = conv_norm_act(channels, channels, 1, norm=norm)
        self.out = conv_norm_act(channels, channels, 3, norm=norm)

    def forward(self, x):
        g = self.gap_conv(self.gap_norm(x.mean(dim=(2, 3), keepdim=True)))
        return self.out(x + g)


class BiSeNetV2Backbone(FixedShapeBackbone):
    """Detail branch (``self.detail``: 8 conv-norm-ReLU, strides 2,1 | 2,1,1 | 2,1,1) and semantic
    branch (``stem``, GE stages ``s3``, ``s4``, ``s5`` and the context embedding ``context``)."""

    def __init__(
        self,
        in_channels=3,
        detail_channels=(64, 64, 128),
        semantic_channels=(16, 32, 64, 128),
        expansion=6,
        norm="BN",
    ):
        super().__init__()
        if len(detail_channels) != 3 or len(semantic_channels) != 4:
            raise ValueError(
                "MODEL.BISENET_V2.DETAIL_CHANNELS needs 3 values and SEMANTIC_CHANNELS 4, got "
                f"{list(detail_channels)} and {list(semantic_channels)}"
            )
        d1, d2, d3 = detail_channels
        self.detail = nn.Sequential(
            conv_norm_act(in_channels, d1, 3, stride=2, norm=norm),
            conv_norm_act(d1, d1, 3, norm=norm),
            conv_norm_act(d1, d2, 3, stride=2, norm=norm),
            conv_norm_act(d2, d2, 3, norm=norm),
            conv_norm_act(d2, d2, 3, norm=norm),
            conv_norm_act(d2, d3, 3, stride=2, norm=norm),
            conv_norm_act(d3, d3, 3, norm=norm),
            conv_norm_act(d3, d3, 3, norm=norm),
        )
        c1, c3, c4, c5 = semantic_channels
        self.stem = StemBlock(in_channels, c1, norm)
        self.s3 = nn.Sequential(
            GatherExpansion(c1, c3, 2, expansion, norm), GatherExpansion(c3, c3, 1, expansion, norm)
        )
        self.s4 = nn.Sequential(
            GatherExpansion(c3, c4, 2, expansion, norm), GatherExpansion(c4, c4, 1, expansion, norm)
        )
        self.s5 = nn.Sequential(
            GatherExpansion(c4, c5, 2, expansion, norm),
            *[GatherExpansion(c5, c5, 1, expansion, norm) for _ in range(3)],
        )
        self.context = ContextEmbedding(c5, norm)
        self._out_shapes = {
            "detail": ShapeSpec(channels=d3, stride=8),
            "stem": ShapeSpec(channels=c1, stride=4),
            "s3": ShapeSpec(channels=c3, stride=8),
            "s4": ShapeSpec(channels=c4, stride=16),
            "s5": ShapeSpec(channels=c5, stride=32),
            "semantic": ShapeSpec(channels=c5, stride=32),
        }
        self._out_features = list(self._out_shapes)

    def forward(self, x):
        """x: [N, 3, H, W] normalized images -> dict of features (see module docstring)."""
        stem = self.stem(x)
        s3 = self.s3(stem)
        s4 = self.s4(s3)
        s5 = self.s5(s4)
        return {
            "detail": self.detail(x),
            "stem": stem,
            "s3": s3,
            "s4": s4,
            "s5": s5,
            "semantic": self.context(s5),
        }


@BACKBONE_REGISTRY.register()
def build_bisenet_v2_backbone(cfg, input_shape: ShapeSpec):
    """``MODEL.BACKBONE.NAME: build_bisenet_v2_backbone``; widths from ``MODEL.BISENET_V2``."""
    v2 = cfg.MODEL.BISENET_V2
    return BiSeNetV2Backbone(
        input_shape.channels,
        tuple(v2.DETAIL_CHANNELS),
        tuple(v2.SEMANTIC_CHANNELS),
        v2.EXPANSION,
        cfg.MODEL.BISENET.NORM,
    )
