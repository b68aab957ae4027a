"""State-dict key sets (with shapes) of the reference layouts, built from their documented
names: torchvision's ResNet, mmdetection's FPN and ``ConvModule``, and the SOLO heads of the
official code and of mmdetection 2.x/3.x (``tests/checkpoint``); ``fill`` gives them random
values."""

import torch

_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


# ----------------------------------------------------------------------------- key generators
def torchvision_resnet_shapes(
    depth, prefix="", dcn_stages=(), dcn_style="pack", offset_ch=27, fc=False
):
    """torchvision ``ResNet`` state-dict shapes (mmdetection's ResNet uses the same names).

    dcn_style: ``"pack"`` = ``layerX.Y.conv2.conv_offset`` (mmcv / mmdet >= v1.0),
    ``"sibling"`` = ``layerX.Y.conv2_offset`` (mmdetection v1.0rc0)."""
    s = {}

    def bn(name, c):
        for f in ("weight", "bias", "running_mean", "running_var"):
            s[f"{prefix}{name}.{f}"] = (c,)
        s[f"{prefix}{name}.num_batches_tracked"] = ()

    s[f"{prefix}conv1.weight"] = (64, 3, 7, 7)
    bn("bn1", 64)
    bottleneck = depth >= 50
    exp = 4 if bottleneck else 1
    cin = 64
    for stage, n in enumerate(_BLOCKS[depth], start=1):
        planes = 64 * 2 ** (stage - 1)
        for b in range(n):
            p = f"layer{stage}.{b}"
            if bottleneck:
                convs = [(planes, cin, 1, 1), (planes, planes, 3, 3), (planes * exp, planes, 1, 1)]
            else:
                convs = [(planes, cin, 3, 3), (planes, planes, 3, 3)]
            for i, shape in enumerate(convs, start=1):
                s[f"{prefix}{p}.conv{i}.weight"] = shape
                bn(f"{p}.bn{i}", shape[0])
            if stage in dcn_stages:
                off = f"{p}.conv2.conv_offset" if dcn_style == "pack" else f"{p}.conv2_offset"
                s[f"{prefix}{off}.weight"] = (offset_ch, planes, 3, 3)
                s[f"{prefix}{off}.bias"] = (offset_ch,)
            if b == 0 and (cin != planes * exp or stage > 1):
                s[f"{prefix}{p}.downsample.0.weight"] = (planes * exp, cin, 1, 1)
                bn(f"{p}.downsample.1", planes * exp)
            cin = planes * exp
    if fc:
        s["fc.weight"], s["fc.bias"] = (1000, cin), (1000,)
    return s


def fpn_shapes(depth, out=256):
    ins = [64, 128, 256, 512] if depth < 50 else [256, 512, 1024, 2048]
    s = {}
    for i, c in enumerate(ins):
        s[f"neck.lateral_convs.{i}.conv.weight"], s[f"neck.lateral_convs.{i}.conv.bias"] = (
            (out, c, 1, 1),
            (out,),
        )
        s[f"neck.fpn_convs.{i}.conv.weight"], s[f"neck.fpn_convs.{i}.conv.bias"] = (
            (out, out, 3, 3),
            (out,),
        )
    return s


def conv_module(s, name, cout, cin, k=3, dcn=False):
    """mmcv ConvModule with GN: ``.conv.weight`` (no bias), ``.gn.{weight,bias}``."""
    s[f"{name}.conv.weight"] = (cout, cin, k, k)
    if dcn:
        s[f"{name}.conv.conv_offset.weight"] = (27 if k == 3 else 3, cin, k, k)
        s[f"{name}.conv.conv_offset.bias"] = (27 if k == 3 else 3,)
    s[f"{name}.gn.weight"] = s[f"{name}.gn.bias"] = (cout,)


NAMES = {  # (layout, role) -> module name (REFERENCE.md section 2, "Checkpoint naming")
    "official": dict(
        head="bbox_head",
        cate="cate_convs",
        ins="ins_convs",
        ins_list="solo_ins_list",
        dins_list="dsolo_ins_list",
        kernel="kernel_convs",
        kernel_pred="solo_kernel",
        mfh="mask_feat_head",
        conv_pred="conv_pred.0",
    ),
    "mmdet": dict(
        head="mask_head",
        cate="cls_convs",
        ins="mask_convs",
        ins_list="conv_mask_list",
        dins_list="conv_mask_list",
        kernel="kernel_convs",
        kernel_pred="conv_kernel",
        mfh="mask_head.mask_feature_head",
        conv_pred="conv_pred",
    ),
}


def solo_shapes(
    layout,
    head,
    depth=50,
    classes=80,
    grids=(40, 36, 24, 16, 12),
    convs=None,
    ch=None,
    mask_ch=256,
    tower_dcn=False,
    backbone_dcn=False,
    dcn_style="pack",
    fpn=256,
):
    """Full checkpoint shapes of a SOLO-family model in ``layout`` ("official" or "mmdet"),
    with ``fpn`` FPN channels."""
    n = NAMES[layout]
    h = n["head"]
    s = torchvision_resnet_shapes(
        depth, "backbone.", dcn_stages=(2, 3, 4) if backbone_dcn else (), dcn_style=dcn_style
    )
    s.update(fpn_shapes(depth, fpn))
    v2 = head == "SOLOv2"
    convs = convs or (4 if v2 else 7)
    ch = ch or (512 if v2 else 256)
    cate_name = {
        "official": {"SOLO": "solo_cate", "SOLOv2": "solo_cate"}.get(head, "dsolo_cate"),
        "mmdet": "conv_cls",
    }[layout]
    for k in range(convs):
        conv_module(s, f"{h}.{n['cate']}.{k}", ch, fpn if k == 0 else ch, dcn=tower_dcn)
    s[f"{h}.{cate_name}.weight"], s[f"{h}.{cate_name}.bias"] = (classes, ch, 3, 3), (classes,)
    if head == "SOLO":
        for k in range(convs):
            conv_module(s, f"{h}.{n['ins']}.{k}", ch, fpn + 2 if k == 0 else ch)
        for l, g in enumerate(grids):
            s[f"{h}.{n['ins_list']}.{l}.weight"], s[f"{h}.{n['ins_list']}.{l}.bias"] = (
                (g * g, ch, 1, 1),
                (g * g,),
            )
    elif head in ("Decoupled", "DecoupledLight"):
        towers = [n["ins"]] if head == "DecoupledLight" else [n["ins"] + "_x", n["ins"] + "_y"]
        for t in towers:
            for k in range(convs):
                conv_module(
                    s,
                    f"{h}.{t}.{k}",
                    ch,
                    fpn + (2 if head == "DecoupledLight" else 1) if k == 0 else ch,
                )
        for ax in ("x", "y"):
            for l, g in enumerate(grids):
                name = f"{h}.{n['dins_list']}_{ax}.{l}"
                s[f"{name}.weight"], s[f"{name}.bias"] = (g, ch, 3, 3), (g,)
    else:
        for k in range(convs):
            conv_module(s, f"{h}.{n['kernel']}.{k}", ch, fpn + 2 if k == 0 else ch, dcn=tower_dcn)
        kp = f"{h}.{n['kernel_pred']}"
        s[f"{kp}.weight"], s[f"{kp}.bias"] = (mask_ch, ch, 3, 3), (mask_ch,)
        mf = n["mfh"]
        for i in range(4):
            for j in range(max(i, 1)):
                cin = (fpn + 2 if i == 3 else fpn) if j == 0 else 128
                conv_module(s, f"{mf}.convs_all_levels.{i}.conv{j}", 128, cin, dcn=tower_dcn)
        conv_module(s, f"{mf}.{n['conv_pred']}", mask_ch, 128, k=1, dcn=tower_dcn)
    return s


def fill(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        k: (
            torch.tensor(0)
            if k.endswith("num_batches_tracked")
            else torch.randn(shape, generator=g)
        )
        for k, shape in shapes.items()
    }
