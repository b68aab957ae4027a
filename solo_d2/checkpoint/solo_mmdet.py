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

The variant is read from the keys: the head type from its output convs, the ResNet depth from
the number of blocks in ``layer3`` (and basic vs bottleneck blocks), SOLOv2-light from the tower
width (256 vs 512), deformable convs from ``conv_offset`` keys (modulated if 27 offset channels
per group), the class count from the category conv. The converter names the matching config
under ``configs/Converted/<source>/`` and passes every detected shape value that differs from
that config (e.g. ``MODEL.SOLO.NUM_CLASSES``) as an override.
"""
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from .core import Conversion, ConversionError, _short_list, register_converter, rename_keys
from .resnet import torchvision_resnet_rules

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
    description="official SOLO repository (WXinlong/SOLO, mmdetection v1): SOLO, Decoupled SOLO(-light), "
    "SOLOv2(-light), DCN variants",
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
    cate_pred={h: "conv_cls" for h in ("SOLOHead", "DecoupledSOLOHead", "DecoupledSOLOLightHead", "SOLOv2Head")},
    config_dir="configs/Converted/mmdet",
)

LAYOUTS = {l.source: l for l in (_OFFICIAL, _MMDET)}

# solo_d2 modules of each head type (towers, then per-level or single output convs)
_TOWERS = {
    "SOLOHead": ("cate_tower", "mask_tower"),
    "DecoupledSOLOHead": ("cate_tower", "mask_tower_x", "mask_tower_y"),
    "DecoupledSOLOLightHead": ("cate_tower", "mask_tower"),
    "SOLOv2Head": ("cate_tower", "kernel_tower"),
}
_PRED_LISTS = {
    "SOLOHead": ("mask_preds",),
    "DecoupledSOLOHead": ("mask_preds_x", "mask_preds_y"),
    "DecoupledSOLOLightHead": ("mask_preds_x", "mask_preds_y"),
    "SOLOv2Head": (),
}

# (head, depth, light, dcn) -> config file name; any other combination uses the R50 config of
# its kind plus MODEL.RESNETS.DEPTH overrides.
_CONFIGS = {
    "solo-official": {
        ("SOLOHead", 50, False, False): "SOLO_R50.yaml",
        ("SOLOHead", 101, False, False): "SOLO_R101.yaml",
        ("DecoupledSOLOHead", 50, False, False): "DecoupledSOLO_R50.yaml",
        ("DecoupledSOLOLightHead", 50, True, False): "DecoupledSOLO_Light_R50.yaml",
        ("SOLOv2Head", 50, False, False): "SOLOv2_R50.yaml",
        ("SOLOv2Head", 101, False, False): "SOLOv2_R101.yaml",
        ("SOLOv2Head", 101, False, True): "SOLOv2_R101_DCN.yaml",
        ("SOLOv2Head", 18, True, False): "SOLOv2_Light448_R18.yaml",
        ("SOLOv2Head", 34, True, False): "SOLOv2_Light448_R34.yaml",
        ("SOLOv2Head", 50, True, False): "SOLOv2_Light448_R50.yaml",
    },
    "mmdet": {
        ("SOLOHead", 50, False, False): "SOLO_R50.yaml",
        ("DecoupledSOLOHead", 50, False, False): "DecoupledSOLO_R50.yaml",
        ("DecoupledSOLOLightHead", 50, True, False): "DecoupledSOLO_Light_R50.yaml",
        ("SOLOv2Head", 50, False, False): "SOLOv2_R50.yaml",
        ("SOLOv2Head", 101, False, False): "SOLOv2_R101.yaml",
        ("SOLOv2Head", 101, False, True): "SOLOv2_R101_DCN.yaml",
        ("SOLOv2Head", 18, True, False): "SOLOv2_Light_R18.yaml",
        ("SOLOv2Head", 34, True, False): "SOLOv2_Light_R34.yaml",
        ("SOLOv2Head", 50, True, False): "SOLOv2_Light_R50.yaml",
    },
}

_DEPTHS = {(2, False): 18, (6, False): 34, (6, True): 50, (23, True): 101, (36, True): 152}


def resnet_depth(state, prefix: str, *, source: str) -> int:
    """ResNet depth of a torchvision-layout ResNet under ``prefix`` (e.g. ``"backbone."``):
    from the number of blocks in ``layer3`` and whether blocks have a third conv."""
    p = re.escape(prefix)
    blocks = {int(m.group(1)) for k in state for m in [re.match(rf"{p}layer3\.(\d+)\.", k)] if m}
    bottleneck = f"{prefix}layer1.0.conv3.weight" in state
    depth = _DEPTHS.get((len(blocks), bottleneck))
    if depth is None:
        raise ConversionError(
            f"{source}: cannot tell the ResNet depth: {len(blocks)} blocks in {prefix}layer3 "
            f"({'bottleneck' if bottleneck else 'basic'} blocks); supported: 18, 34, 50, 101, 152"
        )
    return depth


def _indices(state, pattern: str) -> List[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in state for m in [rx.match(k)] if m})


def _offset_channels(state, prefix: str) -> Optional[int]:
    """Output channels of the offset conv of the (deformable) conv ``prefix``, or None."""
    for name in (f"{prefix}.conv_offset.weight", f"{prefix}.conv_offset_mask.weight"):
        if name in state:
            return state[name].shape[0]
    return None


def _foreign_hint(state) -> str:
    keys = list(state)
    if any(k.startswith("ins_head.") or k.startswith("backbone.bottom_up.") for k in keys):
        return " (it looks like a Detectron2-based checkpoint, e.g. AdelaiDet's: use --from adelaidet-solov2)"
    if any(k.startswith("bbox_head.solo") or k.startswith("bbox_head.dsolo") for k in keys):
        return " (it looks like an official SOLO checkpoint: use --from solo-official)"
    if any(k.startswith("mask_head.conv_") for k in keys):
        return " (it looks like an mmdetection 2.x/3.x checkpoint: use --from mmdet)"
    if keys and all(k.startswith(("conv1.", "bn1.", "layer", "fc.")) for k in keys):
        return " (it looks like a bare ImageNet ResNet: use --from torchvision-resnet)"
    return ""


def detect_variant(state, layout: Layout) -> Dict:
    """Architecture of an mmdetection SOLO-family checkpoint.

    Returns a dict with ``head`` (solo_d2 head name), ``depth``, ``light``, ``dcn`` (backbone
    deformable stages), ``tower_dcn``, ``mask_dcn``, ``settings`` (config key -> value read from
    the shapes) and ``offset_rules`` hints. Raises ConversionError naming the expected layout
    for a checkpoint of another source or an unsupported variant.
    """
    src, h = layout.source, layout.head
    expect = f"{layout.source} checkpoint ({layout.description}; keys backbone.*, neck.*, {h}.*)"
    n = layout.names

    def has(module):
        return any(k.startswith(f"{h}.{module}.") for k in state)

    if has(n["kernel_pred"]):
        head = "SOLOv2Head"
    elif has(n["mask_preds_x"]):
        head = "DecoupledSOLOLightHead" if has(n["mask_tower"]) else "DecoupledSOLOHead"
    elif has(n["mask_preds"]):
        head = "SOLOHead"
    else:
        raise ConversionError(
            f"not a {expect}: no SOLO head outputs ({h}.{n['kernel_pred']}, {h}.{n['mask_preds']}, "
            f"{h}.{n['mask_preds_x']}) among {len(state)} keys like {_short_list(state, 6)}"
            + _foreign_hint(state)
        )
    required = ["backbone.conv1.weight", "neck.lateral_convs.0.conv.weight", f"{h}.{layout.cate_pred[head]}.weight"]
    missing = [k for k in required if k not in state]
    if missing:
        raise ConversionError(f"not a {expect}: missing {', '.join(missing)}" + _foreign_hint(state))

    depth = resnet_depth(state, "backbone.", source=src)
    settings: Dict[str, object] = {}
    cate_w = state[f"{h}.{layout.cate_pred[head]}.weight"]
    settings["MODEL.SOLO.NUM_CLASSES"] = int(cate_w.shape[0])
    settings["MODEL.FPN.OUT_CHANNELS"] = int(state["neck.lateral_convs.0.conv.weight"].shape[0])

    towers = {}
    for t in _TOWERS[head]:
        idx = _indices(state, rf"{re.escape(h)}\.{n[t]}\.(\d+)\.conv\.weight")
        if not idx or idx != list(range(len(idx))):
            raise ConversionError(f"{src}: tower {h}.{n[t]} has convs {idx}; expected 0..N-1")
        towers[t] = idx
    num_convs = {len(v) for v in towers.values()}
    if len(num_convs) != 1:
        raise ConversionError(f"{src}: towers of different depths {towers}; solo_d2 uses one MODEL.SOLO.NUM_CONVS")
    settings["MODEL.SOLO.NUM_CONVS"] = num_convs.pop()
    settings["MODEL.SOLO.INS_CHANNELS"] = int(state[f"{h}.{n['cate_tower']}.0.conv.weight"].shape[0])
    if head != "SOLOv2Head":
        # grids from the per-level mask outputs: S^2 (SOLO) or S (decoupled) channels
        grids = []
        for level in _indices(state, rf"{re.escape(h)}\.{n[_PRED_LISTS[head][0]]}\.(\d+)\.weight"):
            c = int(state[f"{h}.{n[_PRED_LISTS[head][0]]}.{level}.weight"].shape[0])
            grids.append(int(round(c**0.5)) if head == "SOLOHead" else c)
        settings["MODEL.SOLO.NUM_GRIDS"] = grids

    # deformable convs: towers (all convs or none), backbone stages, mask-feature head
    tower_offsets = {
        t: [_offset_channels(state, f"{h}.{n[t]}.{i}.conv") for i in idx] for t, idx in towers.items()
    }
    flat = [c for v in tower_offsets.values() for c in v]
    tower_dcn = any(c is not None for c in flat)
    if tower_dcn and any(c is None for c in flat):
        raise ConversionError(
            f"{src}: deformable convs only in some tower convs ({ {t: [c is not None for c in v] for t, v in tower_offsets.items()} }), "
            "as in SOLOv2-light-DCN / Decoupled-SOLO-light-DCN (DCN in the last tower conv only): solo_d2's "
            "MODEL.SOLO.USE_DCN_IN_TOWER puts a deformable conv in every tower conv, so this variant cannot be "
            "converted exactly"
        )
    if tower_dcn and any(c % 27 for c in flat):
        raise ConversionError(
            f"{src}: tower convs are DCNv1 (offset channels {sorted(set(flat))}, no modulation); solo_d2's tower "
            "deformable convs are modulated (DCNv2) only"
        )
    settings["MODEL.SOLO.USE_DCN_IN_TOWER"] = tower_dcn

    stages, modulated, groups = [False] * 4, set(), set()
    for k, v in state.items():
        m = re.fullmatch(r"backbone\.layer(\d)\.(\d+)\.conv2(?:_offset|\.conv_offset(?:_mask)?)\.weight", k)
        if m:
            stages[int(m.group(1)) - 1] = True
            c = int(v.shape[0])
            modulated.add(c % 27 == 0)
            groups.add(c // 27 if c % 27 == 0 else c // 18)
    dcn = any(stages)
    if dcn:
        if len(modulated) != 1 or len(groups) != 1:
            raise ConversionError(f"{src}: mixed deformable conv kinds in the backbone ({modulated}, groups {groups})")
        settings["MODEL.BACKBONE.NAME"] = "build_resnet_dcn_fpn_backbone"
        settings["MODEL.RESNETS.DEFORM_ON_PER_STAGE"] = stages
        settings["MODEL.RESNETS.DEFORM_MODULATED"] = modulated.pop()
        settings["MODEL.RESNETS.DEFORM_NUM_GROUPS"] = groups.pop()

    light = False
    mask_dcn = False
    if head == "SOLOv2Head":
        mf = layout.mask_feat
        pred = f"{mf}.{layout.conv_pred}.conv.weight"
        first = f"{mf}.convs_all_levels.0.conv0.conv.weight"
        for k in (pred, first):
            if k not in state:
                raise ConversionError(f"not a {expect}: SOLOv2 head without its mask-feature head: missing {k}")
        settings["MODEL.SOLO.MASK_FEAT_CHANNELS"] = int(state[pred].shape[0])
        settings["MODEL.SOLO.MASK_MID_CHANNELS"] = int(state[first].shape[0])
        kernel_dim = int(state[f"{h}.{n['kernel_pred']}.weight"].shape[0])
        if kernel_dim != settings["MODEL.SOLO.MASK_FEAT_CHANNELS"]:
            raise ConversionError(
                f"{src}: kernel output {kernel_dim} channels but mask features {settings['MODEL.SOLO.MASK_FEAT_CHANNELS']}: "
                "only 1x1 dynamic kernels are supported"
            )
        levels = _indices(state, rf"{re.escape(mf)}\.convs_all_levels\.(\d+)\.")
        if levels != [0, 1, 2, 3]:
            raise ConversionError(f"{src}: mask-feature head on levels {levels}; solo_d2 supports P2..P5 (0..3)")
        mask_dcn = any(re.fullmatch(rf"{re.escape(mf)}\..*\.conv_offset(?:_mask)?\.weight", k) for k in state)
        settings["MODEL.SOLO.MASK_USE_DCN"] = mask_dcn
        light = settings["MODEL.SOLO.INS_CHANNELS"] < 512
    elif head == "DecoupledSOLOLightHead":
        light = True
    return {
        "head": head,
        "depth": depth,
        "light": light,
        "dcn": dcn,
        "tower_dcn": tower_dcn,
        "mask_dcn": mask_dcn,
        "settings": settings,
    }


def _rules(layout: Layout, head: str) -> List:
    h, mf = re.escape(layout.head), re.escape(layout.mask_feat)
    offset = r"conv_offset(?:_mask)?"
    rules = torchvision_resnet_rules("backbone.", "backbone.bottom_up.", conv_suffix=r"(?:\.conv_offset)?")
    rules += [
        # mmdetection v1.0rc0-style backbone DCN: the offset conv is a sibling ``conv2_offset``
        (
            r"backbone\.layer(\d)\.(\d+)\.conv2_offset\.(weight|bias)",
            lambda m: f"backbone.bottom_up.res{int(m.group(1)) + 1}.{m.group(2)}.conv2.conv_offset.{m.group(3)}",
        ),
        (r"neck\.lateral_convs\.(\d)\.conv\.(weight|bias)", lambda m: f"backbone.fpn_lateral{int(m.group(1)) + 2}.{m.group(2)}"),
        (r"neck\.fpn_convs\.(\d)\.conv\.(weight|bias)", lambda m: f"backbone.fpn_output{int(m.group(1)) + 2}.{m.group(2)}"),
        (rf"{h}\.{re.escape(layout.cate_pred[head])}\.(weight|bias)", r"ins_head.cate_pred.\1"),
    ]
    for t in _TOWERS[head]:
        s = re.escape(layout.names[t])
        rules += [
            (rf"{h}\.{s}\.(\d+)\.conv\.(weight|bias)", rf"ins_head.{t}.\1.\2"),
            (rf"{h}\.{s}\.(\d+)\.conv\.{offset}\.(weight|bias)", rf"ins_head.{t}.\1.conv_offset.\2"),
            (rf"{h}\.{s}\.(\d+)\.gn\.(weight|bias)", rf"ins_head.{t}.\1.norm.\2"),
        ]
    for p in _PRED_LISTS[head]:
        rules.append((rf"{h}\.{re.escape(layout.names[p])}\.(\d+)\.(weight|bias)", rf"ins_head.{p}.\1.\2"))
    if head == "SOLOv2Head":
        cp = re.escape(layout.conv_pred)
        rules += [
            (rf"{h}\.{re.escape(layout.names['kernel_pred'])}\.(weight|bias)", r"ins_head.kernel_pred.\1"),
            (rf"{mf}\.convs_all_levels\.(\d)\.conv(\d)\.conv\.(weight|bias)", r"mask_head.convs_all_levels.\1.\2.\3"),
            (rf"{mf}\.convs_all_levels\.(\d)\.conv(\d)\.conv\.{offset}\.(weight|bias)", r"mask_head.convs_all_levels.\1.\2.conv_offset.\3"),
            (rf"{mf}\.convs_all_levels\.(\d)\.conv(\d)\.gn\.(weight|bias)", r"mask_head.convs_all_levels.\1.\2.norm.\3"),
            (rf"{mf}\.{cp}\.conv\.(weight|bias)", r"mask_head.conv_pred.\1"),
            # deformable 1x1 conv_pred of the DCN models (see the module docstring of the report)
            (rf"{mf}\.{cp}\.conv\.{offset}\.(weight|bias)", r"mask_head.conv_pred.conv_offset.\1"),
            (rf"{mf}\.{cp}\.gn\.(weight|bias)", r"mask_head.conv_pred.norm.\1"),
        ]
    return rules


def _config_for(layout: Layout, variant: Dict) -> Tuple[str, List[str]]:
    """Config path and the opts that set what the config does not (depth, shapes)."""
    from .core import build_cfg

    head, depth, light, dcn = variant["head"], variant["depth"], variant["light"], variant["dcn"]
    table = _CONFIGS[layout.source]
    opts: List[str] = []
    name = table.get((head, depth, light, dcn))
    if name is None:
        name = table.get((head, 50, light, False)) or table.get((head, 50, not light, False))
        if name is None:  # e.g. an official SOLO-light: the decoupled-light table entry has light=True
            raise ConversionError(f"{layout.source}: no solo_d2 config for a {head} checkpoint")
        opts += ["MODEL.RESNETS.DEPTH", str(depth)]
        if depth in (18, 34):
            opts += ["MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]
    config = f"{layout.config_dir}/{name}"
    cfg = build_cfg(config, opts)
    for key, value in variant["settings"].items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        current = node[leaf]
        if isinstance(current, (list, tuple)):
            same = list(current) == list(value)
        else:
            same = current == value
        if not same:
            opts += [key, _yaml_value(value)]
    return config, opts


def _yaml_value(value) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    return str(value)


def convert_mmdet_solo(state, layout: Layout) -> Conversion:
    """Convert an mmdetection-layout SOLO / Decoupled SOLO / SOLOv2 state dict (see module doc)."""
    variant = detect_variant(state, layout)
    out = rename_keys(state, _rules(layout, variant["head"]), source=layout.source, drop=[r".*num_batches_tracked"])
    config, opts = _config_for(layout, variant)
    notes = [
        f"{layout.source} {variant['head']} R{variant['depth']}"
        + (" light" if variant["light"] else "")
        + (" DCN" if variant["dcn"] or variant["tower_dcn"] else "")
        + f", {variant['settings']['MODEL.SOLO.NUM_CLASSES']} classes",
        "torchvision-style ResNet: the config uses RGB input, ImageNet mean/std and STRIDE_IN_1X1 False",
    ]
    if variant["mask_dcn"] and "mask_head.conv_pred.conv_offset.weight" in out:
        notes.append("the source's 1x1 conv_pred of the mask-feature head is deformable (conv_offset)")
    return Conversion(state_dict=out, config=config, opts=opts, notes=notes)


@register_converter("solo-official", _OFFICIAL.description)
def convert_solo_official(state) -> Conversion:
    return convert_mmdet_solo(state, _OFFICIAL)


@register_converter("mmdet", _MMDET.description)
def convert_mmdet(state) -> Conversion:
    return convert_mmdet_solo(state, _MMDET)
