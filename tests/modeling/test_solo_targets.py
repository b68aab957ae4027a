"""Known-answer tests for SOLO target assignment (solo_d2.modeling.solo.targets)."""

import math

import pytest
import torch

from solo_d2.modeling.solo.targets import (
    LevelTargets,
    grid_cell,
    instance_geometry,
    resize_masks,
    solo_targets,
)

GRIDS = [40, 36, 24, 16, 12]
RANGES = [(1, 96), (48, 192), (96, 384), (192, 768), (384, 2048)]
H = W = 256
SIZES = [(H // 4, W // 4)] * 5
NUM_CLASSES = 3


def square(y0, x0, side_h, side_w=None, h=H, w=W):
    m = torch.zeros(h, w, dtype=torch.bool)
    m[y0 : y0 + side_h, x0 : x0 + (side_w or side_h)] = True
    return m


def run(masks_per_image, classes_per_image, **kw):
    args = dict(
        num_grids=GRIDS, scale_ranges=RANGES, mask_sizes=SIZES, sigma=0.2, num_classes=NUM_CLASSES
    )
    args.update(kw)
    return solo_targets(masks_per_image, classes_per_image, **args)


def positive_cells(t: LevelTargets, image=0):
    return set(torch.nonzero(t.pos_mask[image]).flatten().tolist())


def test_small_square_only_level0_expected_cells():
    # 40x40 square, rows 100..139, cols 40..79: center of mass (119.5, 59.5), scale 40.
    # S=40, cell size 6.4 px: center cell (18, 9); sigma box half size 0.2*40/2 = 4 ->
    # rows [115.5, 123.5] -> cells 18..19, cols [55.5, 63.5] -> cells 8..9.
    out = run([square(100, 40, 40)[None]], [torch.tensor([2])])
    assert len(out) == 5
    assert positive_cells(out[0]) == {18 * 40 + 8, 18 * 40 + 9, 19 * 40 + 8, 19 * 40 + 9}
    for lvl in range(1, 5):
        assert out[lvl].pos_mask.sum() == 0
        assert (out[lvl].labels == NUM_CLASSES).all()
        assert out[lvl].mask_targets.shape == (0, 64, 64)
    labels = out[0].labels[0]
    assert (labels[18:20, 8:10] == 2).all()
    assert (labels == 2).sum() == 4
    assert out[0].instance_ids.tolist() == [0, 0, 0, 0]


def test_scale_80_positive_on_two_overlapping_levels():
    out = run([square(60, 60, 80)[None]], [torch.tensor([1])])
    counts = [int(t.pos_mask.sum()) for t in out]
    assert counts[0] > 0 and counts[1] > 0
    assert counts[2:] == [0, 0, 0]
    # scale 100 -> levels 1 and 2
    out = run([square(60, 60, 100)[None]], [torch.tensor([1])])
    assert [int(t.pos_mask.sum()) > 0 for t in out] == [False, True, True, False, False]


def test_big_object_sigma_region_clipped_to_3x3():
    # 200x200 square, rows 20..219, cols 30..229: center (119.5, 129.5), scale 200 ->
    # levels 2 (96..384) and 3 (192..768). sigma half size 20 px.
    out = run([square(20, 30, 200)[None]], [torch.tensor([0])])
    assert [int(t.pos_mask.sum()) for t in out] == [0, 0, 9, 9, 0]
    # S=24 (10.667 px): center (11, 12); box rows cells 9..13 -> clipped 10..12;
    # cols cells 10..14 -> clipped 11..13.
    expected = {i * 24 + j for i in range(10, 13) for j in range(11, 14)}
    assert positive_cells(out[2]) == expected
    # S=16 (16 px): center (7, 8); rows cells 6..8; cols 6..9 -> clipped 7..9.
    expected = {i * 16 + j for i in range(6, 9) for j in range(7, 10)}
    assert positive_cells(out[3]) == expected


def test_empty_ground_truth_all_images():
    empty = torch.zeros(0, H, W, dtype=torch.bool)
    out = run([empty, empty], [torch.zeros(0, dtype=torch.long)] * 2)
    for s, t in zip(GRIDS, out):
        assert t.labels.shape == (2, s, s) and (t.labels == NUM_CLASSES).all()
        assert t.pos_mask.shape == (2, s * s) and not t.pos_mask.any()
        assert t.mask_targets.shape == (0, 64, 64)
        assert t.instance_ids.shape == (0,)


def test_empty_mask_instance_ignored():
    masks = torch.stack([torch.zeros(H, W, dtype=torch.bool), square(100, 40, 40)])
    out = run([masks], [torch.tensor([0, 1])])
    assert set(out[0].instance_ids.tolist()) == {1}
    assert sum(int(t.pos_mask.sum()) for t in out) == 4


@pytest.mark.parametrize("small_first", [True, False])
def test_conflict_last_instance_labels_and_every_claimant_gets_a_mask_target(small_first):
    # Both centered at (124.5, 124.5) on level 0: both claim cells 18..20 x 18..20. As in the
    # official code and AdelaiDet, the cell takes the class of the last instance and gets one
    # mask target per claiming instance.
    small = square(105, 105, 40)
    big = square(80, 80, 90)
    masks = torch.stack([small, big] if small_first else [big, small])
    classes = torch.tensor([0, 2]) if small_first else torch.tensor([2, 0])
    out = run([masks], [classes])
    expected = {i * 40 + j for i in range(18, 21) for j in range(18, 21)}
    assert positive_cells(out[0]) == expected
    last_class = int(classes[1])
    assert (out[0].labels[0][out[0].labels[0] != NUM_CLASSES] == last_class).all()
    # 9 targets of instance 0 then 9 of instance 1, each over the 9 cells in order
    assert out[0].instance_ids.tolist() == [0] * 9 + [1] * 9
    assert out[0].target_cell.tolist() == sorted(expected) * 2
    assert out[0].target_img.tolist() == [0] * 18
    down = resize_masks(masks, (64, 64))
    assert torch.equal(out[0].mask_targets[:9], down[0].expand(9, 64, 64))
    assert torch.equal(out[0].mask_targets[9:], down[1].expand(9, 64, 64))
    # the big one (scale 90) alone on level 1, where the small one (scale 40) is absent
    big_idx = 1 if small_first else 0
    assert set(out[1].instance_ids.tolist()) == {big_idx}
    assert (out[1].labels[0][out[1].labels[0] != NUM_CLASSES] == 2).all()


@pytest.mark.parametrize("small_first", [True, False])
def test_conflict_one_target_per_cell_keeps_the_last_claimants_mask(small_first):
    # The official SOLO / Decoupled SOLO rule: ins_label[cell] = seg_mask overwrites, so each of
    # the 9 shared cells keeps one target, the last claimant's; its class is the last one's too.
    small, big = square(105, 105, 40), square(80, 80, 90)
    masks = torch.stack([small, big] if small_first else [big, small])
    classes = torch.tensor([0, 2]) if small_first else torch.tensor([2, 0])
    out = run([masks], [classes], one_target_per_cell=True)
    expected = {i * 40 + j for i in range(18, 21) for j in range(18, 21)}
    assert positive_cells(out[0]) == expected
    assert out[0].num_targets == int(out[0].pos_mask.sum()) == 9
    assert out[0].instance_ids.tolist() == [1] * 9 and out[0].target_cell.tolist() == sorted(
        expected
    )
    assert torch.equal(out[0].mask_targets, resize_masks(masks, (64, 64))[1].expand(9, 64, 64))
    assert (out[0].labels[0][out[0].labels[0] != NUM_CLASSES] == int(classes[1])).all()
    # a level with one claimant per cell is unchanged by the rule
    per_claimant = run([masks], [classes])
    assert torch.equal(out[1].target_cell, per_claimant[1].target_cell)
    assert torch.equal(out[1].instance_ids, per_claimant[1].instance_ids)


def test_mask_targets_equal_downsampled_masks_and_batch_order():
    # image 0: one square (aligned to 4 px), image 1: two squares
    a = square(100, 40, 40)
    b = square(20, 160, 32)
    c = square(180, 180, 44)
    out = run([a[None], torch.stack([b, c])], [torch.tensor([0]), torch.tensor([1, 2])])
    t = out[0]
    assert (
        t.mask_targets.shape[0]
        == int(t.pos_mask.sum())
        == t.instance_ids.shape[0]
        == t.target_cell.shape[0]
    )
    assert t.mask_targets.dtype == torch.float32
    assert (t.target_img.diff() >= 0).all()
    down = {
        (0, 0): torch.zeros(64, 64),
        (1, 0): torch.zeros(64, 64),
        (1, 1): torch.zeros(64, 64),
    }
    down[(0, 0)][25:35, 10:20] = 1
    down[(1, 0)][5:13, 40:48] = 1
    down[(1, 1)][45:56, 45:56] = 1
    for k in range(t.target_cell.shape[0]):
        img, inst, cell = int(t.target_img[k]), int(t.instance_ids[k]), int(t.target_cell[k])
        assert t.pos_mask[img, cell]
        assert torch.equal(t.mask_targets[k], down[(img, inst)])
        assert t.labels[img].flatten()[cell] == [[0], [1, 2]][img][inst]
    assert set(t.instance_ids[t.target_img == 1].tolist()) == {0, 1}


def test_wide_image_uses_height_for_rows_and_width_for_columns():
    # 128 x 320 image; a 40 x 40 square at rows 40..79, cols 240..279: center (59.5, 259.5).
    # S=40: rows cell = 59.5 / 128 * 40 -> 18, cols = 259.5 / 320 * 40 -> 32; sigma half size 4 px:
    # rows [55.5, 63.5] -> 17..19, clipped to 17..19; cols [255.5, 263.5] -> 31..32.
    h, w = 128, 320
    m = square(40, 240, 40, h=h, w=w)
    out = run([m[None]], [torch.tensor([1])], mask_sizes=[(h // 4, w // 4)] * 5)
    assert positive_cells(out[0]) == {i * 40 + j for i in range(17, 20) for j in range(31, 33)}
    assert out[0].mask_targets.shape[-2:] == (32, 80)
    assert torch.equal(out[0].mask_targets[0], resize_masks(m[None], (32, 80))[0])


def test_annotation_boxes_set_scale_and_sigma_region():
    # a 40 x 40 mask annotated with a 100 x 100 box: scale 100 -> levels 1 and 2 (not 0),
    # and the sigma region grows with the box (as both references use the annotation box).
    m = square(100, 40, 40)
    box = torch.tensor([[10.0, 70.0, 110.0, 170.0]])
    out = run([m[None]], [torch.tensor([1])], gt_boxes=[box])
    assert [int(t.pos_mask.sum()) > 0 for t in out] == [False, True, True, False, False]
    out_mask_box = run([m[None]], [torch.tensor([1])])
    assert [int(t.pos_mask.sum()) > 0 for t in out_mask_box] == [True, False, False, False, False]


def test_cell_index_uses_the_references_float32_floor_division():
    # (c / extent) // (1 / S) differs from floor(c / extent * S) exactly at cell borders:
    # 32 px of 256 with S = 40 is border 5, and the references put it in cell 4.
    assert grid_cell(torch.tensor([32.0, 31.0, 33.0]), 256, 40).tolist() == [4, 4, 5]
    assert grid_cell(torch.tensor([200.0]), 800, 36).tolist() == [8]  # floor(9.0) would be 9


def test_cell_index_trunc_rounding_is_mmdetections_and_differs_only_on_grid_lines():
    # mmdetection truncates the float32 quotient: 0.125 / float32(1 / 40) rounds to 5.0 -> cell 5
    coords = torch.tensor([32.0, 31.0, 33.0, 0.0, 255.9])
    assert grid_cell(coords, 256, 40, "trunc").tolist() == [5, 4, 5, 0, 39]
    assert grid_cell(coords, 256, 40, "floor").tolist() == [4, 4, 5, 0, 39]
    with pytest.raises(ValueError, match="rounding"):
        grid_cell(coords, 256, 40, "round")


def reference_targets(
    masks, classes, boxes, s, lo, hi, sigma, h, w, per_cell=False, rounding="floor"
):
    """Loop-based reference following AdelaiDet's SOLOv2 (one image, one level): instances in
    annotation order, later ones overwrite a cell's class, one mask target per (instance, cell);
    ``per_cell``: the official SOLO head, whose later instances overwrite a cell's mask target too;
    ``rounding="trunc"``: mmdetection's cell index."""
    labels = torch.full((s, s), NUM_CLASSES, dtype=torch.long)
    targets = []  # (instance, cell) in append order

    def cell_of(v, extent):
        q = v / extent
        if rounding == "trunc":
            return int(
                torch.div(q, torch.tensor(1.0 / s, dtype=torch.float32), rounding_mode="trunc")
            )
        return int(q // (1.0 / s))

    for n in range(masks.shape[0]):
        m = masks[n].float()
        if m.sum() == 0:
            continue
        bw, bh = float(boxes[n, 2] - boxes[n, 0]), float(boxes[n, 3] - boxes[n, 1])
        if not (lo <= math.sqrt(bw * bh) <= hi):
            continue
        cy = (m * torch.arange(h, dtype=torch.float32)[:, None]).sum() / m.sum()
        cx = (m * torch.arange(w, dtype=torch.float32)).sum() / m.sum()
        hh, hw = 0.5 * bh * sigma, 0.5 * bw * sigma
        coord_w, coord_h = cell_of(cx, w), cell_of(cy, h)
        top = max(0, cell_of(cy - hh, h))
        down = min(s - 1, cell_of(cy + hh, h))
        left = max(0, cell_of(cx - hw, w))
        right = min(s - 1, cell_of(cx + hw, w))
        top, down = max(top, coord_h - 1), min(down, coord_h + 1)
        left, right = max(coord_w - 1, left), min(right, coord_w + 1)
        labels[top : down + 1, left : right + 1] = classes[n]
        for i in range(top, down + 1):
            for j in range(left, right + 1):
                targets.append((n, i * s + j))
    if per_cell:  # the last claimant of each cell; solo_d2 orders them by instance, then cell
        last = {cell: n for n, cell in targets}
        targets = [(n, cell) for n, cell in targets if last[cell] == n]
    return labels, targets


@pytest.mark.parametrize(
    "per_cell, rounding", [(False, "floor"), (True, "floor"), (False, "trunc")]
)
@pytest.mark.parametrize("hw", [(256, 256), (192, 320)])
def test_random_matches_loop_reference(hw, per_cell, rounding):
    h, w = hw
    g = torch.Generator().manual_seed(0)
    masks_list, classes_list, boxes_list = [], [], []
    for _ in range(2):
        n = 6
        masks = torch.zeros(n, h, w, dtype=torch.bool)
        boxes = torch.zeros(n, 4)
        for k in range(n):
            hh = int(torch.randint(8, h - 30, (1,), generator=g))
            ww = int(torch.randint(8, w - 30, (1,), generator=g))
            y0 = int(torch.randint(0, h - hh, (1,), generator=g))
            x0 = int(torch.randint(0, w - ww, (1,), generator=g))
            masks[k, y0 : y0 + hh, x0 : x0 + ww] = True
            masks[k] &= torch.rand(h, w, generator=g) > 0.3  # irregular shapes
            boxes[k] = torch.tensor([x0, y0, x0 + ww, y0 + hh]) + torch.rand(4, generator=g)
        masks_list.append(masks)
        classes_list.append(torch.randint(0, NUM_CLASSES, (n,), generator=g))
        boxes_list.append(boxes)
    out = run(
        masks_list,
        classes_list,
        gt_boxes=boxes_list,
        mask_sizes=[(h // 4, w // 4)] * 5,
        one_target_per_cell=per_cell,
        grid_rounding=rounding,
    )
    n_targets = 0
    for lvl, (s, (lo, hi)) in enumerate(zip(GRIDS, RANGES)):
        for b in range(2):
            ref_labels, ref_targets = reference_targets(
                masks_list[b],
                classes_list[b],
                boxes_list[b],
                s,
                lo,
                hi,
                0.2,
                h,
                w,
                per_cell,
                rounding,
            )
            assert torch.equal(out[lvl].labels[b], ref_labels), (lvl, b)
            assert torch.equal(out[lvl].pos_mask[b], (ref_labels != NUM_CLASSES).flatten())
            sel = out[lvl].target_img == b
            got = list(zip(out[lvl].instance_ids[sel].tolist(), out[lvl].target_cell[sel].tolist()))
            assert got == ref_targets, (lvl, b)
            n_targets += len(got)
    assert n_targets > 0


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="gt_classes"):
        run([square(0, 0, 10)[None]], [torch.tensor([0, 1])])
    with pytest.raises(ValueError, match="num_classes|\\[0, 3\\)"):
        run([square(0, 0, 10)[None]], [torch.tensor([3])])
    two = [torch.stack([square(0, 0, 10), square(20, 20, 10)])] * 3
    with pytest.raises(
        ValueError, match=r"\[0, 3\).*image 1 has range \[-1, 2\]"
    ):  # names the image
        run(two, [torch.tensor([0, 2]), torch.tensor([-1, 2]), torch.tensor([5, 0])])
    with pytest.raises(ValueError, match="scale_ranges"):
        run([square(0, 0, 10)[None]], [torch.tensor([0])], scale_ranges=RANGES[:2])


@pytest.mark.parametrize("factor", [2, 3, 4, 8])
def test_resize_masks_equals_bilinear_threshold_on_random_masks(factor):
    # the integer-factor fast path must equal F.interpolate(bilinear) >= 0.5 bit for bit
    g = torch.Generator().manual_seed(factor)
    masks = torch.rand(5, 8 * factor * 3, 8 * factor * 5, generator=g) > 0.5
    size = (masks.shape[1] // factor, masks.shape[2] // factor)
    ref = torch.nn.functional.interpolate(
        masks[:, None].float(), size=size, mode="bilinear", align_corners=False
    )[:, 0]
    assert torch.equal(resize_masks(masks, size), (ref >= 0.5).float())
    assert torch.equal(resize_masks(masks.to(torch.uint8), size), (ref >= 0.5).float())


def test_instance_geometry_same_for_bool_uint8_and_float_masks():
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(4, 24, 40, generator=g) > 0.7
    masks[2] = False
    ref = instance_geometry(masks)
    for dtype in (torch.uint8, torch.float32):
        for a, b in zip(instance_geometry(masks.to(dtype)), ref):
            assert torch.allclose(a, b)
    assert ref[4][2] == 0 and ref[0][2] == 0 and ref[1][2] == 0  # empty mask: zeros


def test_empty_mask_with_an_annotation_box_is_ignored():
    masks = torch.stack([torch.zeros(H, W, dtype=torch.bool), square(100, 40, 40)])
    boxes = torch.tensor([[10.0, 10.0, 60.0, 60.0], [40.0, 100.0, 80.0, 140.0]])
    out = run([masks], [torch.tensor([0, 1])], gt_boxes=[boxes])
    assert all(set(t.instance_ids.tolist()) <= {1} for t in out)
    assert sum(int(t.pos_mask.sum()) for t in out) == 4
    # a one-pixel instance is an instance (the references keep every non-empty mask)
    dot = torch.zeros(1, H, W, dtype=torch.bool)
    dot[0, 100, 40] = True
    out = run([dot], [torch.tensor([2])])
    assert int(out[0].pos_mask.sum()) == 1 and out[0].instance_ids.tolist() == [0]


def test_levels_with_different_mask_sizes_get_their_own_resized_targets():
    # vanilla SOLO: each level's masks have their own size; every target must be the instance
    # mask resized to its level's size (instances on several levels and sizes)
    masks = torch.stack([square(20, 30, 120), square(100, 40, 40), square(60, 150, 90, 70)])
    sizes = [(64, 64), (32, 32), (64, 64), (16, 16), (8, 8)]
    out = run([masks], [torch.tensor([0, 1, 2])], mask_sizes=sizes)
    seen = 0
    for t, size in zip(out, sizes):
        down = resize_masks(masks, size)
        for k in range(t.instance_ids.numel()):
            assert torch.equal(t.mask_targets[k], down[int(t.instance_ids[k])])
            seen += 1
    assert seen > 0 and sum(int(t.pos_mask.sum()) > 0 for t in out) >= 3
    # each size resizes every instance once: levels of one size share the tensor
    for size in set(sizes):
        of_size = [t for t, sz in zip(out, sizes) if sz == size]
        assert all(t.target_masks is of_size[0].target_masks for t in of_size), size
        assert of_size[0].target_masks.shape == (3, *size)


def test_instances_at_the_image_borders_match_loop_reference():
    # centres in the first and last grid cells, where the cells are clipped to the grid and to
    # the 3x3 cells around the centre; loose annotation boxes reach past the image
    h, w = 192, 320
    specs = [
        (0, 0, 6, 9),
        (0, 0, 40, 12),
        (h - 7, w - 5, 7, 5),
        (h - 90, w - 20, 90, 20),
        (0, w - 60, 150, 60),
        (h - 3, 0, 3, 200),
    ]  # (y0, x0, height, width) of each mask
    masks = torch.zeros(len(specs), h, w, dtype=torch.bool)
    for k, (y0, x0, hh, ww) in enumerate(specs):
        masks[k, y0 : y0 + hh, x0 : x0 + ww] = True
    tight = torch.tensor(
        [[x0, y0, x0 + ww, y0 + hh] for y0, x0, hh, ww in specs], dtype=torch.float32
    )
    boxes = tight + torch.tensor([-30.0, -30.0, 30.0, 30.0]) * torch.tensor([[1.0], [0.0]]).repeat(
        3, 1
    )
    classes = torch.tensor([0, 1, 2, 0, 1, 2])
    out = run([masks], [classes], gt_boxes=[boxes], mask_sizes=[(h // 4, w // 4)] * 5)
    for lvl, (s, (lo, hi)) in enumerate(zip(GRIDS, RANGES)):
        ref_labels, ref_targets = reference_targets(masks, classes, boxes, s, lo, hi, 0.2, h, w)
        assert torch.equal(out[lvl].labels[0], ref_labels), lvl
        got = list(zip(out[lvl].instance_ids.tolist(), out[lvl].target_cell.tolist()))
        assert got == ref_targets, lvl
        assert all(0 <= c < s * s for c in out[lvl].target_cell.tolist())
    corners = [(t.pos_mask[0, 0], t.pos_mask[0, -1]) for t in out]
    assert any(a for a, _ in corners) and any(b for _, b in corners)  # first and last cells claimed


def test_mismatched_shapes_raise_errors_naming_the_image():
    m = square(0, 0, 10)[None]
    with pytest.raises(
        ValueError, match=r"gt_masks must be \[N, H, W\].*image 1 has \(1, 128, 256\)"
    ):
        run([m, square(0, 0, 10, h=128)[None]], [torch.tensor([0]), torch.tensor([0])])
    with pytest.raises(ValueError, match=r"gt_masks must be \[N, H, W\].*image 0"):
        run([square(0, 0, 10)], [torch.tensor([0])])
    with pytest.raises(ValueError, match=r"image 1: gt_boxes shape \(2, 4\), expected \(1, 4\)"):
        run([m, m], [torch.tensor([0])] * 2, gt_boxes=[torch.zeros(1, 4), torch.zeros(2, 4)])


@pytest.mark.parametrize("image_hw", [(233, 310), (232, 308)])
def test_unpadded_resize_is_adelaidets_cv2_resize_pasted_top_left(image_hw):
    # AdelaiDet resizes the unpadded mask by cv2.resize to (int(w / 4 + 0.5), int(h / 4 + 0.5)); the
    # official rule resizes the padded mask by exactly 4. Equal iff both sides are multiples of 4.
    import cv2

    h, w = image_hw
    g = torch.Generator().manual_seed(3)
    masks = torch.zeros(3, 256, 320, dtype=torch.bool)
    for k, (y0, x0, side) in enumerate([(10, 20, 60), (120, 200, 90), (200, 280, 33)]):
        masks[k, y0 : y0 + side, x0 : x0 + side] = torch.rand(side, side, generator=g) > 0.2
    masks[:, h:] = False
    masks[:, :, w:] = False
    kw = dict(mask_sizes=[(64, 80)] * 5, num_classes=3)
    classes = [torch.tensor([0, 1, 2])]
    adelaidet = run([masks], classes, mask_resize="unpadded", image_sizes=[(h, w)], **kw)
    official = run([masks], classes, **kw)
    differ = 0
    for a, o in zip(adelaidet, official):
        assert torch.equal(a.target_cell, o.target_cell) and torch.equal(a.labels, o.labels)
        for k, row in zip(a.instance_ids.tolist(), a.mask_targets):
            small = cv2.resize(
                masks[k, :h, :w].numpy().astype("uint8"), (int(w / 4 + 0.5), int(h / 4 + 0.5))
            )
            want = torch.zeros(64, 80)
            want[: small.shape[0], : small.shape[1]] = torch.from_numpy(small).float()
            assert torch.equal(row, want)
        differ += int((a.mask_targets != o.mask_targets).any())
    assert (differ > 0) == (h % 4 != 0 or w % 4 != 0)
    with pytest.raises(ValueError, match="image_sizes"):
        run([masks], classes, mask_resize="unpadded", **kw)
