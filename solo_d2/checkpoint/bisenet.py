"""Converters for CoinCheung/BiSeNet checkpoints (BiSeNetV1 ResNet-18 and BiSeNetV2, Cityscapes).

CoinCheung/BiSeNet (https://github.com/CoinCheung/BiSeNet, ``lib/models/bisenetv1.py`` and
``lib/models/bisenetv2.py``, commit 6b4b67a8) publishes Cityscapes models
(``model_final_v1_city_new.pth``, ``model_final_v2_city.pth``: plain state dicts). Every source
key is renamed to the solo_d2 model's key; a key that no rule knows (another model, another
variant) stops the conversion. The auxiliary heads (``conv_out16``/``conv_out32`` of V1,
``aux2``..``aux5_4`` of V2) are part of the solo_d2 heads, so a checkpoint saved with
``aux_mode='train'`` converts completely; one saved without them lacks those keys and then fails
the strict verification (the heads always build their auxiliary outputs).

The named configs (``configs/Converted/CoinCheung_BiSeNetV{1,2}_cityscapes.yaml``) use CoinCheung's
input: RGB, mean (0.3257, 0.3690, 0.3223) and std (0.2112, 0.2148, 0.2115) of the 0-1 scale,
written in Detectron2's 0-255 units.
"""

import re
from typing import Dict, List

from .core import Conversion, Rule, register_converter, rename_keys
from .resnet import BN_FIELDS, torchvision_resnet_rules

__all__ = [
    "coincheung_v1_rules",
    "coincheung_v2_rules",
    "convert_coincheung_v1",
    "convert_coincheung_v2",
    "convert_coincheung_v2_backbone",
]

V1_CONFIG = "configs/Converted/CoinCheung_BiSeNetV1_cityscapes.yaml"
V2_CONFIG = "configs/Converted/CoinCheung_BiSeNetV2_cityscapes.yaml"


def _conv_bn_relu(src: str, dst: str) -> List[Rule]:
    """CoinCheung's ``ConvBNReLU`` (``conv``, ``bn``) -> detectron2 ``Conv2d`` with ``norm``."""
    s = re.escape(src)
    return [(rf"{s}\.conv\.weight", f"{dst}.weight"), (rf"{s}\.bn\.{BN_FIELDS}", rf"{dst}.norm.\1")]


def _conv_then_bn(conv: str, bn: str, dst: str) -> List[Rule]:
    """A bias-free ``nn.Conv2d`` at ``conv`` followed by ``nn.BatchNorm2d`` at ``bn`` -> ``dst``."""
    return [
        (rf"{re.escape(conv)}\.weight", f"{dst}.weight"),
        (rf"{re.escape(bn)}\.{BN_FIELDS}", rf"{dst}.norm.\1"),
    ]


# ----------------------------------------------------------------------------- V1
def coincheung_v1_rules() -> List[Rule]:
    """``BiSeNetV1(n_classes, aux_mode='train')`` (ResNet-18 context path) -> ``BiSeNetSegmentor``
    with ``build_bisenet_v1_backbone`` + ``BiSeNetV1Head``."""
    head = "sem_seg_head"
    rules = torchvision_resnet_rules("cp.resnet.", "backbone.resnet.")
    for i, name in enumerate(("conv1", "conv2", "conv3", "conv_out")):  # spatial path
        rules += _conv_bn_relu(f"sp.{name}", f"backbone.spatial_path.{i}")
    for arm in ("arm16", "arm32"):  # attention refinement: ConvBNReLU, conv_atten, bn_atten
        rules += _conv_bn_relu(f"cp.{arm}.conv", f"{head}.{arm}.conv")
        rules += _conv_then_bn(
            f"cp.{arm}.conv_atten", f"cp.{arm}.bn_atten", f"{head}.{arm}.attention"
        )
    for src, dst in (
        ("conv_head32", "refine32"),
        ("conv_head16", "refine16"),
        ("conv_avg", "global_context"),
    ):
        rules += _conv_bn_relu(f"cp.{src}", f"{head}.{dst}")
    rules += _conv_bn_relu("ffm.convblk", f"{head}.ffm.fuse")
    rules += _conv_then_bn("ffm.conv", "ffm.bn", f"{head}.ffm.attention")
    # BiSeNetOutput: ConvBNReLU ``conv`` then ``conv_out`` (1x1 with bias); feat_out16 is on the
    # stride-8 context feature (solo_d2 ``aux8``), feat_out32 on the stride-16 one (``aux16``)
    for src, dst in (("conv_out", "predictor"), ("conv_out16", "aux8"), ("conv_out32", "aux16")):
        rules += _conv_bn_relu(f"{src}.conv", f"{head}.{dst}.conv")
        rules.append((rf"{src}\.conv_out\.(weight|bias)", rf"{head}.{dst}.predictor.\1"))
    return rules


@register_converter(
    "coincheung-bisenetv1",
    "CoinCheung/BiSeNet BiSeNetV1 (ResNet-18) Cityscapes checkpoints, e.g. "
    "model_final_v1_city_new.pth",
)
def convert_coincheung_v1(state: Dict) -> Conversion:
    return _full_model(state, coincheung_v1_rules(), "coincheung-bisenetv1", V1_CONFIG)


def _full_model(state: Dict, rules: List[Rule], source: str, config: str) -> Conversion:
    """A whole CoinCheung model: every key renamed by ``rules``, verified against ``config``."""
    out = rename_keys(state, rules, source=source)
    return Conversion(
        out,
        config,
        notes=["input: RGB, CoinCheung's mean/std (set in the config); logits at input resolution"],
    )


# ----------------------------------------------------------------------------- V2
def _ge_rules(src: str, dst: str) -> List[Rule]:
    """GELayerS1 (``conv1``, ``dwconv``, ``conv2``) or GELayerS2 (``conv1``, ``dwconv1``,
    ``dwconv2``, ``conv2``, ``shortcut``) -> solo_d2 ``GatherExpansion`` (``conv``,
    ``dwconv.{0,1}``, ``project``, ``shortcut.{0,1}``)."""
    rules = _conv_bn_relu(f"{src}.conv1", f"{dst}.conv")
    for name, i in (("dwconv", 0), ("dwconv1", 0), ("dwconv2", 1)):
        rules += _conv_then_bn(f"{src}.{name}.0", f"{src}.{name}.1", f"{dst}.dwconv.{i}")
    rules += _conv_then_bn(f"{src}.conv2.0", f"{src}.conv2.1", f"{dst}.project")
    rules += _conv_then_bn(f"{src}.shortcut.0", f"{src}.shortcut.1", f"{dst}.shortcut.0")
    rules += _conv_then_bn(f"{src}.shortcut.2", f"{src}.shortcut.3", f"{dst}.shortcut.1")
    return rules


def coincheung_v2_rules() -> List[Rule]:
    """``BiSeNetV2(n_classes, aux_mode='train')`` -> ``BiSeNetSegmentor`` with
    ``build_bisenet_v2_backbone`` + ``BiSeNetV2Head``."""
    bb, head = "backbone", "sem_seg_head"
    rules: List[Rule] = []
    # detail branch: S1 (2 layers), S2 (3), S3 (3) -> one Sequential of 8
    flat = 0
    for stage, n in (("S1", 2), ("S2", 3), ("S3", 3)):
        for j in range(n):
            rules += _conv_bn_relu(f"detail.{stage}.{j}", f"{bb}.detail.{flat}")
            flat += 1
    # semantic branch
    rules += _conv_bn_relu("segment.S1S2.conv", f"{bb}.stem.conv")
    rules += _conv_bn_relu("segment.S1S2.left.0", f"{bb}.stem.left.0")
    rules += _conv_bn_relu("segment.S1S2.left.1", f"{bb}.stem.left.1")
    rules += _conv_bn_relu("segment.S1S2.fuse", f"{bb}.stem.fuse")
    for stage, dst, n in (("S3", "s3", 2), ("S4", "s4", 2), ("S5_4", "s5", 4)):
        for j in range(n):
            rules += _ge_rules(f"segment.{stage}.{j}", f"{bb}.{dst}.{j}")
    rules.append((rf"segment\.S5_5\.bn\.{BN_FIELDS}", rf"{bb}.context.gap_norm.\1"))
    rules += _conv_bn_relu("segment.S5_5.conv_gap", f"{bb}.context.gap_conv")
    rules += _conv_bn_relu("segment.S5_5.conv_last", f"{bb}.context.out")
    # bilateral guided aggregation
    bga = f"{head}.bga"
    rules += _conv_then_bn("bga.left1.0", "bga.left1.1", f"{bga}.detail_keep.0")
    rules.append((r"bga\.left1\.2\.weight", f"{bga}.detail_keep.1.weight"))
    rules += _conv_then_bn("bga.left2.0", "bga.left2.1", f"{bga}.detail_down.0")
    rules += _conv_then_bn("bga.right1.0", "bga.right1.1", f"{bga}.semantic_up")
    rules += _conv_then_bn("bga.right2.0", "bga.right2.1", f"{bga}.semantic_keep.0")
    rules.append((r"bga\.right2\.2\.weight", f"{bga}.semantic_keep.1.weight"))
    rules += _conv_then_bn("bga.conv.0", "bga.conv.1", f"{bga}.fuse")
    # SegmentHead: ``conv`` (ConvBNReLU),
    # ``conv_out`` = [Identity | (Upsample, ConvBNReLU), 1x1 conv, Upsample]
    rules += _conv_bn_relu("head.conv", f"{head}.predictor.conv")
    rules.append((r"head\.conv_out\.1\.(weight|bias)", rf"{head}.predictor.predictor.\1"))
    for src, dst in (("aux2", "stem"), ("aux3", "s3"), ("aux4", "s4"), ("aux5_4", "s5")):
        rules += _conv_bn_relu(f"{src}.conv", f"{head}.boosters.{dst}.conv")
        rules += _conv_bn_relu(f"{src}.conv_out.0.1", f"{head}.boosters.{dst}.up_conv")
        rules.append(
            (rf"{src}\.conv_out\.1\.(weight|bias)", rf"{head}.boosters.{dst}.predictor.\1")
        )
    return rules


@register_converter(
    "coincheung-bisenetv2",
    "CoinCheung/BiSeNet BiSeNetV2 Cityscapes checkpoints, e.g. model_final_v2_city.pth",
)
def convert_coincheung_v2(state: Dict) -> Conversion:
    return _full_model(state, coincheung_v2_rules(), "coincheung-bisenetv2", V2_CONFIG)


@register_converter(
    "coincheung-bisenetv2-backbone",
    "CoinCheung/BiSeNet's ImageNet-pretrained BiSeNetV2 branches "
    "backbone_v2.pth ({detail, segment})",
)
def convert_coincheung_v2_backbone(state: Dict) -> Conversion:
    """The ImageNet initialization CoinCheung's V2 training starts from: the detail and semantic
    branches only (``BiSeNetV2.load_pretrain`` loads ``state[name]`` into its children ``detail``
    and ``segment``). Written as a partial checkpoint of ``backbone.*``, verified strictly against
    the V2 recipe's backbone; the heads keep their initialization."""
    rules = [r for r in coincheung_v2_rules() if r[0].startswith(("detail", "segment"))]
    out = rename_keys(state, rules, source="coincheung-bisenetv2-backbone")
    return Conversion(
        out,
        "configs/BiSeNet/V2_cityscapes.yaml",
        notes=[
            "backbone initialization only (detail and semantic branches); "
            "heads start from their init"
        ],
        prefix="backbone.",
    )
