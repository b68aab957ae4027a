"""BiSeNet V1 and V2 for detectron2 (registers backbones, heads and ``BiSeNetSegmentor``)."""

from .backbone import BiSeNetV1Backbone, SpatialPath, build_bisenet_v1_backbone
from .backbone_v2 import BiSeNetV2Backbone, build_bisenet_v2_backbone
from .config import add_bisenet_config
from .head_v1 import BiSeNetV1Head
from .head_v2 import BiSeNetV2Head
from .loss import cross_entropy, ohem_cross_entropy
from .segmentor import BiSeNetSegmentor
from .tta import predict_padded, predict_sliding, predict_tta

__all__ = [
    "add_bisenet_config",
    "BiSeNetV1Backbone",
    "BiSeNetV2Backbone",
    "SpatialPath",
    "build_bisenet_v1_backbone",
    "build_bisenet_v2_backbone",
    "BiSeNetV1Head",
    "BiSeNetV2Head",
    "BiSeNetSegmentor",
    "ohem_cross_entropy",
    "cross_entropy",
    "predict_padded",
    "predict_sliding",
    "predict_tta",
]
