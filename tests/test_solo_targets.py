"""Known-answer tests for SOLO target assignment (solo_d2.modeling.solo.targets)."""
import math

import pytest
import torch

from solo_d2.modeling.solo.targets import LevelTargets, solo_targets

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
    args = dict(num_grids=GRIDS, scale_ranges=RANGES, mask_sizes=SIZES, sigma=0.2, num_classes=NUM_CLASSES)
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
def test_conflict_smallest_area_wins(small_first):
    # Both centered at (124.5, 124.5) on level 0: both claim cells 18..20 x 18..20.
    small = square(105, 105, 40)
    big = square(80, 80, 90)
    masks = torch.stack([small, big] if small_first else [big, small])
    classes = torch.tensor([0, 2]) if small_first else torch.tensor([2, 0])
    small_idx = 0 if small_first else 1
    out = run([masks], [classes])
    expected = {i * 40 + j for i in range(18, 21) for j in range(18, 21)}
    assert positive_cells(out[0]) == expected
    assert set(out[0].instance_ids.tolist()) == {small_idx}
    assert (out[0].labels[0][out[0].labels[0] != NUM_CLASSES] == 0).all()
    # the big one (scale 90) still owns level 1 where the small one (scale 40) is absent
    assert set(out[1].instance_ids.tolist()) == {1 - small_idx}
    assert (out[1].labels[0][out[1].labels[0] != NUM_CLASSES] == 2).all()


def test_mask_targets_equal_downsampled_masks_and_batch_order():
    # image 0: one square (aligned to 4 px), image 1: two squares
    a = square(100, 40, 40)
    b = square(20, 160, 32)
    c = square(180, 180, 44)
    out = run([a[None], torch.stack([b, c])], [torch.tensor([0]), torch.tensor([1, 2])])
    t = out[0]
    assert t.mask_targets.shape[0] == int(t.pos_mask.sum()) == t.instance_ids.shape[0]
    assert t.mask_targets.dtype == torch.float32
    nz = torch.nonzero(t.pos_mask)  # [P, 2] (image, cell)
    assert (nz[:, 0].diff() >= 0).all()
    down = {
        (0, 0): torch.zeros(64, 64),
        (1, 0): torch.zeros(64, 64),
        (1, 1): torch.zeros(64, 64),
    }
    down[(0, 0)][25:35, 10:20] = 1
    down[(1, 0)][5:13, 40:48] = 1
    down[(1, 1)][45:56, 45:56] = 1
    for k in range(nz.shape[0]):
        img, inst = int(nz[k, 0]), int(t.instance_ids[k])
        assert torch.equal(t.mask_targets[k], down[(img, inst)])
        cell = int(nz[k, 1])
        assert t.labels[img].flatten()[cell] == [[0], [1, 2]][img][inst]
    assert set(t.instance_ids[nz[:, 0] == 1].tolist()) == {0, 1}


def reference_targets(masks, classes, s, lo, hi, sigma):
    """Loop-based reference following the official SOLO code (one image, one level)."""
    labels = torch.full((s, s), NUM_CLASSES, dtype=torch.long)
    owner = torch.full((s, s), -1, dtype=torch.long)
    info = []
    for n in range(masks.shape[0]):
        m = masks[n]
        area = int(m.sum())
        if area == 0:
            continue
        ys, xs = torch.nonzero(m, as_tuple=True)
        bh = float(ys.max() - ys.min() + 1)
        bw = float(xs.max() - xs.min() + 1)
        if not (lo <= math.sqrt(bh * bw) <= hi):
            continue
        info.append((area, n, bh, bw, float(ys.float().mean()), float(xs.float().mean())))
    # process big areas first so the smallest area (then the lowest index) is written last
    for area, n, bh, bw, cy, cx in sorted(info, key=lambda r: (-r[0], -r[1])):
        hh, hw = 0.5 * sigma * bh, 0.5 * sigma * bw
        cell = lambda v, e: int(math.floor(v / e * s))  # noqa: E731
        ci, cj = min(cell(cy, H), s - 1), min(cell(cx, W), s - 1)
        top = max(max(0, cell(cy - hh, H)), ci - 1)
        down = min(min(s - 1, cell(cy + hh, H)), ci + 1)
        left = max(max(0, cell(cx - hw, W)), cj - 1)
        right = min(min(s - 1, cell(cx + hw, W)), cj + 1)
        for i in range(top, down + 1):
            for j in range(left, right + 1):
                labels[i, j] = classes[n]
                owner[i, j] = n
    return labels, owner


def test_random_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    masks_list, classes_list = [], []
    for _ in range(2):
        n = 6
        masks = torch.zeros(n, H, W, dtype=torch.bool)
        for k in range(n):
            hh, ww = torch.randint(8, 220, (2,), generator=g).tolist()
            y0 = int(torch.randint(0, H - hh, (1,), generator=g))
            x0 = int(torch.randint(0, W - ww, (1,), generator=g))
            masks[k, y0 : y0 + hh, x0 : x0 + ww] = True
            masks[k] &= torch.rand(H, W, generator=g) > 0.3  # irregular shapes
        masks_list.append(masks)
        classes_list.append(torch.randint(0, NUM_CLASSES, (n,), generator=g))
    out = run(masks_list, classes_list)
    for lvl, (s, (lo, hi)) in enumerate(zip(GRIDS, RANGES)):
        for b in range(2):
            ref_labels, ref_owner = reference_targets(masks_list[b], classes_list[b], s, lo, hi, 0.2)
            assert torch.equal(out[lvl].labels[b], ref_labels), (lvl, b)
            pos_b = out[lvl].pos_mask[b]
            assert torch.equal(pos_b, (ref_owner >= 0).flatten())
            sel = torch.nonzero(out[lvl].pos_mask)[:, 0] == b
            assert torch.equal(out[lvl].instance_ids[sel], ref_owner.flatten()[pos_b])


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="gt_classes"):
        run([square(0, 0, 10)[None]], [torch.tensor([0, 1])])
    with pytest.raises(ValueError, match="num_classes|\\[0, 3\\)"):
        run([square(0, 0, 10)[None]], [torch.tensor([3])])
    with pytest.raises(ValueError, match="scale_ranges"):
        run([square(0, 0, 10)[None]], [torch.tensor([0])], scale_ranges=RANGES[:2])
