"""Backbones added to Detectron2's ``BACKBONE_REGISTRY``.

- ``build_resnet_dcn_backbone`` / ``build_resnet_dcn_fpn_backbone``: ResNet (+FPN) with
  modulated deformable conv v2 (:class:`ModulatedDeformConv2d`) or deformable conv v1
  (:class:`DeformConv2d`, ``MODEL.RESNETS.DEFORM_MODULATED False``), both built on
  ``torchvision.ops.deform_conv2d``, in the stages selected by
  ``MODEL.RESNETS.DEFORM_ON_PER_STAGE``.
"""
from .dcn import DeformConv2d, DeformConvBase, ModulatedDeformConv2d
from .resnet_dcn import build_resnet_dcn_backbone, build_resnet_dcn_fpn_backbone

__all__ = [
    "DeformConv2d",
    "DeformConvBase",
    "ModulatedDeformConv2d",
    "build_resnet_dcn_backbone",
    "build_resnet_dcn_fpn_backbone",
]
