"""Known-answer tests for SOLO losses (solo_d2.modeling.solo.losses)."""

import math

import pytest
import torch

from solo_d2.modeling.solo.losses import dice_loss, solo_loss
from solo_d2.modeling.solo.targets import LevelTargets, solo_targets
from solo_d2.utils.comm import reduce_mean

C = 3


def test_dice_identical_disjoint_and_hand_value():
    q = torch.zeros(2, 8, 8)
    q[0, 2:6, 2:6] = 1  # 16 px
    q[1, 0:2, 0:8] = 1  # 16 px
    same = dice_loss(q.clone(), q)
    assert same.shape == (2,)
    assert torch.allclose(same, torch.tensor([0.002 / 32.002] * 2), atol=1e-7)  # ~0
    disjoint = dice_loss(q.flip(0), q)
    assert torch.allclose(disjoint, torch.ones(2), atol=1e-6)  # ~1
    # hand case: p = 0.5 everywhere on a 2x2 grid, q has one pixel on
    p = torch.full((1, 2, 2), 0.5)
    t = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    expected = 1 - 2 * 0.5 / (4 * 0.25 + 1 + 0.002)
    assert dice_loss(p, t).item() == pytest.approx(expected, rel=1e-6)


def _targets_from_labels(labels_per_level, mask_size=(4, 4), extra=0):
    """LevelTargets with given [B, S, S] labels, one random mask target per positive cell, and
    ``extra`` more targets on the first positive cell of each level (a cell two instances claim)."""
    out = []
    for labels in labels_per_level:
        pos = (labels != C).flatten(1)
        img, cell = pos.nonzero(as_tuple=True)
        if extra and img.numel():
            img, cell = (
                torch.cat([img, img[:1].repeat(extra)]),
                torch.cat([cell, cell[:1].repeat(extra)]),
            )
        p = img.numel()
        out.append(
            LevelTargets(
                labels=labels,
                pos_mask=pos,
                target_img=img,
                target_cell=cell,
                target_masks=torch.rand(p, *mask_size) > 0.5,
                target_rows=torch.arange(p),
                instance_ids=torch.zeros(p, dtype=torch.long),
            )
        )
    return out


def test_focal_known_tiny_case_and_normalization():
    # one image, one level 1x2 grid: cell 0 is class 1, cell 1 background.
    labels = torch.tensor([[[1, C]]])
    logits = torch.tensor([[[[0.0, 2.0]], [[1.0, -1.0]], [[-3.0, 0.5]]]])  # [1, 3, 1, 2]
    tgts = _targets_from_labels([labels], mask_size=(2, 2))
    probs = torch.full((1, 2, 2), 0.5)
    out = solo_loss([logits], tgts, [probs], num_classes=C)

    def focal(x, t, a=0.25, g=2.0):
        p = 1 / (1 + math.exp(-x))
        if t:
            return -a * (1 - p) ** g * math.log(p)
        return -(1 - a) * p**g * math.log(1 - p)

    cell0 = focal(0.0, 0) + focal(1.0, 1) + focal(-3.0, 0)
    cell1 = focal(2.0, 0) + focal(-1.0, 0) + focal(0.5, 0)
    assert out["loss_cate"].item() == pytest.approx((cell0 + cell1) / 2, rel=1e-5)  # N + 1 = 2
    d = dice_loss(probs, tgts[0].mask_targets).item()
    assert out["loss_mask"].item() == pytest.approx(3.0 * d, rel=1e-5)

    # weights scale linearly
    out2 = solo_loss([logits], tgts, [probs], num_classes=C, cate_weight=2.0, mask_weight=1.0)
    assert out2["loss_cate"].item() == pytest.approx(2 * out["loss_cate"].item(), rel=1e-6)
    assert out2["loss_mask"].item() == pytest.approx(d, rel=1e-5)


def test_normalized_like_the_references():
    # 3 positive cells over two levels; one cell of level 0 is claimed twice -> 4 mask targets.
    # Focal: sum / (3 + 1); dice: mean over the 4 mask targets (official SOLO and AdelaiDet).
    torch.manual_seed(0)
    labels0 = torch.full((2, 4, 4), C)
    labels0[0, 1, 1] = 0
    labels0[1, 2, 3] = 2
    labels1 = torch.full((2, 2, 2), C)
    labels1[1, 0, 0] = 1
    tgts = _targets_from_labels([labels0, labels1], extra=1)
    assert [t.mask_targets.shape[0] for t in tgts] == [3, 2]
    logits = [torch.randn(2, C, 4, 4), torch.randn(2, C, 2, 2)]
    probs = [torch.rand(3, 4, 4), torch.rand(2, 4, 4)]
    out = solo_loss(logits, tgts, probs, num_classes=C)
    dice_all = torch.cat([dice_loss(p, t.mask_targets) for p, t in zip(probs, tgts)])
    assert out["loss_mask"].item() == pytest.approx(3.0 * dice_all.mean().item(), rel=1e-5)
    # focal normalized by 3 positives + 1: compare with the un-normalized sum via fvcore
    from fvcore.nn import sigmoid_focal_loss

    flat = torch.cat([x.permute(0, 2, 3, 1).reshape(-1, C) for x in logits])
    lab = torch.cat([t.labels.reshape(-1) for t in tgts])
    onehot = torch.zeros(flat.shape[0], C)
    onehot[lab < C, lab[lab < C]] = 1
    ref = sigmoid_focal_loss(flat, onehot, alpha=0.25, gamma=2.0, reduction="sum") / (3 + 1)
    assert out["loss_cate"].item() == pytest.approx(ref.item(), rel=1e-5)


def test_reduce_num_pos_single_process_is_identity():
    assert reduce_mean(torch.tensor(0.0)).item() == 0.0
    assert reduce_mean(torch.tensor([7.0, 9.0])).tolist() == [7.0, 9.0]


def test_backward_with_every_image_empty():
    # real targets from empty ground truth, predictions from tiny learnable layers
    empty = torch.zeros(0, 64, 64, dtype=torch.bool)
    grids = [8, 4]
    tgts = solo_targets(
        [empty, empty],
        [torch.zeros(0, dtype=torch.long)] * 2,
        num_grids=grids,
        scale_ranges=[(1, 32), (16, 128)],
        mask_sizes=[(16, 16), (16, 16)],
        sigma=0.2,
        num_classes=C,
    )
    cate_conv = torch.nn.Conv2d(4, C, 1)
    mask_conv = torch.nn.Conv2d(4, 8 * 8 + 4 * 4, 1)
    feat = torch.randn(2, 4, 16, 16)
    cate = [cate_conv(torch.nn.functional.interpolate(feat, size=(s, s))) for s in grids]
    all_masks = mask_conv(feat).sigmoid()  # [2, 80, 16, 16]
    probs = []
    start = 0
    for s, t in zip(grids, tgts):
        lvl = all_masks[:, start : start + s * s].flatten(0, 1)  # [B*S*S, 16, 16]
        probs.append(lvl[t.target_img * s * s + t.target_cell])  # [0, 16, 16]
        start += s * s
    out = solo_loss(cate, tgts, probs, num_classes=C)
    assert out["loss_mask"].item() == 0.0
    assert torch.isfinite(out["loss_cate"]) and out["loss_cate"].item() > 0
    (out["loss_cate"] + out["loss_mask"]).backward()
    for p in list(cate_conv.parameters()) + list(mask_conv.parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert mask_conv.weight.grad.abs().sum() == 0
    assert cate_conv.weight.grad.abs().sum() > 0


def test_shape_mismatch_raises():
    labels = torch.full((1, 2, 2), C)
    tgts = _targets_from_labels([labels])
    with pytest.raises(ValueError, match="category channels"):
        solo_loss([torch.randn(1, C + 1, 2, 2)], tgts, [torch.zeros(0, 4, 4)], num_classes=C)
    with pytest.raises(ValueError, match="mask_probs"):
        solo_loss([torch.randn(1, C, 2, 2)], tgts, [torch.zeros(1, 4, 4)], num_classes=C)


def test_dice_and_label_shape_mismatches_raise():
    with pytest.raises(ValueError, match="dice_loss"):
        dice_loss(torch.rand(2, 4, 4), torch.zeros(2, 4, 5))
    tgts = _targets_from_labels([torch.full((1, 2, 2), C)])
    with pytest.raises(ValueError, match="do not match labels"):
        solo_loss([torch.randn(1, C, 3, 3)], tgts, [torch.zeros(0, 4, 4)], num_classes=C)


def test_dice_normalizer_cells_divides_by_positive_cells_targets_by_mask_targets():
    # two levels with 5 and 3 positive cells; 2 extra targets on a doubly claimed cell per level
    g = torch.Generator().manual_seed(1)
    labels = [torch.full((2, 4, 4), C), torch.full((2, 3, 3), C)]
    labels[0][0, 1, 1:4] = 0
    labels[0][1, 2, 2:4] = 2
    labels[1][1, 0, :3] = 1
    tgts = _targets_from_labels(labels, mask_size=(4, 6), extra=2)
    logits = [torch.randn(2, C, 4, 4, generator=g), torch.randn(2, C, 3, 3, generator=g)]
    probs = [torch.rand(t.num_targets, 4, 6, generator=g) for t in tgts]
    num_pos, num_targets = 8, sum(t.num_targets for t in tgts)
    assert num_targets == 12
    by_targets = solo_loss(logits, tgts, probs, num_classes=C)
    by_cells = solo_loss(logits, tgts, probs, num_classes=C, dice_normalizer="cells")
    dice_sum = sum(float(dice_loss(p, t.mask_targets).sum()) for p, t in zip(probs, tgts))
    assert float(by_targets["loss_mask"]) == pytest.approx(3.0 * dice_sum / num_targets, rel=1e-6)
    assert float(by_cells["loss_mask"]) == pytest.approx(3.0 * dice_sum / num_pos, rel=1e-6)
    assert float(by_cells["loss_cate"]) == float(by_targets["loss_cate"])
    with pytest.raises(ValueError, match="dice_normalizer"):
        solo_loss(logits, tgts, probs, num_classes=C, dice_normalizer="images")


def test_float64_inputs_stay_float64():
    labels = torch.tensor([[[1, C]]])
    tgts = _targets_from_labels([labels], mask_size=(2, 2))
    logits = torch.randn(1, C, 1, 2, dtype=torch.float64)
    out = solo_loss(
        [logits], tgts, [torch.full((1, 2, 2), 0.3, dtype=torch.float64)], num_classes=C
    )
    assert out["loss_cate"].dtype == out["loss_mask"].dtype == torch.float64


def test_focal_loss_sum_is_fvcores_bit_for_bit_in_float32():
    from fvcore.nn import sigmoid_focal_loss

    from solo_d2.modeling.solo.losses import sigmoid_focal_loss_sum

    g = torch.Generator().manual_seed(2)
    logits = torch.randn(50, 7, generator=g) * 3
    targets = (torch.rand(50, 7, generator=g) > 0.8).float()
    for alpha, gamma in [(0.25, 2.0), (-1, 1.5)]:
        ref = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction="sum")
        assert torch.equal(sigmoid_focal_loss_sum(logits, targets, alpha, gamma), ref)
