"""Shapes and semantics of the SOLO-family heads, the SOLOv2 mask branch and the DCN layers."""

import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone

import solo_d2
from solo_d2.modeling.backbone import ModulatedDeformConv2d
from solo_d2.modeling.solo import SOLOv2MaskBranch, build_solo_head

GRIDS = [8, 6, 4, 3, 2]
STRIDES = [8, 8, 16, 32, 32]
IMG = (64, 96)  # padded input size
B, C_IN, NUM_CLASSES = 2, 32, 3


def _cfg(head_name, **solo):
    cfg = solo_d2.get_cfg()
    cfg.MODEL.SOLO.HEAD_NAME = head_name
    cfg.MODEL.SOLO.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.SOLO.NUM_GRIDS = GRIDS
    cfg.MODEL.SOLO.INS_CHANNELS = 32
    cfg.MODEL.SOLO.NUM_CONVS = 2
    cfg.MODEL.SOLO.MASK_MID_CHANNELS = 32
    cfg.MODEL.SOLO.MASK_FEAT_CHANNELS = 32
    for k, v in solo.items():
        cfg.MODEL.SOLO[k] = v
    return cfg


def _level_feats():
    torch.manual_seed(0)
    return [torch.randn(B, C_IN, IMG[0] // s, IMG[1] // s) for s in STRIDES]


def _build_head(cfg):
    return build_solo_head(cfg, [ShapeSpec(channels=C_IN, stride=s) for s in STRIDES])


def _random_cells(level, n=5):
    g = torch.Generator().manual_seed(level)
    img = torch.randint(0, B, (n,), generator=g)
    cell = torch.randint(0, GRIDS[level] ** 2, (n,), generator=g)
    return img, cell


def test_solov2_head_shapes_and_dynamic_conv():
    cfg = _cfg("SOLOv2Head")
    head = _build_head(cfg)
    feats = _level_feats()
    mask_feats = torch.randn(B, 32, IMG[0] // 4, IMG[1] // 4)
    cate, outs = head(feats, mask_feats)
    for level, (c, o, s) in enumerate(zip(cate, outs, GRIDS)):
        assert c.shape == (B, NUM_CLASSES, s, s)
        kernels, _ = o
        assert kernels.shape == (B, 32, s, s)
        assert head.mask_size(o) == (IMG[0] // 4, IMG[1] // 4)
        img, cell = _random_cells(level)
        masks = head.soft_masks(o, level, img, cell)
        assert masks.shape == (5, IMG[0] // 4, IMG[1] // 4)
        # reference: the kernel of cell (i, j) used as a 1x1 conv weight
        for p in range(5):
            i, j = divmod(int(cell[p]), s)
            w = kernels[img[p], :, i, j].view(1, -1, 1, 1)
            ref = F.conv2d(mask_feats[img[p] : img[p] + 1], w).sigmoid()[0, 0]
            torch.testing.assert_close(masks[p], ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="mask features"):
        head(feats, None)


def test_solo_head_shapes_and_cells():
    head = _build_head(_cfg("SOLOHead"))
    feats = _level_feats()
    cate, outs = head(feats)
    for level, (c, o, s, stride) in enumerate(zip(cate, outs, GRIDS, STRIDES)):
        assert c.shape == (B, NUM_CLASSES, s, s)
        assert o.shape == (B, s * s, 2 * IMG[0] // stride, 2 * IMG[1] // stride)
        img, cell = _random_cells(level)
        masks = head.soft_masks(o, level, img, cell)
        torch.testing.assert_close(masks[2], o[img[2], cell[2]].sigmoid())
    assert len(head.mask_preds) == 5 and head.mask_preds[0].out_channels == GRIDS[0] ** 2


@pytest.mark.parametrize("name", ["DecoupledSOLOHead", "DecoupledSOLOLightHead"])
def test_decoupled_heads_product_of_xy(name):
    head = _build_head(_cfg(name))
    feats = _level_feats()
    cate, outs = head(feats)
    for level, (c, (x, y), s, stride) in enumerate(zip(cate, outs, GRIDS, STRIDES)):
        assert c.shape == (B, NUM_CLASSES, s, s)
        assert x.shape == y.shape == (B, s, 2 * IMG[0] // stride, 2 * IMG[1] // stride)
        img, cell = _random_cells(level)
        masks = head.soft_masks((x, y), level, img, cell)
        for p in range(len(cell)):
            i, j = divmod(int(cell[p]), s)  # i row -> Y branch, j column -> X branch
            torch.testing.assert_close(masks[p], x[img[p], j].sigmoid() * y[img[p], i].sigmoid())
    if name == "DecoupledSOLOHead":
        assert head.mask_tower_x[0].in_channels == C_IN + 1
    else:
        assert head.mask_tower[0].in_channels == C_IN + 2


def test_head_init_follows_reference():
    head = _build_head(_cfg("SOLOv2Head"))
    prior = -math.log((1 - 0.01) / 0.01)
    torch.testing.assert_close(head.cate_pred.bias, torch.full((NUM_CLASSES,), prior))
    for conv in head.kernel_tower:  # GN follows -> no bias; std 0.01
        assert conv.bias is None and isinstance(conv.norm, torch.nn.GroupNorm)
        assert 0.005 < conv.weight.std().item() < 0.015
    assert head.kernel_tower[0].in_channels == C_IN + 2  # CoordConv
    assert head.cate_tower[0].in_channels == C_IN


def test_unknown_head_name_is_a_clear_error():
    with pytest.raises(KeyError, match="MODEL.SOLO.HEAD_NAME"):
        _build_head(_cfg("NoSuchHead"))


def test_grids_and_levels_must_agree():
    cfg = _cfg("SOLOv2Head", NUM_GRIDS=[8, 6, 4])
    with pytest.raises(ValueError, match="NUM_GRIDS"):
        _build_head(cfg)


def test_mask_branch_quarter_scale_and_coordconv():
    cfg = _cfg("SOLOv2Head")
    shapes = {f"p{i}": ShapeSpec(channels=C_IN, stride=2**i) for i in range(2, 7)}
    branch = SOLOv2MaskBranch(cfg, shapes)
    feats = {f"p{i}": torch.randn(B, C_IN, IMG[0] // 2**i, IMG[1] // 2**i) for i in range(2, 7)}
    out = branch(feats)
    assert out.shape == (B, 32, IMG[0] // 4, IMG[1] // 4)
    assert [len(b) for b in branch.convs_all_levels] == [1, 1, 2, 3]
    assert branch.convs_all_levels[3][0].in_channels == C_IN + 2  # coordinates only at P5
    assert branch.convs_all_levels[2][0].in_channels == C_IN
    with pytest.raises(ValueError, match="MASK_IN_FEATURES"):
        SOLOv2MaskBranch(cfg, {"p2": shapes["p2"]})


def test_dcn_zero_offset_matches_plain_conv():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 9, 11)
    for modulated, scale in ((True, 0.5), (False, 1.0)):
        dcn = ModulatedDeformConv2d(8, 6, 3, stride=2, padding=1, modulated=modulated)
        ref = F.conv2d(x, dcn.weight, None, stride=2, padding=1) * scale + dcn.bias.view(
            1, -1, 1, 1
        )
        torch.testing.assert_close(dcn(x), ref, rtol=1e-4, atol=1e-5)


def test_dcn_learns_offsets_and_integer_shift():
    torch.manual_seed(0)
    x = torch.randn(1, 4, 10, 10, requires_grad=True)
    dcn = ModulatedDeformConv2d(4, 4, 3, padding=1, bias=False, modulated=False)
    dcn(x).square().sum().backward()
    assert dcn.conv_offset.weight.grad.abs().sum() > 0  # offsets receive gradients
    # every sampling point moved by +1 column == plain conv on the input shifted left by one
    with torch.no_grad():
        dcn.conv_offset.bias.view(9, 2)[:, 1] = 1.0  # (dy, dx) pairs per kernel point
        out = dcn(x)
        shifted = F.pad(x[..., 1:], (0, 1))
        ref = F.conv2d(shifted, dcn.weight, padding=1)
    # column 0 differs only because the shifted reference pads where the DCN samples x[..., 0]
    torch.testing.assert_close(out[..., 1:], ref[..., 1:], rtol=1e-4, atol=1e-5)


def test_dcn_tower_option_uses_deformable_convs():
    head = _build_head(_cfg("SOLOv2Head", USE_DCN_IN_TOWER=True))
    assert all(isinstance(m, ModulatedDeformConv2d) for m in head.kernel_tower)
    cate, _ = head(_level_feats(), torch.randn(B, 32, IMG[0] // 4, IMG[1] // 4))
    assert cate[0].shape == (B, NUM_CLASSES, GRIDS[0], GRIDS[0])


@pytest.mark.parametrize("depth", [18, 50])
def test_resnet_dcn_fpn_backbone(depth):
    cfg = solo_d2.get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    if depth == 18:
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    plain = build_backbone(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_resnet_dcn_fpn_backbone"
    cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, True, True, True]
    cfg.MODEL.RESNETS.DEFORM_MODULATED = True
    dcn = build_backbone(cfg)
    bottom = dcn.bottom_up
    assert not isinstance(bottom.res2[0].conv2, ModulatedDeformConv2d)
    assert all(
        isinstance(b.conv2, ModulatedDeformConv2d)
        for s in ("res3", "res4", "res5")
        for b in getattr(bottom, s)
    )
    # plain checkpoints load: the only new parameters are the offset convs
    extra = set(dcn.state_dict()) - set(plain.state_dict())
    assert extra and all(".conv2.conv_offset." in k for k in extra)
    assert set(plain.state_dict()) <= set(dcn.state_dict())
    dcn.load_state_dict(plain.state_dict(), strict=False)
    dcn.eval()
    plain.eval()
    x = torch.randn(1, 3, 64, 64)
    out, ref = dcn(x), plain(x)
    assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in ref.items()}
