"""BiSeNetV1 backbone: detectron2's ResNet (context path) next to the spatial path.

The spatial path needs the image, and ``SemanticSegmentor`` feeds the head only
backbone features, so it lives here. Outputs (for an input [N, 3, H, W] with H, W
multiples of 32):

- ``"spatial"``: [N, 128, H/8, W/8] (spatial path) or the ResNet's res2
  [N, RES2_OUT_CHANNELS, H/4, W/4] when ``MODEL.BISENET.SPATIAL_SOURCE == "res2"``.
- ``"res4"``: [N, C4, H/16, W/16] and ``"res5"``: [N, C5, H/32, W/32].
"""

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from torch import nn

from ..layers import conv_norm_act
from .layers import FixedShapeBackbone

__all__ = ["SpatialPath", "BiSeNetV1Backbone", "build_bisenet_v1_backbone"]

_SPATIAL_SOURCES = ("spatial_path", "res2")


class SpatialPath(nn.Sequential):
    """7x7 s2 (3->64) -> 3x3 s2 (64->64) -> 3x3 s2 (64->64) -> 1x1 (64->out):
    [N,3,H,W] -> [N,out,H/8,W/8]."""

    def __init__(self, in_channels=3, mid_channels=64, out_channels=128, norm="BN"):
        super().__init__(
            conv_norm_act(in_channels, mid_channels, 7, stride=2, norm=norm),
            conv_norm_act(mid_channels, mid_channels, 3, stride=2, norm=norm),
            conv_norm_act(mid_channels, mid_channels, 3, stride=2, norm=norm),
            conv_norm_act(mid_channels, out_channels, 1, norm=norm),
        )


class BiSeNetV1Backbone(FixedShapeBackbone):
    """Wraps a detectron2 ResNet (``self.resnet``) and an optional ``self.spatial_path``."""

    def __init__(
        self, resnet: Backbone, spatial_path: nn.Module = None, spatial_channels: int = 128
    ):
        super().__init__()
        self.resnet = resnet
        self.spatial_path = spatial_path
        shapes = resnet.output_shape()
        for name in ("res4", "res5") + (() if spatial_path is not None else ("res2",)):
            if name not in shapes:
                raise ValueError(
                    f"BiSeNetV1 backbone needs ResNet feature {name!r}; got {sorted(shapes)}"
                )
        self._out_shapes = {"res4": shapes["res4"], "res5": shapes["res5"]}
        if spatial_path is not None:
            self._out_shapes["spatial"] = ShapeSpec(channels=spatial_channels, stride=8)
        else:
            self._out_shapes["spatial"] = shapes["res2"]
        self._out_features = list(self._out_shapes)

    def forward(self, x):
        """x: [N, 3, H, W] normalized images -> dict of features (see module docstring)."""
        feats = self.resnet(x)
        out = {"res4": feats["res4"], "res5": feats["res5"]}
        out["spatial"] = self.spatial_path(x) if self.spatial_path is not None else feats["res2"]
        return out


@BACKBONE_REGISTRY.register()
def build_bisenet_v1_backbone(cfg, input_shape: ShapeSpec):
    """``MODEL.BACKBONE.NAME: build_bisenet_v1_backbone``; ResNet from ``MODEL.RESNETS``.

    ``MODEL.RESNETS.OUT_FEATURES`` is set here (res4, res5 and res2 if needed) on a
    copy of the config; every other ResNet key (DEPTH 18/50, RES2_OUT_CHANNELS, NORM,
    STRIDE_IN_1X1) is taken from the config as is.
    """
    source = cfg.MODEL.BISENET.SPATIAL_SOURCE
    if source not in _SPATIAL_SOURCES:
        raise ValueError(
            f"MODEL.BISENET.SPATIAL_SOURCE must be one of {_SPATIAL_SOURCES}, got {source!r}"
        )
    if cfg.MODEL.RESNETS.DEPTH in (18, 34) and cfg.MODEL.RESNETS.RES2_OUT_CHANNELS != 64:
        raise ValueError(
            f"MODEL.RESNETS.DEPTH {cfg.MODEL.RESNETS.DEPTH} needs MODEL.RESNETS.RES2_OUT_CHANNELS "
            f"64, got {cfg.MODEL.RESNETS.RES2_OUT_CHANNELS}"
        )
    rcfg = cfg.clone()
    rcfg.defrost()
    rcfg.MODEL.RESNETS.OUT_FEATURES = (["res2"] if source == "res2" else []) + ["res4", "res5"]
    resnet = build_resnet_backbone(rcfg, input_shape)
    spatial_path = None
    channels = cfg.MODEL.BISENET.SPATIAL_CHANNELS
    if source == "spatial_path":
        spatial_path = SpatialPath(input_shape.channels, 64, channels, norm=cfg.MODEL.BISENET.NORM)
    return BiSeNetV1Backbone(resnet, spatial_path, channels)
