"""ResNet / ResNet+FPN with deformable convs (DCNv2 or DCNv1, torchvision op) in chosen stages.

Config (Detectron2's own keys, no new ones):
    - ``MODEL.RESNETS.DEFORM_ON_PER_STAGE``: 4 booleans for res2..res5
      (SOLOv2 DCN: ``[False, True, True, True]``).
    - ``MODEL.RESNETS.DEFORM_MODULATED``: DCNv2 (True) or DCNv1 (False).
    - ``MODEL.RESNETS.DEFORM_NUM_GROUPS``: offset groups.

The 3x3 conv (``conv2``) of every block in a deformable stage is replaced by a
:class:`ModulatedDeformConv2d` (DCNv1: :class:`DeformConv2d`) with the same geometry, weights
and norm, so parameter names match Detectron2's plain ResNet (ImageNet checkpoints load; only
``conv2.conv_offset.*`` is new). Bottleneck (R50+) and basic (R18/R34) blocks both work.
"""

from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from .dcn import deformable_from_conv

_STAGES = ("res2", "res3", "res4", "res5")


@BACKBONE_REGISTRY.register()
def build_resnet_dcn_backbone(cfg, input_shape: ShapeSpec):
    """Detectron2's ResNet with deformable ``conv2`` in the stages of ``DEFORM_ON_PER_STAGE``."""
    deform_on = list(cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE)
    if len(deform_on) != 4:
        raise ValueError(
            f"MODEL.RESNETS.DEFORM_ON_PER_STAGE must have 4 entries (res2..res5), got {deform_on}"
        )
    plain_cfg = cfg.clone()
    plain_cfg.defrost()
    plain_cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False] * 4
    resnet = build_resnet_backbone(plain_cfg, input_shape)

    modulated = cfg.MODEL.RESNETS.DEFORM_MODULATED
    groups = cfg.MODEL.RESNETS.DEFORM_NUM_GROUPS
    for name, on in zip(_STAGES, deform_on):
        stage = getattr(resnet, name, None)
        if not on or stage is None:  # stage absent when OUT_FEATURES stops earlier
            continue
        for block in stage:
            block.conv2 = deformable_from_conv(
                block.conv2, deform_groups=groups, modulated=modulated
            )
    # Freezing ran before the swap: apply it again so new offset convs follow FREEZE_AT.
    resnet.freeze(cfg.MODEL.BACKBONE.FREEZE_AT)
    return resnet


@BACKBONE_REGISTRY.register()
def build_resnet_dcn_fpn_backbone(cfg, input_shape: ShapeSpec):
    """:func:`build_resnet_dcn_backbone` + FPN (P2..P6 with a max-pool P6), as Detectron2's
    ``build_resnet_fpn_backbone``."""
    return FPN(
        bottom_up=build_resnet_dcn_backbone(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
