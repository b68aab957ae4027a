"""SOLO, Decoupled SOLO and SOLOv2 (registers the ``SOLO`` and ``SOLOPanoptic`` meta-architectures,
the heads and the ``SOLOv2StuffHead`` semantic head)."""

from .config import add_solo_config
from .heads import SOLO_HEAD_REGISTRY, SOLOHeadBase, SOLOv2Head, build_solo_head
from .heads_solo import DecoupledSOLOHead, DecoupledSOLOLightHead, SOLOHead
from .mask_branch import SOLOv2MaskBranch
from .meta_arch import SOLO
from .panoptic import SOLOPanoptic
from .panoptic_merge import combine_panoptic
from .stuff_head import SOLOv2StuffHead

__all__ = [
    "add_solo_config",
    "SOLO_HEAD_REGISTRY",
    "SOLOHeadBase",
    "build_solo_head",
    "SOLOHead",
    "DecoupledSOLOHead",
    "DecoupledSOLOLightHead",
    "SOLOv2Head",
    "SOLOv2MaskBranch",
    "SOLO",
    "SOLOPanoptic",
    "SOLOv2StuffHead",
    "combine_panoptic",
]
