"""Converters ``solo-official``, ``mmdet`` and ``torchvision-resnet``.

No checkpoint of the reference implementations is available here, so the tests build their
key sets (with shapes) from the documented layouts: torchvision's ResNet, mmdetection's FPN and
``ConvModule`` (``.conv`` + ``.gn``, no conv bias), and the head module names of the official
SOLO code (mmdetection v1, ``bbox_head`` / ``mask_feat_head``) and of mmdetection 2.x/3.x
(``mask_head`` / ``mask_head.mask_feature_head``); random tensors fill them.
"""

import pickle

import pytest
import torch

from solo_d2.checkpoint import ConversionError, verify_state_dict
from solo_d2.checkpoint.core import build_cfg
from solo_d2.checkpoint.solo_mmdet import convert_mmdet, convert_solo_official
from solo_d2.checkpoint.torchvision_resnet import (
    convert_torchvision_resnet,
    finish_backbone_conversion,
    verify_backbone_init,
)
from tests.helpers import run_converter
from tests.helpers.checkpoint_shapes import fill, solo_shapes, torchvision_resnet_shapes

pytestmark = pytest.mark.usefixtures("single_thread")


# ----------------------------------------------------------------------------- detection (no model)
@pytest.mark.parametrize(
    "layout,head,kwargs,config,opts",
    [
        ("official", "SOLO", {}, "SOLO-official/SOLO_R50.yaml", []),
        ("official", "SOLO", {"depth": 101}, "SOLO-official/SOLO_R101.yaml", []),
        ("official", "Decoupled", {}, "SOLO-official/DecoupledSOLO_R50.yaml", []),
        (
            "official",
            "DecoupledLight",
            {"convs": 4},
            "SOLO-official/DecoupledSOLO_Light_R50.yaml",
            [],
        ),
        ("official", "SOLOv2", {"depth": 101}, "SOLO-official/SOLOv2_R101.yaml", []),
        (
            "official",
            "SOLOv2",
            {"depth": 34, "convs": 2, "ch": 256, "mask_ch": 128},
            "SOLO-official/SOLOv2_Light448_R34.yaml",
            [],
        ),
        (
            "official",
            "SOLOv2",
            {"depth": 101, "tower_dcn": True, "backbone_dcn": True, "dcn_style": "sibling"},
            "SOLO-official/SOLOv2_R101_DCN.yaml",
            [],
        ),
        (
            "mmdet",
            "SOLOv2",
            {"classes": 8},
            "mmdet/SOLOv2_R50.yaml",
            ["MODEL.SOLO.NUM_CLASSES", "8"],
        ),
        (
            "mmdet",
            "SOLOv2",
            {"depth": 101, "tower_dcn": True, "backbone_dcn": True},
            "mmdet/SOLOv2_R101_DCN.yaml",
            [],
        ),
        (
            "mmdet",
            "SOLOv2",
            {"depth": 18, "convs": 2, "ch": 256, "mask_ch": 128},
            "mmdet/SOLOv2_Light_R18.yaml",
            [],
        ),
        (
            "mmdet",
            "SOLOv2",
            {"depth": 18, "convs": 2, "ch": 256, "mask_ch": 128, "fpn": 128},
            "mmdet/SOLOv2_Light_R18.yaml",
            ["MODEL.FPN.OUT_CHANNELS", "128"],
        ),
        (
            "mmdet",
            "Decoupled",
            {"grids": (20, 18, 12, 8, 6)},
            "mmdet/DecoupledSOLO_R50.yaml",
            ["MODEL.SOLO.NUM_GRIDS", "[20, 18, 12, 8, 6]"],
        ),
        # no R18 SOLO config: the R50 one with the depth overridden
        (
            "mmdet",
            "SOLO",
            {"depth": 18},
            "mmdet/SOLO_R50.yaml",
            ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"],
        ),
    ],
)
def test_variant_detection(layout, head, kwargs, config, opts):
    conv = (convert_solo_official if layout == "official" else convert_mmdet)(
        fill(solo_shapes(layout, head, **kwargs))
    )
    assert conv.config == f"configs/Converted/{config}"
    assert conv.opts == opts


def test_torchvision_depth_detection():
    for depth, config in (
        (18, "Light448_R18_3x"),
        (34, "Light448_R34_3x"),
        (50, "R50_3x"),
        (101, "R101_3x"),
    ):
        conv = convert_torchvision_resnet(fill(torchvision_resnet_shapes(depth, fc=True)))
        assert conv.config == f"configs/SOLOv2/{config}.yaml"
        assert conv.backbone_only
        assert not any(
            k.startswith(("fc.", "backbone.")) or "num_batches" in k for k in conv.state_dict
        )
        assert ("MODEL.RESNETS.STRIDE_IN_1X1" in conv.opts) == (depth >= 50)


@pytest.mark.parametrize(
    "fn,state,words",
    [
        # an AdelaiDet (Detectron2-based) SOLOv2 checkpoint given to the mmdet converters
        (
            convert_solo_official,
            {
                "backbone.bottom_up.stem.conv1.weight": torch.zeros(1),
                "ins_head.cate_pred.weight": torch.zeros(1),
            },
            ["solo-official", "adelaidet"],
        ),
        (
            convert_mmdet,
            {
                "backbone.bottom_up.stem.conv1.weight": torch.zeros(1),
                "ins_head.cate_pred.weight": torch.zeros(1),
            },
            ["mmdet", "adelaidet"],
        ),
        # a BiSeNet checkpoint (CoinCheung layout)
        (
            convert_mmdet,
            {"cp.resnet.conv1.weight": torch.zeros(1), "ffm.convblk.conv.weight": torch.zeros(1)},
            ["mmdet"],
        ),
        # official SOLO checkpoint given to the mmdet converter and vice versa
        (
            convert_mmdet,
            fill(solo_shapes("official", "SOLO", depth=18, convs=1)),
            ["solo-official"],
        ),
        (convert_solo_official, fill(solo_shapes("mmdet", "SOLOv2", depth=18, convs=1)), ["mmdet"]),
        (
            convert_torchvision_resnet,
            {"cp.resnet.conv1.weight": torch.zeros(1)},
            ["torchvision-resnet"],
        ),
    ],
)
def test_foreign_checkpoints_refused(fn, state, words):
    with pytest.raises(ConversionError) as e:
        fn(state)
    for w in words:
        assert w in str(e.value)


def test_tower_dcn_in_an_inner_conv_refused():
    # deformable conv in the middle conv of 3-conv towers: neither every conv nor the last only
    s = fill(solo_shapes("official", "SOLOv2", depth=18, convs=3, ch=256, mask_ch=128))
    for t in ("cate_convs", "kernel_convs"):
        s[f"bbox_head.{t}.1.conv.conv_offset.weight"] = torch.zeros(18, 256, 3, 3)
        s[f"bbox_head.{t}.1.conv.conv_offset.bias"] = torch.zeros(18)
    with pytest.raises(
        ConversionError,
        match=r"tower conv indices .*bbox_head\.cate_convs': \[1\].*TOWER_DCN_CONVS",
    ):
        convert_solo_official(s)


def test_tower_with_a_missing_conv_refused():
    s = fill(solo_shapes("mmdet", "SOLOv2", depth=18, convs=3, ch=256, mask_ch=128))
    for k in [k for k in s if k.startswith("mask_head.cls_convs.1.")]:
        del s[k]
    with pytest.raises(
        ConversionError, match=r"tower mask_head\.cls_convs has convs \[0, 2\]; expected 0\.\.N-1"
    ):
        convert_mmdet(s)


def test_dcnv1_in_every_tower_conv_converted():
    # deformable convs without modulation (18 offset channels per 3x3 conv) in every tower conv
    s = fill(
        solo_shapes("official", "SOLOv2", depth=18, convs=2, ch=256, mask_ch=128, tower_dcn=True)
    )
    for k in [k for k in s if k.startswith("bbox_head.") and ".conv_offset." in k]:
        s[k] = torch.zeros((18,) + tuple(s[k].shape[1:]))
    conv = convert_solo_official(s)
    solo = build_cfg(conv.config, conv.opts).MODEL.SOLO
    assert (
        solo.USE_DCN_IN_TOWER
        and solo.TOWER_DCN_CONVS == "all"
        and solo.TOWER_DCN_MODULATED is False
    )


def test_two_deformable_groups_in_a_tower_refused():
    s = fill(
        solo_shapes("official", "SOLOv2", depth=18, convs=2, ch=256, mask_ch=128, tower_dcn=True)
    )
    s["bbox_head.kernel_convs.1.conv.conv_offset.weight"] = torch.zeros(36, 256, 3, 3)
    with pytest.raises(
        ConversionError,
        match=r"bbox_head\.kernel_convs\.1\.conv\.conv_offset\.weight has 36 output channels",
    ):
        convert_solo_official(s)


@pytest.mark.parametrize(
    "missing", ["conv_pred.conv.weight", "convs_all_levels.0.conv0.conv.weight"]
)
def test_solov2_without_its_mask_feature_head_refused(missing):
    s = fill(solo_shapes("mmdet", "SOLOv2", depth=18, convs=2, ch=256, mask_ch=128))
    del s[f"mask_head.mask_feature_head.{missing}"]
    with pytest.raises(
        ConversionError,
        match=rf"without its mask-feature head: missing mask_head\.mask_feature_head\.{missing}",
    ):
        convert_mmdet(s)


@pytest.mark.parametrize("offset_ch,modulated", [(54, True), (36, False)])
def test_backbone_deformable_groups_detected(offset_ch, modulated):
    # two deformable groups: 2 x 27 offset + mask channels (DCNv2) or 2 x 18 offsets (DCNv1)
    s = fill(
        solo_shapes("mmdet", "SOLOv2", depth=18, convs=2, ch=256, mask_ch=128, backbone_dcn=True)
    )
    for k in [k for k in s if k.startswith("backbone.") and ".conv_offset." in k]:
        s[k] = torch.zeros((offset_ch,) + tuple(s[k].shape[1:]))
    conv = convert_mmdet(s)
    resnets = build_cfg(
        conv.config, conv.opts
    ).MODEL.RESNETS  # the config the converter names, with its opts
    assert resnets.DEFORM_NUM_GROUPS == 2 and resnets.DEFORM_MODULATED is modulated
    assert list(resnets.DEFORM_ON_PER_STAGE) == [False, True, True, True]


# ----------------------------------------------------------------------------- strict loading
# One model build per variant (R50 only where the variant needs it).
@pytest.mark.parametrize(
    "layout,head,kwargs",
    [
        ("official", "SOLO", {}),
        ("official", "Decoupled", {}),
        ("mmdet", "DecoupledLight", {"convs": 4}),
        ("mmdet", "SOLOv2", {"depth": 34, "convs": 2, "ch": 256, "mask_ch": 128}),
    ],
)
def test_strict_load(layout, head, kwargs):
    conv = (convert_solo_official if layout == "official" else convert_mmdet)(
        fill(solo_shapes(layout, head, **kwargs))
    )
    verify_state_dict(conv.state_dict, conv.config, conv.opts, source=layout)


def test_dcn_strict_load():
    """R101-DCN: DCNv2 in res3-res5, every tower conv and the mask-feature head (including
    its 1x1 conv_pred, with a 3-channel offset conv)."""
    conv = convert_mmdet(
        fill(solo_shapes("mmdet", "SOLOv2", depth=101, tower_dcn=True, backbone_dcn=True))
    )
    assert conv.state_dict["backbone.bottom_up.res3.0.conv2.conv_offset.weight"].shape == (
        27,
        128,
        3,
        3,
    )
    assert conv.state_dict["mask_head.conv_pred.conv_offset.weight"].shape[0] == 3
    verify_state_dict(conv.state_dict, conv.config, conv.opts, source="mmdet")


# ----------------------------------------------------------------------------- the tool
def test_tool_official_solov2_round_trip(tmp_path):
    src = fill(solo_shapes("official", "SOLOv2", classes=20), seed=1)
    torch.save({"meta": {}, "state_dict": src}, tmp_path / "in.pth")
    proc = run_converter("solo-official", tmp_path / "in.pth", tmp_path / "out.pth")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "configs/Converted/SOLO-official/SOLOv2_R50.yaml"
    assert "MODEL.SOLO.NUM_CLASSES 20" in proc.stdout
    out = torch.load(tmp_path / "out.pth", weights_only=True)["model"]
    assert torch.equal(out["ins_head.cate_pred.weight"], src["bbox_head.solo_cate.weight"])
    assert torch.equal(
        out["mask_head.conv_pred.norm.weight"], src["mask_feat_head.conv_pred.0.gn.weight"]
    )
    assert torch.equal(
        out["mask_head.convs_all_levels.3.0.weight"],
        src["mask_feat_head.convs_all_levels.3.conv0.conv.weight"],
    )
    assert torch.equal(
        out["backbone.bottom_up.res4.5.conv3.norm.running_var"],
        src["backbone.layer3.5.bn3.running_var"],
    )
    assert torch.equal(out["backbone.fpn_output5.bias"], src["neck.fpn_convs.3.conv.bias"])


def test_tool_mmdet_solo_missing_key(tmp_path):
    src = fill(solo_shapes("mmdet", "SOLO", depth=18))
    del src["mask_head.conv_mask_list.2.bias"]
    torch.save({"state_dict": src}, tmp_path / "in.pth")
    proc = run_converter("mmdet", tmp_path / "in.pth", tmp_path / "out.pth")
    assert proc.returncode == 1
    assert "ins_head.mask_preds.2.bias" in proc.stderr and "missing" in proc.stderr
    assert not (tmp_path / "out.pth").exists()


def test_tool_refuses_foreign(tmp_path):
    torch.save(
        {"model": {"ins_head.cate_pred.weight": torch.zeros(80, 512, 3, 3)}}, tmp_path / "in.pth"
    )
    proc = run_converter("mmdet", tmp_path / "in.pth", tmp_path / "out.pth")
    assert proc.returncode == 1 and "not a mmdet checkpoint" in proc.stderr
    assert not (tmp_path / "out.pth").exists()


# ----------------------------------------------------------------------------- torchvision-resnet
@pytest.mark.parametrize(
    "config", ["configs/BiSeNet/V1_R18_cityscapes.yaml", "configs/SOLOv2/Light448_R18_3x.yaml"]
)
def test_torchvision_r18_initializes_backbone(config, tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from solo_d2.checkpoint.core import build_cfg

    src = fill(torchvision_resnet_shapes(18, fc=True), seed=2)
    conv = convert_torchvision_resnet(src)
    conv.config = config
    finish_backbone_conversion(conv, str(tmp_path / "R-18.pkl"))
    with open(tmp_path / "R-18.pkl", "rb") as f:
        data = pickle.load(f)
    assert data["__author__"] == "torchvision" and data["matching_heuristics"] is True
    assert (
        "stem.conv1.weight" in data["model"] and "res5.1.conv2.norm.running_mean" in data["model"]
    )

    model = build_model(build_cfg(config))
    DetectionCheckpointer(model).load(str(tmp_path / "R-18.pkl"))
    sd = model.state_dict()
    prefix = "backbone.resnet." if "BiSeNet" in config else "backbone.bottom_up."
    assert torch.equal(sd[prefix + "res3.0.conv1.weight"], src["layer2.0.conv1.weight"])
    assert torch.equal(sd[prefix + "res5.0.shortcut.norm.bias"], src["layer4.0.downsample.1.bias"])
    assert torch.equal(sd[prefix + "stem.conv1.norm.running_var"], src["bn1.running_var"])


def test_torchvision_backbone_check_refuses_wrong_depth(tmp_path):
    conv = convert_torchvision_resnet(fill(torchvision_resnet_shapes(34)))
    with pytest.raises(ConversionError, match="not initialized|match no model weight"):
        verify_backbone_init(conv.state_dict, "configs/SOLOv2/Light448_R18_3x.yaml")
    with pytest.raises(ConversionError, match=r"\.pkl"):
        finish_backbone_conversion(conv, str(tmp_path / "R-34.pth"))
    assert not (tmp_path / "R-34.pth").exists()


def test_converted_configs_match_the_converters():
    """Every config under Converted/SOLO-official and Converted/mmdet is one a converter names,
    and uses the sources' input convention (torchvision ResNet, RGB, ImageNet mean/std)."""
    from solo_d2 import model_zoo
    from solo_d2.checkpoint.solo_mmdet import _CONFIGS, LAYOUTS

    named = {
        f"{LAYOUTS[s].config_dir}/{n}" for s, table in _CONFIGS.items() for n in table.values()
    }
    files = {
        f"configs/{c}"
        for c in model_zoo.list_configs()
        if c.startswith(("Converted/SOLO-official/", "Converted/mmdet/"))
    }
    assert files == named
    for c in sorted(files):
        cfg = model_zoo.get_config(c[len("configs/") :])
        assert cfg.INPUT.FORMAT == "RGB" and not cfg.MODEL.RESNETS.STRIDE_IN_1X1, c
        assert [round(v, 3) for v in cfg.MODEL.PIXEL_STD] == [58.395, 57.12, 57.375], c
        assert cfg.MODEL.WEIGHTS.endswith(".pth"), c


def test_tool_torchvision_resnet(tmp_path):
    torch.save(fill(torchvision_resnet_shapes(18, fc=True)), tmp_path / "resnet18.pth")
    proc = run_converter("torchvision-resnet", tmp_path / "resnet18.pth", tmp_path / "R-18.pkl")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "configs/SOLOv2/Light448_R18_3x.yaml"
    with open(tmp_path / "R-18.pkl", "rb") as f:
        assert pickle.load(f)["__author__"] == "torchvision"
