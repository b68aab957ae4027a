"""Converters for the mmdetection-based SOLO checkpoints: the official SOLO repository
(``solo-official``, mmdetection v1) and mmdetection 2.x/3.x (``mmdet``).

Both use a torchvision-style ResNet (stride in the 3x3 conv, RGB input normalized with the
ImageNet mean/std in 0-255), mmdetection's FPN (``neck.lateral_convs`` / ``neck.fpn_convs``,
P6 = stride-2 max pool of P5) and mmcv ``ConvModule`` towers (``.conv`` + ``.gn``, no conv
bias). They differ in the names of the head modules:

=================  ==============================  ==================================
solo_d2            solo-official (``bbox_head``)   mmdet (``mask_head``)
=================  ==============================  ==================================
cate_tower         cate_convs                      cls_convs
cate_pred          solo_cate / dsolo_cate          conv_cls
mask_tower         ins_convs                       mask_convs
mask_tower_x/_y    ins_convs_x / _y                mask_convs_x / _y
mask_preds         solo_ins_list                   conv_mask_list
mask_preds_x/_y    dsolo_ins_list_x / _y           conv_mask_list_x / _y
kernel_tower       kernel_convs                    kernel_convs
kernel_pred        solo_kernel                     conv_kernel
mask_head.*        mask_feat_head.*                mask_head.mask_feature_head.*
                   (``conv_pred.0.conv``)          (``conv_pred.conv``)
=================  ==============================  ==================================

The variant is read from the keys (:mod:`.solo_mmdet_detect`): the head type from its output
convs, the ResNet depth from the number of blocks in ``layer3`` (and basic vs bottleneck blocks;
ResNeXt groups from the shape of the 3x3 convs), the SOLOv2 kind from the tower depth and width
(official: SOLOv2 4 x 512, SOLOv2-light-448 2 x 256, SOLOv2-light-512-DCN 3 x 256), deformable
convs from ``conv_offset`` keys (18 offset
channels per group: DCNv1, 27: DCNv2) in the backbone, the mask-feature head and the towers
(every tower conv, or the last conv only: ``MODEL.SOLO.TOWER_DCN_CONVS``), the class count from
the category conv. A checkpoint whose ``meta`` holds its training config text (mmcv's
``meta['config']``) also gives the scale ranges, SOLOv2 grids and test size, which the weights
do not store (:mod:`.mmcv_config`); that text must agree with the weights.

The converter names the matching config under ``configs/Converted/<source>/`` and passes every
detected value that differs from that config (e.g. ``MODEL.SOLO.NUM_CLASSES``) as an override.
A SOLOv2 checkpoint whose towers match no known kind and that has no such config text is
ambiguous: it is refused unless a config is named (``--config-file``), and a named config (with
its overrides) must then hold every value read from the checkpoint.

Official model zoo -> config (``configs/Converted/SOLO-official/``): SOLO R50 / R101
(``SOLO_R50``, ``SOLO_R101``), Decoupled SOLO R50 / R101, Decoupled-light R50, Decoupled-light-DCN
R50 (``DecoupledSOLO_Light_DCN_R50``: DCNv1 in res3-res5 and in the last conv of both towers),
SOLOv2 R50 / R101 / R101-DCN / X101-DCN (``SOLOv2_X101_DCN``, ResNeXt-101 64x4d; DCNv2 in res3-res5,
every tower conv and the mask-feature head), SOLOv2-light-448 R18 / R34 / R50, SOLOv2-light-512-DCN
R50 (``SOLOv2_Light512_DCN_R50``: 3-conv towers, DCNv1 in res3-res5 and in the last tower conv,
plain mask-feature head).
"""

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .core import Conversion, ConversionError, build_cfg, register_converter, rename_keys
from .mmcv_config import config_text_of, head_facts
from .resnet import torchvision_resnet_rules
from .solo_mmdet_detect import PRED_LISTS, TOWERS, detect_variant, resnet_depth

__all__ = ["Layout", "LAYOUTS", "detect_variant", "convert_mmdet_solo", "resnet_depth"]


@dataclass(frozen=True)
class Layout:
    """Names used by one source implementation."""

    source: str
    description: str
    head: str  # prefix of the instance head
    mask_feat: str  # prefix of the SOLOv2 mask-feature head
    conv_pred: str  # conv_pred's ConvModule inside it
    # solo_d2 module -> source module, relative to ``head``
    names: Dict[str, str]
    cate_pred: Dict[str, str]  # head type -> category conv name
    config_dir: str


_OFFICIAL = Layout(
    source="solo-official",
    description="official SOLO repository (WXinlong/SOLO, mmdetection v1): SOLO, Decoupled "
    "SOLO(-light), SOLOv2(-light), DCN variants",
    head="bbox_head",
    mask_feat="mask_feat_head",
    conv_pred="conv_pred.0",
    names={
        "cate_tower": "cate_convs",
        "mask_tower": "ins_convs",
        "mask_tower_x": "ins_convs_x",
        "mask_tower_y": "ins_convs_y",
        "mask_preds": "solo_ins_list",
        "mask_preds_x": "dsolo_ins_list_x",
        "mask_preds_y": "dsolo_ins_list_y",
        "kernel_tower": "kernel_convs",
        "kernel_pred": "solo_kernel",
    },
    cate_pred={
        "SOLOHead": "solo_cate",
        "DecoupledSOLOHead": "dsolo_cate",
        "DecoupledSOLOLightHead": "dsolo_cate",
        "SOLOv2Head": "solo_cate",
    },
    config_dir="configs/Converted/SOLO-official",
)

_MMDET = Layout(
    source="mmdet",
    description="mmdetection 2.x/3.x: SOLO, Decoupled SOLO(-light), SOLOv2(-light), R101-DCN",
    head="mask_head",
    mask_feat="mask_head.mask_feature_head",
    conv_pred="conv_pred",
    names={
        "cate_tower": "cls_convs",
        "mask_tower": "mask_convs",
        "mask_tower_x": "mask_convs_x",
        "mask_tower_y": "mask_convs_y",
        "mask_preds": "conv_mask_list",
        "mask_preds_x": "conv_mask_list_x",
        "mask_preds_y": "conv_mask_list_y",
        "kernel_tower": "kernel_convs",
        "kernel_pred": "conv_kernel",
    },
    cate_pred={
        h: "conv_cls"
        for h in ("SOLOHead", "DecoupledSOLOHead", "DecoupledSOLOLightHead", "SOLOv2Head")
    },
    config_dir="configs/Converted/mmdet",
)

LAYOUTS = {l.source: l for l in (_OFFICIAL, _MMDET)}

# (head, arch, kind, dcn) -> config file name (arch: "R50", "X101" (ResNeXt), ...; kind: "" or the
# light kind of solo_mmdet_detect.SOLOV2_KINDS, "light" for Decoupled-light; dcn: any deformable
# conv). Any other combination uses the closest config of its head and kind (same dcn, else R50)
# plus the overrides of every value that differs (depth, deformable convs, widths, ...).
_CONFIGS = {
    "solo-official": {
        ("SOLOHead", "R50", "", False): "SOLO_R50.yaml",
        ("SOLOHead", "R101", "", False): "SOLO_R101.yaml",
        ("DecoupledSOLOHead", "R50", "", False): "DecoupledSOLO_R50.yaml",
        ("DecoupledSOLOHead", "R101", "", False): "DecoupledSOLO_R101.yaml",
        ("DecoupledSOLOLightHead", "R50", "light", False): "DecoupledSOLO_Light_R50.yaml",
        ("DecoupledSOLOLightHead", "R50", "light", True): "DecoupledSOLO_Light_DCN_R50.yaml",
        ("SOLOv2Head", "R50", "", False): "SOLOv2_R50.yaml",
        ("SOLOv2Head", "R101", "", False): "SOLOv2_R101.yaml",
        ("SOLOv2Head", "R101", "", True): "SOLOv2_R101_DCN.yaml",
        ("SOLOv2Head", "X101", "", True): "SOLOv2_X101_DCN.yaml",
        ("SOLOv2Head", "R18", "light448", False): "SOLOv2_Light448_R18.yaml",
        ("SOLOv2Head", "R34", "light448", False): "SOLOv2_Light448_R34.yaml",
        ("SOLOv2Head", "R50", "light448", False): "SOLOv2_Light448_R50.yaml",
        ("SOLOv2Head", "R50", "light512", True): "SOLOv2_Light512_DCN_R50.yaml",
    },
    "mmdet": {
        ("SOLOHead", "R50", "", False): "SOLO_R50.yaml",
        ("DecoupledSOLOHead", "R50", "", False): "DecoupledSOLO_R50.yaml",
        ("DecoupledSOLOLightHead", "R50", "light", False): "DecoupledSOLO_Light_R50.yaml",
        ("SOLOv2Head", "R50", "", False): "SOLOv2_R50.yaml",
        ("SOLOv2Head", "R101", "", False): "SOLOv2_R101.yaml",
        ("SOLOv2Head", "R101", "", True): "SOLOv2_R101_DCN.yaml",
        ("SOLOv2Head", "R18", "light", False): "SOLOv2_Light_R18.yaml",
        ("SOLOv2Head", "R34", "light", False): "SOLOv2_Light_R34.yaml",
        ("SOLOv2Head", "R50", "light", False): "SOLOv2_Light_R50.yaml",
    },
}


def _rules(layout: Layout, head: str) -> List:
    h, mf = re.escape(layout.head), re.escape(layout.mask_feat)
    offset = r"conv_offset(?:_mask)?"
    rules = torchvision_resnet_rules(
        "backbone.", "backbone.bottom_up.", conv_suffix=r"(?:\.conv_offset)?"
    )
    rules += [
        # mmdetection v1.0rc0-style backbone DCN: the offset conv is a sibling ``conv2_offset``
        (
            r"backbone\.layer(\d)\.(\d+)\.conv2_offset\.(weight|bias)",
            lambda m: (
                f"backbone.bottom_up.res{int(m.group(1)) + 1}.{m.group(2)}.conv2."
                f"conv_offset.{m.group(3)}"
            ),
        ),
        (
            r"neck\.lateral_convs\.(\d)\.conv\.(weight|bias)",
            lambda m: f"backbone.fpn_lateral{int(m.group(1)) + 2}.{m.group(2)}",
        ),
        (
            r"neck\.fpn_convs\.(\d)\.conv\.(weight|bias)",
            lambda m: f"backbone.fpn_output{int(m.group(1)) + 2}.{m.group(2)}",
        ),
        (rf"{h}\.{re.escape(layout.cate_pred[head])}\.(weight|bias)", r"ins_head.cate_pred.\1"),
    ]
    for t in TOWERS[head]:
        s = re.escape(layout.names[t])
        rules += [
            (rf"{h}\.{s}\.(\d+)\.conv\.(weight|bias)", rf"ins_head.{t}.\1.\2"),
            (
                rf"{h}\.{s}\.(\d+)\.conv\.{offset}\.(weight|bias)",
                rf"ins_head.{t}.\1.conv_offset.\2",
            ),
            (rf"{h}\.{s}\.(\d+)\.gn\.(weight|bias)", rf"ins_head.{t}.\1.norm.\2"),
        ]
    for p in PRED_LISTS[head]:
        rules.append(
            (rf"{h}\.{re.escape(layout.names[p])}\.(\d+)\.(weight|bias)", rf"ins_head.{p}.\1.\2")
        )
    if head == "SOLOv2Head":
        cp = re.escape(layout.conv_pred)
        rules += [
            (
                rf"{h}\.{re.escape(layout.names['kernel_pred'])}\.(weight|bias)",
                r"ins_head.kernel_pred.\1",
            ),
            (
                rf"{mf}\.convs_all_levels\.(\d)\.conv(\d)\.conv\.(weight|bias)",
                r"mask_head.convs_all_levels.\1.\2.\3",
            ),
            (
                rf"{mf}\.convs_all_levels\.(\d)\.conv(\d)\.conv\.{offset}\.(weight|bias)",
                r"mask_head.convs_all_levels.\1.\2.conv_offset.\3",
            ),
            (
                rf"{mf}\.convs_all_levels\.(\d)\.conv(\d)\.gn\.(weight|bias)",
                r"mask_head.convs_all_levels.\1.\2.norm.\3",
            ),
            (rf"{mf}\.{cp}\.conv\.(weight|bias)", r"mask_head.conv_pred.\1"),
            # deformable 1x1 conv_pred of the DCN models (see the module docstring of the report)
            (rf"{mf}\.{cp}\.conv\.{offset}\.(weight|bias)", r"mask_head.conv_pred.conv_offset.\1"),
            (rf"{mf}\.{cp}\.gn\.(weight|bias)", r"mask_head.conv_pred.norm.\1"),
        ]
    return rules


# the input convention of both sources (torchvision-style ResNet, RGB, ImageNet mean/std in 0-255)
_CONVENTION = {
    "MODEL.RESNETS.STRIDE_IN_1X1": False,
    "INPUT.FORMAT": "RGB",
    "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53],
    "MODEL.PIXEL_STD": [58.395, 57.12, 57.375],
}


def _differences(cfg, settings: Dict) -> List[Tuple[str, object, object]]:
    """``(key, checkpoint value, config value)`` for every setting ``cfg`` holds otherwise."""
    out = []
    for key, value in settings.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        current = node[leaf]
        if isinstance(current, (list, tuple)):
            same = [list(c) if isinstance(c, (list, tuple)) else c for c in current] == [
                list(v) if isinstance(v, (list, tuple)) else v for v in value
            ]
        else:
            same = current == value
        if not same:
            out.append((key, value, current))
    return out


def _table_config(layout: Layout, variant: Dict) -> str:
    head, arch, kind, dcn = variant["head"], variant["arch"], variant["kind"], variant["dcn"]
    if kind is None:
        named = ", ".join(
            sorted(
                f"{layout.config_dir}/{n}"
                for k, n in _CONFIGS[layout.source].items()
                if k[0] == head
            )
        )
        raise ConversionError(
            f"{layout.source}: cannot tell which {head} variant this checkpoint is: "
            f"{variant['why']}. The scale ranges, grids and test size are not stored in the "
            "weights: name the solo_d2 config to convert to with --config-file CONFIG (e.g. "
            f"one of {named}, with overrides as needed); the converter then checks the "
            "checkpoint against that config"
        )
    table = _CONFIGS[layout.source]
    name = table.get((head, arch, kind, dcn))
    if name is None:  # the closest config of this head and kind; overrides carry the rest
        near = sorted(
            (k for k in table if k[0] == head and k[2] == kind),
            key=lambda k: (k[3] != dcn, k[1] != "R50"),
        )
        if not near:
            raise ConversionError(
                f"{layout.source}: no solo_d2 config for a {head} "
                f"checkpoint{' (' + kind + ')' if kind else ''}"
            )
        name = table[near[0]]
    return f"{layout.config_dir}/{name}"


def _config_for(
    layout: Layout, variant: Dict, config: Optional[str] = None, opts: Sequence[str] = ()
) -> Tuple[str, List[str]]:
    """The config and the opts that set what it does not (depth, shapes, meta values).

    With ``config`` (``--config-file``), that config merged with ``opts`` must already hold
    every value read from the checkpoint: ConversionError lists those it does not, and no
    opts are added."""
    settings = {**_CONVENTION, **variant["settings"]}
    if config is not None:
        wrong = _differences(build_cfg(config, opts), settings)
        if wrong:
            raise ConversionError(
                f"{layout.source}: the checkpoint does not fit {config}"
                + (f" {list(opts)}" if opts else "")
                + ": "
                + "; ".join(
                    f"{k}: checkpoint {_yaml_value(v)}, config {_yaml_value(c)}"
                    for k, v, c in wrong
                )
                + ". Add the checkpoint's values as overrides ("
                + " ".join(
                    f"{k} {_yaml_value(v)!r}" if " " in _yaml_value(v) else f"{k} {_yaml_value(v)}"
                    for k, v, _ in wrong
                )
                + ") or pick another config"
            )
        return config, []
    config = _table_config(layout, variant)
    out: List[str] = []
    for key, value, _ in _differences(build_cfg(config), settings):
        out += [key, _yaml_value(value)]
    return config, out


def _yaml_value(value) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    return str(value)


def _facts(meta) -> Dict:
    """:func:`~.mmcv_config.head_facts` of the meta config text, {} without one."""
    text = config_text_of(meta)
    if text is None:
        return {}
    try:
        return head_facts(text)
    except ValueError as e:
        raise ConversionError(f"meta['config'] of the checkpoint: {e}") from None


def convert_mmdet_solo(
    state, layout: Layout, *, config: Optional[str] = None, opts: Sequence[str] = (), meta=None
) -> Conversion:
    """Convert an mmdetection-layout SOLO / Decoupled SOLO / SOLOv2 state dict (see module doc).

    Args:
        state: the source state dict.
        layout: :data:`LAYOUTS` entry of the source.
        config, opts: the solo_d2 config to convert to (``--config-file``) and the overrides
            given with it; the checkpoint is checked against them (required for an ambiguous
            checkpoint). None: the converter names the config and the overrides.
        meta: the checkpoint's ``meta`` (mmcv); its config text, if any, gives the scale
            ranges, grids and test size, and is checked against the weights.
    """
    variant = detect_variant(state, layout, _facts(meta))
    out = rename_keys(
        state,
        _rules(layout, variant["head"]),
        source=layout.source,
        drop=[r".*num_batches_tracked"],
    )
    config, extra = _config_for(layout, variant, config, opts)
    tower = {"all": " (every tower conv)", "last": " (last tower conv)"}.get(
        variant["tower_dcn"], ""
    )
    settings = variant["settings"]
    notes = [
        f"{layout.source} {variant['head']} {variant['arch']}"
        + (f" {variant['kind']}" if variant["kind"] else "")
        + (" DCN" if variant["dcn"] else "")
        + f", {settings['MODEL.SOLO.NUM_CLASSES']} classes",
        "torchvision-style ResNet: the config uses RGB input, ImageNet "
        "mean/std and STRIDE_IN_1X1 False",
    ]
    if variant["tower_dcn"]:
        version = "DCNv2" if settings["MODEL.SOLO.TOWER_DCN_MODULATED"] else "DCNv1"
        notes.append(f"deformable tower convs: {version}{tower}")
    if variant["mask_dcn"] and "mask_head.conv_pred.conv_offset.weight" in out:
        notes.append(
            "the source's 1x1 conv_pred of the mask-feature head is deformable (conv_offset)"
        )
    if variant["meta"]:
        notes.append("scale ranges / grids / test size read from the checkpoint's meta config text")
    return Conversion(state_dict=out, config=config, opts=extra, notes=notes)


@register_converter("solo-official", _OFFICIAL.description)
def convert_solo_official(state, *, config=None, opts=(), meta=None) -> Conversion:
    return convert_mmdet_solo(state, _OFFICIAL, config=config, opts=opts, meta=meta)


@register_converter("mmdet", _MMDET.description)
def convert_mmdet(state, *, config=None, opts=(), meta=None) -> Conversion:
    return convert_mmdet_solo(state, _MMDET, config=config, opts=opts, meta=meta)
