"""Panoptic merging (solo_d2.modeling.solo.panoptic_merge): Panoptic FPN's rules, checked against
Detectron2's own ``combine_semantic_and_instance_outputs`` and on hand-made cases."""

import pytest
import torch
from detectron2.modeling.meta_arch.panoptic_fpn import combine_semantic_and_instance_outputs
from detectron2.structures import Instances

from solo_d2.modeling.solo.panoptic_merge import combine_panoptic

H, W = 37, 53  # not multiples of 4 or 32, non-square


def _box(y0, x0, y1, x1):
    m = torch.zeros(H, W, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def _merge(masks, scores, classes, semantic, **kw):
    args = dict(overlap_thresh=0.5, stuff_area_thresh=10, instances_score_thresh=0.5)
    args.update(kw)
    return combine_panoptic(masks, torch.tensor(scores), torch.tensor(classes), semantic, **args)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_detectron2s_panoptic_fpn_merge_on_random_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    n = 12
    masks = torch.zeros(n, H, W, dtype=torch.bool)
    for k in range(n):
        y0, x0 = (int(v) for v in torch.randint(0, 25, (2,), generator=g))
        masks[
            k,
            y0 : y0 + int(torch.randint(3, 20, (1,), generator=g)),
            x0 : x0 + int(torch.randint(3, 30, (1,), generator=g)),
        ] = True
    scores = torch.rand(n, generator=g)  # distinct, several below the threshold
    classes = torch.randint(0, 4, (n,), generator=g)
    semantic = torch.randint(0, 5, (H, W), generator=g)
    semantic[:10] = 3  # one large stuff region
    ours, info = combine_panoptic(
        masks,
        scores,
        classes,
        semantic,
        overlap_thresh=0.3,
        stuff_area_thresh=30,
        instances_score_thresh=0.2,
    )
    ins = Instances((H, W), pred_masks=masks, scores=scores, pred_classes=classes)
    ref, ref_info = combine_semantic_and_instance_outputs(ins, semantic, 0.3, 30, 0.2)
    assert torch.equal(ours, ref)
    keys = ("id", "isthing", "category_id", "instance_id")
    assert [{k: s.get(k) for k in keys} for s in info] == [
        {k: s.get(k) for k in keys} for s in ref_info
    ]
    assert sum(s["isthing"] for s in info) >= 3 and any(not s["isthing"] for s in info)
    for s in info:  # areas are the pasted pixels
        assert s["area"] == int((ours == s["id"]).sum())


def test_score_order_overlap_rule_and_stuff_area_limit():
    semantic = torch.zeros(H, W, dtype=torch.long)
    semantic[:, :20] = 1  # stuff 1: 37 * 20 = 740 px
    semantic[:2, 40:] = 2  # stuff 2: 2 * 13 = 26 px, below the limit of 30
    big, inner, overlapping = _box(5, 25, 30, 45), _box(10, 30, 20, 40), _box(0, 40, 10, 53)
    masks = torch.stack([inner, big, overlapping])
    # `big` first (highest score); `inner` lies inside it: overlap 100% > 50%, dropped;
    # `overlapping` shares 5 x 5 = 25 of its 130 px (19%): kept, minus the shared pixels
    pan, info = _merge(masks, [0.7, 0.9, 0.6], [2, 0, 1], semantic, stuff_area_thresh=30)
    things = [s for s in info if s["isthing"]]
    assert [s["instance_id"] for s in things] == [1, 2] and [s["category_id"] for s in things] == [
        0,
        1,
    ]
    assert things[0]["area"] == 500 and things[1]["area"] == 130 - 25
    assert torch.equal(pan == 1, big) and int((pan == 2).sum()) == 105
    stuff = [s for s in info if not s["isthing"]]
    assert [s["category_id"] for s in stuff] == [
        1
    ]  # stuff 2 is too small; label 0 ("things") skipped
    assert int((pan == stuff[0]["id"]).sum()) == 740 - int((big & (semantic == 1)).sum())
    assert int((pan == 0).sum()) == H * W - sum(s["area"] for s in info)


def test_score_threshold_and_id_maps():
    semantic = torch.full((H, W), 2, dtype=torch.long)
    masks = torch.stack([_box(0, 0, 10, 10), _box(20, 20, 30, 30)])
    pan, info = _merge(
        masks, [0.4, 0.8], [0, 1], semantic, thing_ids=[11, 12], stuff_ids=[-1, 5, 7]
    )
    assert [(s["isthing"], s["category_id"]) for s in info] == [(True, 12), (False, 7)]
    assert int((pan == 1).sum()) == 100 and int((pan == 2).sum()) == H * W - 100


def test_empty_predictions_and_images_with_only_stuff():
    semantic = torch.zeros(H, W, dtype=torch.long)
    semantic[:, 30:] = 3
    pan, info = combine_panoptic(
        torch.zeros(0, H, W, dtype=torch.bool),
        torch.zeros(0),
        torch.zeros(0, dtype=torch.long),
        semantic,
        stuff_area_thresh=10,
    )
    assert [(s["isthing"], s["category_id"], s["area"]) for s in info] == [(False, 3, 23 * H)]
    assert int((pan == 0).sum()) == 30 * H  # "things" pixels without an instance stay void
    pan, info = combine_panoptic(
        torch.zeros(0, H, W, dtype=torch.bool),
        torch.zeros(0),
        torch.zeros(0, dtype=torch.long),
        torch.zeros(H, W, dtype=torch.long),
    )
    assert info == [] and int(pan.abs().sum()) == 0


def test_empty_mask_skipped_and_shapes_checked():
    semantic = torch.zeros(H, W, dtype=torch.long)
    masks = torch.stack([torch.zeros(H, W, dtype=torch.bool), _box(0, 0, 5, 5)])
    pan, info = _merge(masks, [0.9, 0.8], [0, 1], semantic)
    assert [s["instance_id"] for s in info] == [1] and info[0]["id"] == 1
    with pytest.raises(ValueError, match="do not match"):
        combine_panoptic(masks[:, :10], torch.ones(2), torch.zeros(2, dtype=torch.long), semantic)
