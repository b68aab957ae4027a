"""Architecture of an mmdetection-layout SOLO-family checkpoint, read from its keys and shapes
(and from the training config text in its ``meta``, when it has one).

Used by :mod:`.solo_mmdet`; see its docstring for the key layouts. What the weights tell:

- the head type (from its output convs), the ResNet depth (blocks in ``layer3``, basic vs
  bottleneck), the class count, FPN width, tower depth and width, SOLO / Decoupled grids;
- deformable convs from ``conv_offset`` keys: 18 offset channels per group = DCNv1 (offsets
  only), 27 = DCNv2 (offsets + modulation); in the towers: none, every conv (SOLOv2 R101-DCN)
  or only the last conv of every tower (SOLOv2-light-512-DCN, Decoupled-SOLO-light-DCN);
- the SOLOv2 *kind* from the tower depth and width: official SOLOv2 4 x 512, SOLOv2-light-448
  2 x 256, SOLOv2-light-512(-DCN) 3 x 256 (mmdetection: SOLOv2 4 x 512, light 2 x 256).

What they do not tell: the scale ranges, the SOLOv2 grids and the test input size. These come
from the checkpoint's ``meta`` config text (:mod:`.mmcv_config`) when present (its scale ranges
then also choose the kind); a tower matching no kind without such text is *ambiguous*.
"""

import re
from typing import Dict, List, Optional, Tuple

from .core import ConversionError, _short_list

__all__ = ["TOWERS", "PRED_LISTS", "SOLOV2_KINDS", "detect_variant", "resnet_depth"]

# solo_d2 modules of each head type (towers, then per-level or single output convs)
TOWERS = {
    "SOLOHead": ("cate_tower", "mask_tower"),
    "DecoupledSOLOHead": ("cate_tower", "mask_tower_x", "mask_tower_y"),
    "DecoupledSOLOLightHead": ("cate_tower", "mask_tower"),
    "SOLOv2Head": ("cate_tower", "kernel_tower"),
}
PRED_LISTS = {
    "SOLOHead": ("mask_preds",),
    "DecoupledSOLOHead": ("mask_preds_x", "mask_preds_y"),
    "DecoupledSOLOLightHead": ("mask_preds_x", "mask_preds_y"),
    "SOLOv2Head": (),
}

_R96 = [[1, 96], [48, 192], [96, 384], [192, 768], [384, 2048]]
_R56 = [[1, 56], [28, 112], [56, 224], [112, 448], [224, 896]]
_R64 = [[1, 64], [32, 128], [64, 256], [128, 512], [256, 2048]]
# SOLOv2 kinds each source publishes: kind -> (tower convs, tower width, scale ranges)
SOLOV2_KINDS = {
    "solo-official": {"": (4, 512, _R96), "light448": (2, 256, _R56), "light512": (3, 256, _R64)},
    "mmdet": {"": (4, 512, _R96), "light": (2, 256, _R56)},
}
# head types of the source configs (meta) -> solo_d2 head
_META_HEADS = {
    "SOLOHead": "SOLOHead",
    "DecoupledSOLOHead": "DecoupledSOLOHead",
    "DecoupledSOLOLightHead": "DecoupledSOLOLightHead",
    "SOLOv2Head": "SOLOv2Head",
    "SOLOv2LightHead": "SOLOv2Head",
    "SOLOV2Head": "SOLOv2Head",
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


def _offset_key(state, prefix: str) -> Optional[str]:
    """Key of the offset conv weight of the (deformable) conv ``prefix``, or None."""
    for name in (f"{prefix}.conv_offset.weight", f"{prefix}.conv_offset_mask.weight"):
        if name in state:
            return name
    return None


def foreign_hint(state) -> str:
    keys = list(state)
    if any(k.startswith("ins_head.") or k.startswith("backbone.bottom_up.") for k in keys):
        return (
            " (it looks like a Detectron2-based checkpoint, e.g. AdelaiDet's: use "
            "--from adelaidet-solov2)"
        )
    if any(k.startswith("bbox_head.solo") or k.startswith("bbox_head.dsolo") for k in keys):
        return " (it looks like an official SOLO checkpoint: use --from solo-official)"
    if any(k.startswith("mask_head.conv_") for k in keys):
        return " (it looks like an mmdetection 2.x/3.x checkpoint: use --from mmdet)"
    if keys and all(k.startswith(("conv1.", "bn1.", "layer", "fc.")) for k in keys):
        return " (it looks like a bare ImageNet ResNet: use --from torchvision-resnet)"
    return ""


def _tower_dcn(state, layout, towers: Dict[str, List[int]]) -> Tuple[Optional[str], bool]:
    """``(convs, modulated)`` of the deformable tower convs: convs ``None`` (no DCN), ``"all"``
    or ``"last"``; modulated: DCNv2 (27 offset channels) vs DCNv1 (18)."""
    src, h, n = layout.source, layout.head, layout.names
    keys = {
        t: [_offset_key(state, f"{h}.{n[t]}.{i}.conv") for i in idx] for t, idx in towers.items()
    }
    patterns = {t: tuple(k is not None for k in v) for t, v in keys.items()}
    num = len(next(iter(patterns.values())))
    if not any(any(p) for p in patterns.values()):
        return None, True
    allowed = {(True,) * num: "all", (False,) * (num - 1) + (True,): "last"}
    if len(set(patterns.values())) != 1 or next(iter(patterns.values())) not in allowed:
        found = {f"{h}.{n[t]}": [i for i, d in enumerate(p) if d] for t, p in patterns.items()}
        raise ConversionError(
            f"{src}: deformable convs (conv_offset) at tower conv indices {found}: solo_d2 "
            "supports none, every conv or only the last conv of every tower "
            "(MODEL.SOLO.USE_DCN_IN_TOWER, MODEL.SOLO.TOWER_DCN_CONVS 'all' / 'last')"
        )
    channels = {}
    for v in keys.values():
        for k in v:
            if k is not None:
                channels[k] = int(state[k].shape[0])
    bad = {k: c for k, c in channels.items() if c not in (18, 27)}
    if bad:
        k, c = next(iter(bad.items()))
        raise ConversionError(
            f"{src}: {k} has {c} output channels: deformable tower convs must be 3x3 with one "
            "deformable group, 18 offset channels (DCNv1) or 27 (DCNv2, with modulation)"
        )
    if len(set(channels.values())) != 1:
        raise ConversionError(
            f"{src}: DCNv1 and DCNv2 tower convs mixed "
            f"({_short_list(f'{k}: {c}' for k, c in channels.items())}); "
            "MODEL.SOLO.TOWER_DCN_MODULATED sets one kind for all"
        )
    return allowed[next(iter(patterns.values()))], next(iter(channels.values())) == 27


def _solov2_kind(source: str, convs: int, width: int, facts: Dict) -> Tuple[Optional[str], str]:
    """The SOLOv2 kind (a key of :data:`SOLOV2_KINDS`), or None and why not."""
    kinds = SOLOV2_KINDS[source]
    if "scale_ranges" in facts:
        for kind, (_, _, ranges) in kinds.items():
            if facts["scale_ranges"] == ranges:
                return kind, ""
    for kind, (c, w, _) in kinds.items():
        if (c, w) == (convs, width):
            return kind, ""
    known = ", ".join(
        f"{'SOLOv2-' + k if k else 'SOLOv2'} {c} x {w}" for k, (c, w, _) in kinds.items()
    )
    return None, (
        f"its towers ({convs} convs of {width} channels) match none of the {source} SOLOv2 models "
        f"({known} convs x channels) and it has no meta config text with known scale ranges"
    )


def _meta_settings(facts: Dict, layout, head: str, settings: Dict, tower_dcn) -> Dict[str, object]:
    """Config values from the meta config text; ConversionError where it contradicts the weights."""
    src, h, n = layout.source, layout.head, layout.names
    wrong = []
    meta_head = _META_HEADS.get(facts.get("type"))
    if facts.get("type") is not None and meta_head != head:
        wrong.append(f"{h}.type = {facts['type']!r} but the weights are a {head}")
    tower = f"{h}.{n['cate_tower']}"
    if "stacked_convs" in facts and facts["stacked_convs"] != settings["MODEL.SOLO.NUM_CONVS"]:
        wrong.append(
            f"{h}.stacked_convs = {facts['stacked_convs']} but {tower} has "
            f"{settings['MODEL.SOLO.NUM_CONVS']} convs"
        )
    if "channels" in facts and facts["channels"] != settings["MODEL.SOLO.INS_CHANNELS"]:
        wrong.append(
            f"{h} tower width {facts['channels']} but {tower}.0 has "
            f"{settings['MODEL.SOLO.INS_CHANNELS']} channels"
        )
    if (
        "num_grids" in facts
        and settings.get("MODEL.SOLO.NUM_GRIDS", facts["num_grids"]) != facts["num_grids"]
    ):
        wrong.append(
            f"{h}.num_grids = {facts['num_grids']} but the mask outputs give "
            f"{settings['MODEL.SOLO.NUM_GRIDS']}"
        )
    if "use_dcn_in_tower" in facts and bool(facts["use_dcn_in_tower"]) != (tower_dcn is not None):
        wrong.append(
            f"{h}.use_dcn_in_tower = {facts['use_dcn_in_tower']} but the towers have "
            f"{'no ' if tower_dcn is None else ''}deformable convs"
        )
    if wrong:
        raise ConversionError(
            f"{src}: the checkpoint's meta config text contradicts its weights: " + "; ".join(wrong)
        )
    out: Dict[str, object] = {}
    if "scale_ranges" in facts:
        out["MODEL.SOLO.SCALE_RANGES"] = facts["scale_ranges"]
    if "num_grids" in facts:
        out["MODEL.SOLO.NUM_GRIDS"] = facts["num_grids"]
    if isinstance(facts.get("sigma"), (int, float)):
        out["MODEL.SOLO.SIGMA"] = float(facts["sigma"])
    if "test_size" in facts:
        out["INPUT.MIN_SIZE_TEST"], out["INPUT.MAX_SIZE_TEST"] = facts["test_size"]
    return out


def detect_variant(state, layout, facts: Optional[Dict] = None) -> Dict:
    """Architecture of an mmdetection SOLO-family checkpoint.

    Args:
        state: the source state dict.
        layout: the source's :class:`~.solo_mmdet.Layout`.
        facts: :func:`~.mmcv_config.head_facts` of the checkpoint's meta config text, if any.

    Returns a dict with ``head`` (solo_d2 head name), ``depth``, ``arch`` (``"R50"``, ``"X101"``
    for a ResNeXt, ...), ``kind`` (``""``, ``"light"``,
    ``"light448"``, ``"light512"``; None when the SOLOv2 kind cannot be told, ``why`` says why),
    ``dcn`` (any deformable conv), ``tower_dcn`` (None, ``"all"`` or ``"last"``), ``mask_dcn``
    and ``settings`` (config key -> value, read from the shapes and the meta text). Raises
    ConversionError naming the expected layout for a checkpoint of another source, an
    unsupported variant, or meta text that contradicts the weights.
    """
    facts = facts or {}
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
            + foreign_hint(state)
        )
    required = [
        "backbone.conv1.weight",
        "neck.lateral_convs.0.conv.weight",
        f"{h}.{layout.cate_pred[head]}.weight",
    ]
    missing = [k for k in required if k not in state]
    if missing:
        raise ConversionError(f"not a {expect}: missing {', '.join(missing)}" + foreign_hint(state))

    depth = resnet_depth(state, "backbone.", source=src)
    # ResNeXt (e.g. the official X101-64x4d): grouped 3x3 convs,
    # weight [width, width / groups, 3, 3]
    # widths from the shapes (a ResNet built with another base_channels, e.g. mmdet's, too)
    width, per_group = (int(c) for c in state["backbone.layer1.0.conv2.weight"].shape[:2])
    conv_groups = width // per_group
    bottleneck = "backbone.layer1.0.conv3.weight" in state
    settings: Dict[str, object] = {
        "MODEL.RESNETS.DEPTH": depth,
        "MODEL.RESNETS.STEM_OUT_CHANNELS": int(state["backbone.conv1.weight"].shape[0]),
        "MODEL.RESNETS.RES2_OUT_CHANNELS": int(
            state[f"backbone.layer1.0.conv{3 if bottleneck else 2}.weight"].shape[0]
        ),
        "MODEL.RESNETS.NUM_GROUPS": conv_groups,
        "MODEL.RESNETS.WIDTH_PER_GROUP": width // conv_groups if bottleneck else 64,
    }
    cate_w = state[f"{h}.{layout.cate_pred[head]}.weight"]
    settings["MODEL.SOLO.NUM_CLASSES"] = int(cate_w.shape[0])
    settings["MODEL.FPN.OUT_CHANNELS"] = int(state["neck.lateral_convs.0.conv.weight"].shape[0])

    towers = {}
    for t in TOWERS[head]:
        idx = _indices(state, rf"{re.escape(h)}\.{n[t]}\.(\d+)\.conv\.weight")
        if not idx or idx != list(range(len(idx))):
            raise ConversionError(f"{src}: tower {h}.{n[t]} has convs {idx}; expected 0..N-1")
        towers[t] = idx
    num_convs = {len(v) for v in towers.values()}
    if len(num_convs) != 1:
        raise ConversionError(
            f"{src}: towers of different depths {towers}; solo_d2 uses one MODEL.SOLO.NUM_CONVS"
        )
    settings["MODEL.SOLO.NUM_CONVS"] = num_convs.pop()
    settings["MODEL.SOLO.INS_CHANNELS"] = int(
        state[f"{h}.{n['cate_tower']}.0.conv.weight"].shape[0]
    )
    if head != "SOLOv2Head":
        # grids from the per-level mask outputs: S^2 (SOLO) or S (decoupled) channels
        grids = []
        for level in _indices(state, rf"{re.escape(h)}\.{n[PRED_LISTS[head][0]]}\.(\d+)\.weight"):
            c = int(state[f"{h}.{n[PRED_LISTS[head][0]]}.{level}.weight"].shape[0])
            grids.append(int(round(c**0.5)) if head == "SOLOHead" else c)
        settings["MODEL.SOLO.NUM_GRIDS"] = grids

    # deformable convs: towers (none, all or the last), backbone stages, mask-feature head
    tower_dcn, tower_modulated = _tower_dcn(state, layout, towers)
    settings["MODEL.SOLO.USE_DCN_IN_TOWER"] = tower_dcn is not None
    if tower_dcn is not None:
        settings["MODEL.SOLO.TOWER_DCN_CONVS"] = tower_dcn
        settings["MODEL.SOLO.TOWER_DCN_MODULATED"] = tower_modulated

    stages, modulated, groups = [False] * 4, set(), set()
    for k, v in state.items():
        m = re.fullmatch(
            r"backbone\.layer(\d)\.(\d+)\.conv2(?:_offset|\.conv_offset(?:_mask)?)\.weight", k
        )
        if m:
            stages[int(m.group(1)) - 1] = True
            c = int(v.shape[0])
            modulated.add(c % 27 == 0)
            groups.add(c // 27 if c % 27 == 0 else c // 18)
    backbone_dcn = any(stages)
    settings["MODEL.BACKBONE.NAME"] = (
        "build_resnet_dcn_fpn_backbone" if backbone_dcn else "build_resnet_fpn_backbone"
    )
    if backbone_dcn:
        if len(modulated) != 1 or len(groups) != 1:
            raise ConversionError(
                f"{src}: mixed deformable conv kinds in the backbone ({modulated}, groups {groups})"
            )
        settings["MODEL.RESNETS.DEFORM_ON_PER_STAGE"] = stages
        settings["MODEL.RESNETS.DEFORM_MODULATED"] = modulated.pop()
        settings["MODEL.RESNETS.DEFORM_NUM_GROUPS"] = groups.pop()

    kind: Optional[str] = ""
    why = ""
    mask_dcn = False
    if head == "SOLOv2Head":
        mf = layout.mask_feat
        pred = f"{mf}.{layout.conv_pred}.conv.weight"
        first = f"{mf}.convs_all_levels.0.conv0.conv.weight"
        for k in (pred, first):
            if k not in state:
                raise ConversionError(
                    f"not a {expect}: SOLOv2 head without its mask-feature head: missing {k}"
                )
        settings["MODEL.SOLO.MASK_FEAT_CHANNELS"] = int(state[pred].shape[0])
        settings["MODEL.SOLO.MASK_MID_CHANNELS"] = int(state[first].shape[0])
        kernel_dim = int(state[f"{h}.{n['kernel_pred']}.weight"].shape[0])
        if kernel_dim != settings["MODEL.SOLO.MASK_FEAT_CHANNELS"]:
            raise ConversionError(
                f"{src}: kernel output {kernel_dim} channels but mask features "
                f"{settings['MODEL.SOLO.MASK_FEAT_CHANNELS']}: only 1x1 "
                "dynamic kernels are supported"
            )
        levels = _indices(state, rf"{re.escape(mf)}\.convs_all_levels\.(\d+)\.")
        if levels != [0, 1, 2, 3]:
            raise ConversionError(
                f"{src}: mask-feature head on levels {levels}; solo_d2 supports P2..P5 (0..3)"
            )
        mask_dcn = any(
            re.fullmatch(rf"{re.escape(mf)}\..*\.conv_offset(?:_mask)?\.weight", k) for k in state
        )
        settings["MODEL.SOLO.MASK_USE_DCN"] = mask_dcn
        kind, why = _solov2_kind(
            src, settings["MODEL.SOLO.NUM_CONVS"], settings["MODEL.SOLO.INS_CHANNELS"], facts
        )
    elif head == "DecoupledSOLOLightHead":
        kind = "light"
    if facts:
        settings.update(_meta_settings(facts, layout, head, settings, tower_dcn))
    return {
        "head": head,
        "depth": depth,
        "arch": f"{'X' if conv_groups > 1 else 'R'}{depth}",
        "kind": kind,
        "why": why,
        "dcn": backbone_dcn or tower_dcn is not None,
        "tower_dcn": tower_dcn,
        "mask_dcn": mask_dcn,
        "meta": bool(facts),
        "settings": settings,
    }
