"""Target geometry and resizing (solo_d2.modeling.solo.targets): exact first moments, extents
and the integer-factor shrink equal to bilinear + threshold; the compact mask targets give the
dense dice loss bit for bit."""

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import masks_to_boxes

from solo_d2.modeling.solo.losses import dice_loss, indexed_dice_loss, solo_loss
from solo_d2.modeling.solo.targets import instance_geometry, resize_masks, solo_targets

H, W = 192, 320  # non-square, multiples of 32 (SOLO pads to 32)


def blobs(n, h=H, w=W, seed=0):
    """n irregular masks of random sizes and places (one empty), and their tight boxes."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    for k in range(n - 1):
        hh, ww = (
            int(torch.randint(3, h // 2, (1,), generator=g)),
            int(torch.randint(3, w // 2, (1,), generator=g)),
        )
        y0, x0 = (
            int(torch.randint(0, h - hh, (1,), generator=g)),
            int(torch.randint(0, w - ww, (1,), generator=g)),
        )
        masks[k, y0 : y0 + hh, x0 : x0 + ww] = torch.rand(hh, ww, generator=g) > 0.4
    boxes = torch.zeros(n, 4)
    nonempty = masks.flatten(1).any(1)
    boxes[nonempty] = masks_to_boxes(masks[nonempty])
    return masks, boxes


def assert_same_geometry(a, b):
    for name, x, y in zip(("box_h", "box_w", "center_y", "center_x", "area"), a, b):
        assert torch.equal(x, y), name


def test_indexed_dice_equals_dense_dice_and_its_gradient():
    g = torch.Generator().manual_seed(8)
    masks = torch.rand(5, 24, 40, generator=g) > 0.6
    masks[2] = False  # an empty target
    rows = torch.tensor([0, 0, 1, 2, 4, 4, 4, 3])  # repeated rows: cells claimed by one instance
    logits = torch.randn(8, 24, 40, generator=g)
    p1 = logits.sigmoid().requires_grad_()
    p2 = p1.detach().clone().requires_grad_()
    a = indexed_dice_loss(p1, masks, rows)
    b = dice_loss(p2, masks[rows].float())
    assert torch.equal(a, b)
    (a * torch.arange(1.0, 9.0)).sum().backward()
    (b * torch.arange(1.0, 9.0)).sum().backward()
    assert torch.equal(p1.grad, p2.grad)
    assert torch.equal(indexed_dice_loss(p1, masks.to(torch.uint8), rows), b)  # 0/1 masks too
    with pytest.raises(ValueError, match="indexed_dice_loss"):
        indexed_dice_loss(p1, masks, rows[:-1])
    with pytest.raises(ValueError, match="indexed_dice_loss"):
        indexed_dice_loss(p1, masks[:, :, :-1], rows)


def test_solo_loss_reads_targets_through_rows():
    # two levels sharing one target_masks tensor; the loss must use each level's rows
    masks, boxes = blobs(6, seed=9)
    classes = [torch.arange(6) % 3]
    kw = dict(
        num_grids=[12, 8],
        scale_ranges=[(1, 64), (32, 4096)],
        mask_sizes=[(H // 4, W // 4)] * 2,
        sigma=0.2,
        num_classes=3,
        gt_boxes=[boxes],
    )
    tg = solo_targets([masks], classes, **kw)
    assert tg[0].target_masks is tg[1].target_masks and all(t.num_targets for t in tg)
    g = torch.Generator().manual_seed(10)
    probs = [torch.rand(t.num_targets, H // 4, W // 4, generator=g) for t in tg]
    logits = [torch.randn(1, 3, s, s, generator=g) for s in (12, 8)]
    out = solo_loss(logits, tg, probs, num_classes=3)
    dense = torch.cat([dice_loss(p, t.mask_targets) for p, t in zip(probs, tg)])
    assert out["loss_mask"].item() == pytest.approx(3.0 * dense.mean().item(), rel=1e-6)


@pytest.mark.parametrize("size", [(50, 70), (64, 64), (96, 40)])
@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.float32])
def test_resize_masks_equals_bilinear_threshold_for_any_size_and_dtype(size, dtype):
    masks, _ = blobs(5, seed=11)
    ref = (
        F.interpolate(masks.float()[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        >= 0.5
    )
    assert torch.equal(resize_masks(masks.to(dtype), size, dtype=torch.bool), ref)


@pytest.mark.parametrize("fy", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("fx", [1, 2, 3, 4, 6, 8, 16])
def test_integer_factor_resize_equals_bilinear(fy, fx):
    # even and odd factors; a view at an offset and a non-contiguous view too
    g = torch.Generator().manual_seed(fy * 100 + fx)
    masks = torch.rand(3, 12 * fy, 10 * fx, generator=g) > 0.5
    for m in (masks, masks[1:], masks[:, :, fx:]):
        size = (m.shape[1] // fy, m.shape[2] // fx)
        ref = (
            F.interpolate(m.float()[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
            >= 0.5
        )
        before = masks.clone()
        assert torch.equal(resize_masks(m, size, dtype=torch.bool), ref)
        assert torch.equal(masks, before), "the input masks are left as they were"


def test_centers_are_exact_first_moments_rounded_once():
    # large masks: the first moments pass 2**24, where float32 sums of (count x position) round
    # along the way (differently for each order of summation); the centers are the exact integer
    # moments rounded once to float32, divided by the area in float32
    h, w = 640, 960
    g = torch.Generator().manual_seed(21)
    masks = torch.rand(8, h, w, generator=g) < torch.rand(8, 1, 1, generator=g)
    masks[:3, :, :8] = False  # three masks over most of the image
    masks[:3, 600:] = False
    masks[3:, :100] = masks[3:, 300:] = masks[3:, :, :200] = masks[3:, :, 500:] = (
        False  # small ones
    )
    counts = [masks.double().sum(2), masks.double().sum(1)]  # exact in float64
    moments = [(c * torch.arange(c.shape[1], dtype=torch.float64)).sum(1) for c in counts]
    area = masks.flatten(1).sum(1).to(torch.float32)
    cy, cx = (m.to(torch.float32) / area for m in moments)
    float32_sums = (counts[0].float() * torch.arange(h, dtype=torch.float32)).sum(1)
    assert not torch.equal(float32_sums, moments[0].float()), "the case tells the two apart"
    geometry = instance_geometry(masks)
    assert torch.equal(geometry[2], cy) and torch.equal(geometry[3], cx)
    assert torch.equal(geometry[4], area)


def test_geometry_against_boxes_and_float64_centers():
    # independent of the module's own sums: extents from torchvision's masks_to_boxes (last -
    # first + 1 pixels), centers from float64 sums, for an empty mask, a single pixel, a mask
    # with one-pixel rows and columns at its ends, and random blobs; and
    # uint8 0/255 and float 0/0.5 masks (nonzero is foreground)
    masks, boxes = blobs(9, seed=22)
    masks[1] = False
    masks[1, 37, 101] = True  # one pixel
    masks[2] = False
    masks[2, 10:40, 50:90] = True
    masks[2, 9, 70] = masks[2, 40, 49] = masks[2, 25, 90] = True  # one-pixel rows and columns
    nonempty = masks.flatten(1).any(1)
    boxes = torch.zeros(9, 4)
    boxes[nonempty] = masks_to_boxes(masks[nonempty])
    ref_h = torch.where(nonempty, boxes[:, 3] - boxes[:, 1] + 1, torch.zeros(9))
    ref_w = torch.where(nonempty, boxes[:, 2] - boxes[:, 0] + 1, torch.zeros(9))
    area = masks.flatten(1).sum(1).to(torch.float32)
    ys, xs = torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64)
    cy = (masks.double().sum(2) * ys).sum(1).to(torch.float32) / area.clamp(min=1e-6)
    cx = (masks.double().sum(1) * xs).sum(1).to(torch.float32) / area.clamp(min=1e-6)
    assert area[8] == 0 and area[1] == 1, "blobs() leaves the last mask empty"
    for got in (
        instance_geometry(masks),
        instance_geometry(masks.to(torch.uint8) * 255),
        instance_geometry(masks.float() * 0.5),
    ):
        assert_same_geometry(got, (ref_h, ref_w, cy, cx, area))
    assert_same_geometry(instance_geometry(masks[:, :0]), (torch.zeros(9),) * 5)  # no rows
