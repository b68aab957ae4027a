"""Every checkpoint of the official SOLO model zoo (WXinlong/SOLO, mmdetection v1) converts and
loads strictly, including the light DCN models whose towers have a DCNv1 conv in the last conv
only; SOLOv2 variants are told apart by tower depth (and by the ``meta`` config text when the
checkpoint has one), and an ambiguous checkpoint needs ``--config-file``.

Key sets (with shapes) are built from the official layout (``tests/helpers/checkpoint_shapes.py``):
``ConvModule`` towers (``.conv`` + ``.gn``, no conv bias) whose deformable convs add
``.conv.conv_offset`` (DCNv1 ``DeformConvPack``: 2 x 3 x 3 = 18 channels, DCNv2: 27), backbone
DCN as ``layerX.Y.conv2.conv_offset``. Real shapes, random values.
"""

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d
from torchvision.ops import deform_conv2d

from solo_d2.checkpoint import ConversionError, verify_state_dict
from solo_d2.checkpoint.core import build_cfg
from solo_d2.checkpoint.mmcv_config import head_facts, parse_config_text
from solo_d2.checkpoint.solo_mmdet import convert_solo_official
from solo_d2.modeling.backbone import DeformConv2d
from solo_d2.modeling.solo.heads import make_tower
from tests.helpers import run_converter
from tests.helpers.checkpoint_shapes import fill, solo_shapes

pytestmark = pytest.mark.usefixtures("single_thread")

CONVERTED = "configs/Converted/SOLO-official"


def _offsets(s, prefix, channels, cin):
    s[f"{prefix}.conv.conv_offset.weight"] = (channels, cin, 3, 3)
    s[f"{prefix}.conv.conv_offset.bias"] = (channels,)


def _dcnv1_backbone(s):
    for k in [k for k in s if k.startswith("backbone.") and ".conv_offset." in k]:
        s[k] = (18,) + tuple(s[k][1:])


def _resnext(s, groups=64, base_width=4):
    """mmdetection's ResNeXt (``groups`` x ``base_width``d): conv1/conv2 of every block
    ``width = planes * base_width / 64 * groups`` channels wide, conv2 grouped."""
    for k in list(s):
        parts = k.split(".")
        if len(parts) < 4 or not parts[1].startswith("layer"):
            continue
        planes = 64 * 2 ** (int(parts[1][5:]) - 1)
        width = planes * base_width // 64 * groups
        name = ".".join(parts[3:])
        if name == "conv1.weight":
            s[k] = (width,) + tuple(s[k][1:])
        elif name == "conv2.weight":
            s[k] = (width, width // groups, 3, 3)
        elif name == "conv3.weight":
            s[k] = (s[k][0], width, 1, 1)
        elif name.startswith(("bn1.", "bn2.")) and s[k]:
            s[k] = (width,)
        elif name.startswith("conv2.conv_offset.weight"):
            s[k] = (s[k][0], width, 3, 3)


def official_shapes(model: str):
    """Key -> shape of an official model-zoo checkpoint (README "Model zoo" names)."""
    light512 = dict(convs=3, ch=256, mask_ch=128, backbone_dcn=True)
    kwargs = {
        "SOLO_R50": ("SOLO", {}),
        "SOLO_R101": ("SOLO", {"depth": 101}),
        "Decoupled_SOLO_R50": ("Decoupled", {}),
        "Decoupled_SOLO_R101": ("Decoupled", {"depth": 101}),
        "Decoupled_SOLO_Light_R50": ("DecoupledLight", {"convs": 4}),
        "Decoupled_SOLO_Light_DCN_R50": ("DecoupledLight", {"convs": 4, "backbone_dcn": True}),
        "SOLOv2_R50": ("SOLOv2", {}),
        "SOLOv2_R101": ("SOLOv2", {"depth": 101}),
        "SOLOv2_R101_DCN": ("SOLOv2", {"depth": 101, "tower_dcn": True, "backbone_dcn": True}),
        "SOLOv2_X101_DCN": ("SOLOv2", {"depth": 101, "tower_dcn": True, "backbone_dcn": True}),
        "SOLOv2_Light_448_R18": ("SOLOv2", {"depth": 18, "convs": 2, "ch": 256, "mask_ch": 128}),
        "SOLOv2_Light_448_R34": ("SOLOv2", {"depth": 34, "convs": 2, "ch": 256, "mask_ch": 128}),
        "SOLOv2_Light_448_R50": ("SOLOv2", {"convs": 2, "ch": 256, "mask_ch": 128}),
        "SOLOv2_Light_512_DCN_R50": ("SOLOv2", light512),
    }[model]
    s = solo_shapes("official", kwargs[0], **kwargs[1])
    if model == "SOLOv2_X101_DCN":
        _resnext(s)
    if "Light" in model and "DCN" in model:  # DCNv1 in res3-res5 and the last conv of each tower
        _dcnv1_backbone(s)
        towers = (
            ("cate_convs", "kernel_convs")
            if model.startswith("SOLOv2")
            else ("cate_convs", "ins_convs")
        )
        last = kwargs[1]["convs"] - 1
        for t in towers:
            _offsets(s, f"bbox_head.{t}.{last}", 18, 256)
    return s


ZOO = {
    "SOLO_R50": "SOLO_R50.yaml",
    "SOLO_R101": "SOLO_R101.yaml",
    "Decoupled_SOLO_R50": "DecoupledSOLO_R50.yaml",
    "Decoupled_SOLO_R101": "DecoupledSOLO_R101.yaml",
    "Decoupled_SOLO_Light_R50": "DecoupledSOLO_Light_R50.yaml",
    "Decoupled_SOLO_Light_DCN_R50": "DecoupledSOLO_Light_DCN_R50.yaml",
    "SOLOv2_R50": "SOLOv2_R50.yaml",
    "SOLOv2_R101": "SOLOv2_R101.yaml",
    "SOLOv2_R101_DCN": "SOLOv2_R101_DCN.yaml",
    "SOLOv2_X101_DCN": "SOLOv2_X101_DCN.yaml",
    "SOLOv2_Light_448_R18": "SOLOv2_Light448_R18.yaml",
    "SOLOv2_Light_448_R34": "SOLOv2_Light448_R34.yaml",
    "SOLOv2_Light_448_R50": "SOLOv2_Light448_R50.yaml",
    "SOLOv2_Light_512_DCN_R50": "SOLOv2_Light512_DCN_R50.yaml",
}


@pytest.mark.parametrize("model", list(ZOO))
def test_official_zoo_checkpoint_converts_and_loads_strictly(model):
    conv = convert_solo_official(fill(official_shapes(model)))
    assert conv.config == f"{CONVERTED}/{ZOO[model]}"
    assert conv.opts == []  # the named config is the model, no override needed
    verify_state_dict(
        conv.state_dict, conv.config, source="solo-official"
    )  # zero missing / unexpected


# ----------------------------------------------------------------------------- DCNv1 numerics
def _light512_source(seed=0):
    src = fill(official_shapes("SOLOv2_Light_512_DCN_R50"), seed=seed)
    for k in [k for k in src if ".conv_offset." in k]:  # offsets of a fraction of a pixel
        src[k] = src[k] * 0.01
    return src


@pytest.fixture(scope="module")
def light512_model():
    from detectron2.modeling import build_model

    src = _light512_source()
    conv = convert_solo_official(src)
    model = build_model(build_cfg(conv.config, conv.opts)).eval()
    model.load_state_dict(conv.state_dict, strict=True)
    return model, src


@pytest.mark.parametrize(
    "tower,source", [("kernel_tower", "kernel_convs"), ("cate_tower", "cate_convs")]
)
def test_dcnv1_tower_conv_computes_torchvision_deform_conv2d(light512_model, tower, source):
    model, src = light512_model
    layers = getattr(model.ins_head, tower)
    assert [type(m) for m in layers] == [Conv2d, Conv2d, DeformConv2d]  # DCN in the last conv only
    layer = layers[2]
    p = f"bbox_head.{source}.2"
    assert layer.bias is None and layer.conv_offset.weight.shape == (18, 256, 3, 3)
    torch.manual_seed(0)
    x = torch.randn(2, 256, 10, 12)
    w, off_w, off_b = (
        src[f"{p}.conv.weight"],
        src[f"{p}.conv.conv_offset.weight"],
        src[f"{p}.conv.conv_offset.bias"],
    )

    def gn_relu(y):
        return F.relu(F.group_norm(y, 32, src[f"{p}.gn.weight"], src[f"{p}.gn.bias"], eps=1e-5))

    offset = F.conv2d(x, off_w, off_b, padding=1)
    with torch.no_grad():
        out = layer(x)
        ref = gn_relu(deform_conv2d(x, offset, w, None, padding=1))  # DCNv1: no mask
        plain = gn_relu(F.conv2d(x, w, padding=1))
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
        assert (out - plain).abs().max() > 1e-2  # the offsets matter
        saved = [t.clone() for t in (layer.conv_offset.weight, layer.conv_offset.bias)]
        layer.conv_offset.weight.zero_()
        layer.conv_offset.bias.zero_()
        torch.testing.assert_close(
            layer(x), plain, rtol=1e-4, atol=1e-4
        )  # zero offsets: a plain conv
        layer.conv_offset.weight.copy_(saved[0])
        layer.conv_offset.bias.copy_(saved[1])


def test_dcnv1_backbone_conv_is_dcnv1(light512_model):
    model, src = light512_model
    conv2 = model.backbone.bottom_up.res3[0].conv2
    assert type(conv2) is DeformConv2d and conv2.stride == (2, 2)
    assert torch.equal(conv2.conv_offset.weight, src["backbone.layer2.0.conv2.conv_offset.weight"])


def test_decoupled_light_dcn_towers():
    from detectron2.modeling import build_model

    conv = convert_solo_official(fill(official_shapes("Decoupled_SOLO_Light_DCN_R50")))
    head = build_model(build_cfg(conv.config, conv.opts)).ins_head
    for tower in (head.cate_tower, head.mask_tower):
        assert [type(m) is DeformConv2d for m in tower] == [False, False, False, True]
    assert conv.state_dict["ins_head.mask_tower.3.conv_offset.weight"].shape == (18, 256, 3, 3)
    assert any("DCNv1 (last tower conv)" in n for n in conv.notes)


def test_make_tower_dcn_options():
    t = make_tower(10, 32, 3, "GN", True, dcn_convs="all", dcn_modulated=True)
    assert [m.conv_offset.out_channels for m in t] == [27, 27, 27]
    with pytest.raises(ValueError, match="MODEL.SOLO.TOWER_DCN_CONVS"):
        make_tower(10, 32, 3, "GN", True, dcn_convs="first")


# ----------------------------------------------------------------------------- variant detection
def _ambiguous():
    """SOLOv2 R50 with 4-conv towers of 256 channels: the depth of SOLOv2, the width of light."""
    return fill(solo_shapes("official", "SOLOv2", convs=4, ch=256, mask_ch=256))


def test_light_detected_by_depth_not_width():
    with pytest.raises(ConversionError, match=r"4 convs of 256 channels.*--config-file"):
        convert_solo_official(_ambiguous())
    # 3 x 256 without DCN: the light-512 family, DCN switched off by overrides
    conv = convert_solo_official(
        fill(solo_shapes("official", "SOLOv2", convs=3, ch=256, mask_ch=128))
    )
    assert conv.config == f"{CONVERTED}/SOLOv2_Light512_DCN_R50.yaml"
    assert conv.opts == [
        "MODEL.SOLO.USE_DCN_IN_TOWER",
        "False",
        "MODEL.BACKBONE.NAME",
        "build_resnet_fpn_backbone",
    ]


def test_config_file_checks_the_checkpoint(tmp_path):
    torch.save({"state_dict": _ambiguous()}, tmp_path / "in.pth")
    cfg = f"{CONVERTED}/SOLOv2_R50.yaml"
    proc = run_converter(
        "solo-official", "--config-file", cfg, tmp_path / "in.pth", tmp_path / "out.pth"
    )
    assert (
        proc.returncode == 1
        and "MODEL.SOLO.INS_CHANNELS: checkpoint 256, config 512" in proc.stderr
    )
    assert str(tmp_path / "in.pth") in proc.stderr and not (tmp_path / "out.pth").exists()
    proc = run_converter(
        "solo-official",
        "--config-file",
        cfg,
        tmp_path / "in.pth",
        tmp_path / "out.pth",
        "MODEL.SOLO.INS_CHANNELS",
        "256",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == cfg and (tmp_path / "out.pth").exists()


_TEXT = """# an mmcv config file text, as mmdetection v1 keeps it in meta['config']
model = dict(
    type='SOLOv2',
    backbone=dict(type='ResNet', depth=50),
    bbox_head=dict(
        type='{head}',
        num_classes=81,
        stacked_convs={convs},
        seg_feat_channels=256,
        scale_ranges=((1, 64), (32, 128), (64, 256), (128, 512), (256, 2048)),
        sigma=0.2,
        num_grids=[40, 36, 24, 16, {last_grid}],
        ins_out_channels=128))
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='MultiScaleFlipAug', img_scale=(852, 512), flip=False,
         transforms=[dict(type='Normalize', **img_norm_cfg)]),
]
work_dir = './work_dirs/' + 'x'
"""


def test_meta_config_text_read(tmp_path):
    # the official light-512-DCN checkpoint with its config text: no override
    text = _TEXT.format(head="SOLOv2LightHead", convs=3, last_grid=12)
    torch.save({"meta": {"config": text}, "state_dict": _light512_source()}, tmp_path / "in.pth")
    proc = run_converter("solo-official", tmp_path / "in.pth", tmp_path / "out.pth")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == f"{CONVERTED}/SOLOv2_Light512_DCN_R50.yaml"
    assert "config overrides" not in proc.stdout and "meta config text" in proc.stdout
    # 2-conv towers (the depth of light-448) trained at the light-512 scale ranges, other grids
    s = fill(solo_shapes("official", "SOLOv2", convs=2, ch=256, mask_ch=128))
    assert convert_solo_official(s).config == f"{CONVERTED}/SOLOv2_Light448_R50.yaml"
    conv = convert_solo_official(
        s, meta={"config": _TEXT.format(head="SOLOv2Head", convs=2, last_grid=10)}
    )
    assert conv.config == f"{CONVERTED}/SOLOv2_Light512_DCN_R50.yaml"
    cfg = build_cfg(conv.config, conv.opts)
    assert cfg.MODEL.SOLO.NUM_CONVS == 2 and not cfg.MODEL.SOLO.USE_DCN_IN_TOWER
    assert cfg.MODEL.SOLO.NUM_GRIDS == [40, 36, 24, 16, 10] and cfg.INPUT.MIN_SIZE_TEST == 512
    assert cfg.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone"


def test_meta_config_text_contradicting_the_weights_refused():
    s = fill(solo_shapes("official", "SOLOv2", convs=2, ch=256, mask_ch=128))
    with pytest.raises(
        ConversionError, match=r"bbox_head\.stacked_convs = 4 but bbox_head\.cate_convs has 2 convs"
    ):
        convert_solo_official(
            s, meta={"config": _TEXT.format(head="SOLOv2Head", convs=4, last_grid=12)}
        )
    # the ambiguous 4 x 256 checkpoint becomes a SOLOv2 (scale ranges of SOLOv2)
    # with a width override
    text = (
        _TEXT.format(head="SOLOv2Head", convs=4, last_grid=12)
        .replace(
            "((1, 64), (32, 128), (64, 256), (128, 512), (256, 2048))",
            "((1, 96), (48, 192), (96, 384), (192, 768), (384, 2048))",
        )
        .replace("img_scale=(852, 512)", "img_scale=(1333, 800)")
    )
    conv = convert_solo_official(_ambiguous(), meta={"config": text})
    assert conv.config == f"{CONVERTED}/SOLOv2_R50.yaml" and conv.opts == [
        "MODEL.SOLO.INS_CHANNELS",
        "256",
    ]


def test_config_text_is_not_executed():
    env = parse_config_text(
        "import os\nx = os.system('exit 3')\ny = dict(a=(1, -2), b=[x], c=__import__('os'))\n"
    )
    assert (
        env["y"]["a"] == (1, -2)
        and repr(env["y"]["b"][0]) == "<unknown>"
        and repr(env["y"]["c"]) == "<unknown>"
    )
    assert head_facts(_TEXT.format(head="SOLOv2LightHead", convs=3, last_grid=12))["test_size"] == (
        512,
        852,
    )
    with pytest.raises(ValueError, match="bbox_head"):
        head_facts("model = dict(type='SOLOv2')")
