"""Property-based tests (hypothesis) for target assignment, Matrix NMS and post-processing.

Random inputs (non-square images, several classes, unequal scores, more candidates than the
top-k): no exceptions, and the invariants users rely on hold. ``derandomize=True`` keeps CI
deterministic; ``deadline=None`` because the machine is shared.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from solo_d2.modeling.solo.matrix_nms import matrix_nms
from solo_d2.modeling.solo.postprocess import solo_postprocess
from solo_d2.modeling.solo.targets import solo_targets

pytestmark = pytest.mark.usefixtures("single_thread")
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)
GRIDS = [12, 10, 8, 6, 4]
RANGES = [(1, 24), (12, 48), (24, 96), (48, 192), (96, 2048)]


@st.composite
def instances(draw, h, w, max_n=6):
    """(masks [N, H, W] bool, classes [N], boxes [N, 4]) on an H x W image."""
    n = draw(st.integers(0, max_n))
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    boxes = torch.zeros(n, 4)
    for k in range(n):
        y0 = draw(st.integers(0, h - 1))
        x0 = draw(st.integers(0, w - 1))
        y1 = draw(st.integers(y0, h - 1)) + 1
        x1 = draw(st.integers(x0, w - 1)) + 1
        masks[k, y0:y1, x0:x1] = True
        if draw(st.booleans()):  # holes: irregular shapes, sometimes empty
            masks[k, y0::2, x0::3] = False
        boxes[k] = torch.tensor([x0, y0, x1, y1], dtype=torch.float32)
    classes = torch.tensor(
        draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)), dtype=torch.long
    )
    return masks, classes, boxes


@SETTINGS
@given(data=st.data(), use_boxes=st.booleans())
def test_targets_invariants(data, use_boxes):
    hw = (4 * data.draw(st.integers(8, 32)), 4 * data.draw(st.integers(8, 32)))  # often non-square
    batch = data.draw(st.lists(instances(*hw), min_size=1, max_size=2))
    sizes = [(hw[0] // 4, hw[1] // 4)] * 5
    out = solo_targets(
        [m for m, _, _ in batch],
        [c for _, c, _ in batch],
        num_grids=GRIDS,
        scale_ranges=RANGES,
        mask_sizes=sizes,
        sigma=0.2,
        num_classes=3,
        gt_boxes=[b for _, _, b in batch] if use_boxes else None,
    )
    for s, t in zip(GRIDS, out):
        assert t.labels.shape == (len(batch), s, s) and t.pos_mask.shape == (len(batch), s * s)
        assert torch.equal(t.pos_mask, (t.labels != 3).flatten(1))
        m = t.target_img.numel()
        assert t.target_cell.shape == t.instance_ids.shape == (m,) and t.mask_targets.shape == (
            m,
            *sizes[0],
        )
        # every target sits on a positive cell, every positive cell has a target
        assert t.pos_mask[t.target_img, t.target_cell].all()
        covered = torch.zeros_like(t.pos_mask)
        covered[t.target_img, t.target_cell] = True
        assert torch.equal(covered, t.pos_mask)
        assert ((t.mask_targets == 0) | (t.mask_targets == 1)).all()
        for k in range(m):  # the target learns a non-empty instance of its own image
            img, inst = int(t.target_img[k]), int(t.instance_ids[k])
            assert batch[img][0][inst].any()
        # a cell's class is the class of its last claimant
        for img in range(len(batch)):
            sel = t.target_img == img
            for cell in t.target_cell[sel].unique().tolist():
                last = int(t.instance_ids[sel][t.target_cell[sel] == cell].max())
                assert int(t.labels[img].flatten()[cell]) == int(batch[img][1][last])


@st.composite
def candidates(draw, max_n=40):
    n = draw(st.integers(0, max_n))
    h, w = draw(st.integers(3, 12)), draw(st.integers(3, 12))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    soft = torch.rand(n, h, w, generator=g)
    labels = torch.randint(0, 3, (n,), generator=g)
    scores = torch.rand(n, generator=g) * 0.9 + 0.1
    return soft, labels, scores


@SETTINGS
@given(c=candidates(), kernel=st.sampled_from(["gaussian", "linear"]), sigma=st.floats(0.5, 4.0))
def test_matrix_nms_never_raises_a_score_nor_decays_the_top_one(c, kernel, sigma):
    soft, labels, scores = c
    order = torch.argsort(scores, descending=True)
    masks, labels, scores = soft[order] > 0.5, labels[order], scores[order]
    decayed = matrix_nms(masks, labels, scores, kernel=kernel, sigma=sigma)
    assert decayed.shape == scores.shape
    assert (decayed <= scores + 1e-6).all() and (decayed >= 0).all()
    if scores.numel():
        assert decayed[0] == scores[0]
        # the top-scoring mask of each class keeps its score (nothing of its class ranks above it)
        for cls in labels.unique():
            first = int((labels == cls).nonzero()[0])
            assert torch.isclose(decayed[first], scores[first])


@SETTINGS
@given(
    c=candidates(),
    out_hw=st.tuples(st.integers(5, 60), st.integers(5, 60)),
    max_per_img=st.integers(1, 10),
    nms_method=st.sampled_from(["matrix", "mask"]),
)
def test_postprocess_outputs_sorted_bounded_and_well_formed(c, out_hw, max_per_img, nms_method):
    soft, labels, scores = c
    h, w = soft.shape[-2:]
    strides = torch.full((soft.shape[0],), 2.0)
    res = solo_postprocess(
        soft,
        labels,
        scores,
        strides,
        image_size=(4 * h - 1, 4 * w - 2),
        output_size=out_hw,
        max_per_img=max_per_img,
        nms_pre=15,
        nms_method=nms_method,
    )
    k = len(res)
    assert k <= max_per_img and res.image_size == out_hw
    assert res.pred_masks.shape == (k, *out_hw) and res.pred_masks.dtype == torch.bool
    assert res.scores.shape == res.pred_classes.shape == (k,)
    assert (res.scores[:-1] >= res.scores[1:]).all(), "detections must be sorted by score"
    assert (res.scores >= 0.05).all()
    assert set(res.pred_classes.tolist()) <= set(labels.tolist())
    boxes = res.pred_boxes.tensor
    assert (boxes[:, 0] <= boxes[:, 2]).all() and (boxes[:, 1] <= boxes[:, 3]).all()
    assert (boxes[:, 2] <= out_hw[1]).all() and (boxes[:, 3] <= out_hw[0]).all()


def test_max_per_img_keeps_the_best_scores_after_the_decay():
    """A (0.9), its near-duplicate A' (0.85, same class) and a separate object B (0.8), two kept:
    Matrix NMS decays A' below B, so the re-sort after the decay must keep A and B, not A'."""
    h, w = 16, 24
    soft = torch.zeros(3, h, w)
    soft[0, 2:10, 2:10] = 0.9
    soft[1, 2:10, 3:10] = 0.9  # IoU 7/8 with A
    soft[2, 10:15, 14:22] = 0.9
    labels = torch.tensor([1, 1, 1])
    scores = torch.tensor([0.9, 0.85, 0.8])
    res = solo_postprocess(
        soft,
        labels,
        scores,
        torch.full((3,), 2.0),
        image_size=(4 * h, 4 * w),
        output_size=(4 * h, 4 * w),
        max_per_img=2,
    )
    assert len(res) == 2
    boxes = res.pred_boxes.tensor
    assert boxes[0].tolist() == [8.0, 8.0, 40.0, 40.0]  # A
    assert boxes[1].tolist() == [56.0, 40.0, 88.0, 60.0]  # B, not the decayed duplicate
    assert torch.allclose(res.scores, torch.tensor([0.9, 0.8]) * 0.9)
