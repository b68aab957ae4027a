"""Windowed reading of instance masks (solo_d2.modeling.solo.mask_geometry) gives exactly the
results of reading every mask whole, whatever the boxes; and the compact mask targets give the
dense dice loss bit for bit."""
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import masks_to_boxes

from solo_d2.modeling.solo.losses import dice_loss, indexed_dice_loss, solo_loss
from solo_d2.modeling.solo.mask_geometry import (
    InstanceMasks, _col_sums, _group_windows, _integer_factor_resize, _row_sums, instance_geometry,
    resize_masks,
)
from solo_d2.modeling.solo.targets import solo_targets

H, W = 192, 320  # non-square, multiples of 32 (SOLO pads to 32)


def blobs(n, h=H, w=W, seed=0):
    """n irregular masks of random sizes and places (one empty), and their tight boxes."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    for k in range(n - 1):
        hh, ww = int(torch.randint(3, h // 2, (1,), generator=g)), int(torch.randint(3, w // 2, (1,), generator=g))
        y0, x0 = int(torch.randint(0, h - hh, (1,), generator=g)), int(torch.randint(0, w - ww, (1,), generator=g))
        masks[k, y0 : y0 + hh, x0 : x0 + ww] = torch.rand(hh, ww, generator=g) > 0.4
    boxes = torch.zeros(n, 4)
    nonempty = masks.flatten(1).any(1)
    boxes[nonempty] = masks_to_boxes(masks[nonempty])
    return masks, boxes


def assert_same_geometry(a, b):
    for name, x, y in zip(("box_h", "box_w", "center_y", "center_x", "area"), a, b):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("align", [(4, 4), (32, 32)])
def test_windows_equal_whole_masks_with_tight_and_loose_boxes(align):
    masks, boxes = blobs(12)
    loose = boxes + torch.tensor([-9.5, -3.0, 7.25, 11.0])  # also partly outside the image
    for bx in (boxes, loose):
        im = InstanceMasks(masks, bx, align=align)
        assert im.stacks, "windows are used"
        assert_same_geometry(im.geometry(), instance_geometry(masks))
        assert not im.whole.any(), "every window holds its mask"
        ids = torch.tensor([0, 3, 4, 5, 11])  # a subset, with the empty mask
        for f in {4, align[0]}:
            got = im.resized(ids, (H // f, W // f))
            assert got.dtype == torch.bool
            assert torch.equal(got, resize_masks(masks[ids], (H // f, W // f), dtype=torch.bool)), f


def test_boxes_that_miss_pixels_fall_back_to_whole_masks():
    masks, boxes = blobs(10, seed=1)
    wrong = boxes.clone()
    wrong[1] = torch.tensor([0.0, 0.0, 5.0, 5.0])  # far from the mask
    wrong[2, 2] -= 20  # cuts off the right part
    wrong[3] = float("nan")
    wrong[4] = torch.tensor([400.0, 300.0, 100.0, 50.0])  # inverted, outside the image
    ids = torch.arange(10)
    expected = resize_masks(masks, (H // 4, W // 4), dtype=torch.bool)
    # resizing first (without geometry()) still finds the masks the windows miss
    assert torch.equal(InstanceMasks(masks, wrong, align=(4, 4)).resized(ids, (H // 4, W // 4)), expected)
    im = InstanceMasks(masks, wrong, align=(4, 4))
    assert_same_geometry(im.geometry(), instance_geometry(masks))
    # exactly the instances whose pixels are not all in their window are read whole (a NaN box
    # gives a window over the whole image)
    assert im.whole[[1, 2, 4]].all() and not im.whole[[0, 3, 5, 6, 7, 8, 9]].any()
    assert torch.equal(im.resized(ids, (H // 4, W // 4)), expected)


def test_resize_with_factors_windows_cannot_serve_and_odd_sizes():
    masks, boxes = blobs(6, seed=2)
    im = InstanceMasks(masks, boxes, align=(4, 4))
    im.geometry()
    ids = torch.arange(6)
    for size in [(H // 8, W // 8), (H // 3, W // 5), (50, 70)]:  # factor 8 > alignment 4; non-integer
        assert torch.equal(im.resized(ids, size), resize_masks(masks, size, dtype=torch.bool)), size
    out = torch.zeros(6, H // 4, W // 4, dtype=torch.bool)
    assert im.resized(ids, (H // 4, W // 4), out=out) is out
    assert torch.equal(out, resize_masks(masks, (H // 4, W // 4), dtype=torch.bool))


def test_no_windows_without_boxes_for_non_bool_or_unaligned_masks():
    masks, boxes = blobs(4, seed=3)
    assert not InstanceMasks(masks, None).stacks
    assert not InstanceMasks(masks.to(torch.uint8), boxes).stacks
    assert not InstanceMasks(masks[:, :, :-8], boxes, align=(4, 16)).stacks  # 312 % 16 != 0
    assert not InstanceMasks(masks[:0], boxes[:0]).stacks
    assert_same_geometry(InstanceMasks(masks[:0], boxes[:0]).geometry(), instance_geometry(masks[:0]))


def test_group_windows_covers_each_window_once_within_the_waste_bound():
    g = torch.Generator().manual_seed(4)
    for waste in (1.2, 2.0, 4.0):
        hs = (torch.randint(1, 60, (80,), generator=g) * 4).tolist()
        ws = (torch.randint(1, 60, (80,), generator=g) * 8).tolist()
        groups = _group_windows(hs, ws, waste=waste)
        assert sorted(i for ids, _, _ in groups for i in ids) == list(range(80))
        assert len(groups) < 80 and (len(groups) > 1 or waste > 2)
        for ids, sh, sw in groups:
            assert sh == max(hs[i] for i in ids) and sw == max(ws[i] for i in ids)
            assert len(ids) == 1 or len(ids) * sh * sw <= waste * sum(hs[i] * ws[i] for i in ids)
    assert _group_windows([8, 8, 8], [16, 16, 16]) == [([0, 1, 2], 8, 16)]  # equal windows: one stack


@pytest.mark.parametrize("strides", [(4, 4, 4, 4, 4), (8, 8, 16, 32, 32)])  # SOLOv2; SOLO / Decoupled SOLO
def test_solo_targets_identical_with_windows_and_whole_masks(strides):
    images = [blobs(9, seed=5), blobs(7, seed=6)]
    masks = [m for m, _ in images]
    boxes = [b for _, b in images]
    classes = [torch.randint(0, 5, (m.shape[0],), generator=torch.Generator().manual_seed(7)) for m in masks]
    kw = dict(
        num_grids=[40, 36, 24, 16, 12], scale_ranges=[(1, 48), (24, 96), (48, 192), (96, 384), (192, 2048)],
        mask_sizes=[(H // s, W // s) for s in strides], sigma=0.2, num_classes=5, gt_boxes=boxes,
    )
    windowed = solo_targets(masks, classes, **kw)
    whole = solo_targets([m.to(torch.uint8) for m in masks], classes, **kw)  # uint8: never windowed
    assert sum(t.num_targets for t in windowed) > 20
    for a, b in zip(windowed, whole):
        for name in a._fields:
            assert torch.equal(getattr(a, name), getattr(b, name)), name
        assert torch.equal(a.mask_targets, b.target_masks[b.target_rows].float())


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
    kw = dict(num_grids=[12, 8], scale_ranges=[(1, 64), (32, 4096)], mask_sizes=[(H // 4, W // 4)] * 2,
              sigma=0.2, num_classes=3, gt_boxes=[boxes])
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
    ref = F.interpolate(masks.float()[:, None], size=size, mode="bilinear", align_corners=False)[:, 0] >= 0.5
    assert torch.equal(resize_masks(masks.to(dtype), size, dtype=torch.bool), ref)


def test_row_and_column_counts_for_widths_without_a_good_divisor():
    # 257 words per row (prime > 255) and 257 rows: the sums are taken in slices of 255
    masks = torch.rand(3, 257, 8 * 257, generator=torch.Generator().manual_seed(12)) > 0.3
    rows, cols = _row_sums(masks), _col_sums(masks)
    assert torch.equal(rows, masks.sum(dim=2)) and torch.equal(cols, masks.sum(dim=1))
    assert_same_geometry(instance_geometry(masks), instance_geometry(masks.float()))


@pytest.mark.parametrize("size", [255, 257])
def test_row_and_column_counts_with_full_byte_lanes(size):
    # full masks: 255 words summed at once put 255 in every byte lane (the int64 sums wrap past
    # the sign bit); with 257 the slices hold 255 and 2
    masks = torch.ones(2, size, 8 * size, dtype=torch.bool)
    masks[1, :, 7::8] = False  # the top lane empty
    masks[1, 3] = False
    assert torch.equal(_row_sums(masks), masks.sum(dim=2))
    assert torch.equal(_col_sums(masks), masks.sum(dim=1))


def test_windows_resize_integer_factors_without_whole_masks(monkeypatch):
    from solo_d2.modeling.solo import mask_geometry

    masks, boxes = blobs(8, seed=13)
    im = InstanceMasks(masks, boxes, align=(8, 8))
    im.geometry()
    expected = {f: resize_masks(masks, (H // f, W // f), dtype=torch.bool) for f in (4, 8, 16)}
    calls = []
    monkeypatch.setattr(mask_geometry, "resize_masks", lambda *a, **k: calls.append(a) or expected[16])
    ids = torch.arange(8)
    assert torch.equal(im.resized(ids, (H // 4, W // 4)), expected[4])
    assert torch.equal(im.resized(ids, (H // 8, W // 8)), expected[8])
    assert torch.equal(im.resized(ids, (H, W)), masks)  # factor 1
    assert not calls, "factors dividing the window alignment are served by the windows"
    im.resized(ids, (H // 16, W // 16))  # 16 does not divide the alignment 8: whole masks
    assert len(calls) == 1


def test_images_together_equal_each_image_alone():
    # three images (the middle one without instances) read as one batch: windows are grouped
    # across images; a box that misses its mask in the last image sends that mask (and only it)
    # to the whole-mask path, found in the right image
    (m0, b0), (m2, b2) = blobs(7, seed=14), blobs(5, seed=15)
    m1, b1 = m0[:0], b0[:0]
    b2 = b2.clone()
    b2[3] = torch.tensor([0.0, 0.0, 6.0, 6.0])
    batch = InstanceMasks([m0, m1, m2], torch.cat([b0, b1, b2]), align=(4, 8))
    assert batch.stacks and any(len(set(batch.image[ids].tolist())) > 1 for ids, _, _, _ in batch.stacks)
    masks = torch.cat([m0, m2])
    assert_same_geometry(batch.geometry(), instance_geometry(masks))
    assert batch.whole.nonzero().flatten().tolist() == [7 + 3]
    ids = torch.tensor([1, 2, 6, 8, 10, 11])  # both images, with the missed mask
    for f in (4, 8):
        size = (H // f, W // f)
        assert torch.equal(batch.resized(ids, size), resize_masks(masks[ids], size, dtype=torch.bool)), f
    size = (50, 70)  # not an integer factor: whole masks, per image
    assert torch.equal(batch.resized(ids, size), resize_masks(masks[ids], size, dtype=torch.bool))
    assert batch.resized(ids[:0], size).shape == (0, 50, 70)


def test_instance_masks_reject_bad_boxes_and_out():
    masks, boxes = blobs(4, seed=16)
    with pytest.raises(ValueError, match=r"boxes must be \[4, 4\]"):
        InstanceMasks(masks, boxes[:3])
    with pytest.raises(ValueError, match="no masks"):
        InstanceMasks([])
    with pytest.raises(ValueError, match=r"\[N, 192, 320\]"):
        InstanceMasks([masks, masks[:, :, :-8]])
    im = InstanceMasks(masks, boxes, align=(4, 8))
    out = torch.zeros(4, W // 4, H // 4, dtype=torch.bool).transpose(1, 2)  # right shape, not contiguous
    with pytest.raises(ValueError, match="contiguous bool"):
        im.resized(torch.arange(4), (H // 4, W // 4), out=out)


@pytest.mark.parametrize("fy", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("fx", [1, 2, 3, 4, 6, 8, 16])
def test_integer_factor_resize_equals_bilinear(fy, fx):
    # fx of 2, 4 and 8 read each group of pixels as one int16/32/64 word; the others by strides;
    # a view at an offset and a non-contiguous view too
    g = torch.Generator().manual_seed(fy * 100 + fx)
    masks = torch.rand(3, 12 * fy, 10 * fx, generator=g) > 0.5
    for m in (masks, masks[1:], masks[:, :, fx:]):
        size = (m.shape[1] // fy, m.shape[2] // fx)
        ref = F.interpolate(m.float()[:, None], size=size, mode="bilinear", align_corners=False)[:, 0] >= 0.5
        before = masks.clone()
        assert torch.equal(_integer_factor_resize(m, size), ref)
        assert torch.equal(masks, before), "the input masks are left as they were"


def test_one_pass_over_all_masks_and_no_windows_when_they_would_not_save_one(monkeypatch):
    from solo_d2.modeling.solo import mask_geometry

    masks, boxes = blobs(6, seed=17)
    passes = []
    row_sums = mask_geometry._row_sums
    monkeypatch.setattr(mask_geometry, "_row_sums", lambda m: passes.append(m.shape) or row_sums(m))
    im = InstanceMasks(masks, boxes, align=(4, 8))
    im.geometry(extents=False)
    im.resized(torch.arange(6), (H // 4, W // 4))
    im.resized(torch.arange(3), (H // 8, W // 8))
    assert passes == [masks.shape], "the row pass over all masks runs once"
    # windows over more than half of all pixels would cost more than whole masks
    big = torch.tensor([[0.0, 0.0, W * 0.8, H * 0.8]]).expand(6, 4)
    assert not InstanceMasks(masks, big, align=(4, 8)).stacks
    assert InstanceMasks(masks, big * 0.6, align=(4, 8)).stacks  # 0.48^2 of the pixels: windows


def test_centers_are_exact_first_moments_rounded_once():
    # large masks: the first moments pass 2**24, where float32 sums of (count x position) round
    # along the way (differently for each order of summation); the centers are the exact integer
    # moments rounded once to float32, divided by the area in float32, whole or through windows
    h, w = 640, 960
    g = torch.Generator().manual_seed(21)
    masks = torch.rand(8, h, w, generator=g) < torch.rand(8, 1, 1, generator=g)
    masks[:3, :, :8] = False  # three masks over most of the image
    masks[:3, 600:] = False
    masks[3:, :100] = masks[3:, 300:] = masks[3:, :, :200] = masks[3:, :, 500:] = False  # small ones
    counts = [masks.double().sum(2), masks.double().sum(1)]  # exact in float64
    moments = [(c * torch.arange(c.shape[1], dtype=torch.float64)).sum(1) for c in counts]
    area = masks.flatten(1).sum(1).to(torch.float32)
    cy, cx = (m.to(torch.float32) / area for m in moments)
    float32_sums = (counts[0].float() * torch.arange(h, dtype=torch.float32)).sum(1)
    assert not torch.equal(float32_sums, moments[0].float()), "the case tells the two apart"
    im = InstanceMasks(masks, masks_to_boxes(masks), align=(4, 8))
    assert im.stacks
    for geometry in (instance_geometry(masks), im.geometry()):
        assert torch.equal(geometry[2], cy) and torch.equal(geometry[3], cx)
        assert torch.equal(geometry[4], area)


def test_geometry_against_boxes_and_float64_centers():
    # independent of the module's own sums: extents from torchvision's masks_to_boxes (last -
    # first + 1 pixels), centers from float64 sums, for an empty mask, a single pixel, a mask
    # with one-pixel rows and columns at its ends, and random blobs; whole masks, windows, and
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
    im = InstanceMasks(masks, boxes, align=(4, 8))
    assert im.stacks
    for got in (
        instance_geometry(masks), im.geometry(), instance_geometry(masks.to(torch.uint8) * 255),
        instance_geometry(masks.float() * 0.5),
    ):
        assert_same_geometry(got, (ref_h, ref_w, cy, cx, area))
    assert_same_geometry(instance_geometry(masks[:, :0]), (torch.zeros(9),) * 5)  # no rows
