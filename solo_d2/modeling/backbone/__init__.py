"""Backbones added to Detectron2's ``BACKBONE_REGISTRY``.

- ``build_resnet_dcn_backbone`` / ``build_resnet_dcn_fpn_backbone``: ResNet (+FPN) with
  modulated deformable conv v2 (:class:`ModulatedDeformConv2d`) or deformable conv v1
  (:class:`DeformConv2d`, ``MODEL.RESNETS.DEFORM_MODULATED False``), both built on
  ``torchvision.ops.deform_conv2d``, in the stages selected by
  ``MODEL.RESNETS.DEFORM_ON_PER_STAGE``.
- :func:`train_frozen_bn_affine` (``MODEL.RESNETS.FROZEN_BN_TRAIN_AFFINE``): FrozenBN layers of
  the trainable stages get trainable weights and biases (:class:`FrozenStatsBatchNorm2d`).
"""

from .dcn import DeformConv2d, DeformConvBase, ModulatedDeformConv2d
from .frozen_stats_bn import FrozenStatsBatchNorm2d, train_frozen_bn_affine
from .resnet_dcn import build_resnet_dcn_backbone, build_resnet_dcn_fpn_backbone

__all__ = [
    "DeformConv2d",
    "DeformConvBase",
    "FrozenStatsBatchNorm2d",
    "ModulatedDeformConv2d",
    "build_resnet_dcn_backbone",
    "build_resnet_dcn_fpn_backbone",
    "train_frozen_bn_affine",
]
