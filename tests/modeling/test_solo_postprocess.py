"""Known-answer tests for SOLO post-processing (solo_d2.modeling.solo.postprocess)."""

import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.structures import BitMasks, Instances

from solo_d2.modeling.solo.postprocess import (
    mask_area_maskness,
    masks_to_boxes,
    point_nms,
    solo_postprocess,
)

MH, MW = 16, 20  # masks at 1/4 of a 64x80 padded input
IMAGE_SIZE = (60, 72)  # unpadded input
OUTPUT_SIZE = (120, 144)  # original image (2x the input)


def soft(y0, y1, x0, x1, value):
    m = torch.full((MH, MW), 0.02)
    m[y0:y1, x0:x1] = value
    return m


def test_point_nms_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    heat = torch.rand(2, 3, 7, 7, generator=g)
    out = point_nms(heat)
    ref = torch.zeros_like(heat)
    for b in range(2):
        for c in range(3):
            for i in range(7):
                for j in range(7):
                    window = heat[b, c, max(i - 1, 0) : i + 1, max(j - 1, 0) : j + 1]
                    if heat[b, c, i, j] == window.max():
                        ref[b, c, i, j] = heat[b, c, i, j]
    assert torch.equal(out, ref)
    # a peak and its lower right neighbour: the neighbour is suppressed
    heat = torch.zeros(1, 1, 4, 4)
    heat[0, 0, 1, 1] = 0.9
    heat[0, 0, 2, 2] = 0.5
    heat[0, 0, 0, 3] = 0.3
    out = point_nms(heat)
    assert (
        out[0, 0, 1, 1] == pytest.approx(0.9)
        and out[0, 0, 2, 2] == 0
        and out[0, 0, 0, 3] == pytest.approx(0.3)
    )
    with pytest.raises(ValueError, match="kernel"):
        point_nms(heat, kernel=4)


def test_masks_to_boxes_matches_bitmasks():
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(6, 30, 40, generator=g) > 0.97
    masks[2] = False
    boxes = masks_to_boxes(masks)
    ref = BitMasks(masks).get_bounding_boxes().tensor
    assert torch.equal(boxes, ref)
    assert torch.equal(boxes[2], torch.zeros(4))
    assert masks_to_boxes(torch.zeros(0, 5, 5, dtype=torch.bool)).shape == (0, 4)


def two_objects_and_duplicate():
    a = soft(2, 8, 2, 8, 0.9)  # 36 cells
    b = soft(9, 15, 12, 19, 0.95)  # 42 cells, far from a
    dup = soft(2, 8, 3, 9, 0.8)  # a shifted right by one cell: IoU 30/42
    masks = torch.stack([a, b, dup])
    labels = torch.tensor([1, 1, 1])
    scores = torch.tensor([0.9, 0.8, 0.7])
    strides = torch.tensor([8.0, 8.0, 8.0])
    return masks, labels, scores, strides


def test_duplicate_decays_boxes_and_output_size():
    masks, labels, scores, strides = two_objects_and_duplicate()
    res = solo_postprocess(
        masks, labels, scores, strides, image_size=IMAGE_SIZE, output_size=OUTPUT_SIZE
    )
    assert isinstance(res, Instances) and res.image_size == OUTPUT_SIZE
    assert res.pred_masks.shape == (3, *OUTPUT_SIZE) and res.pred_masks.dtype == torch.bool
    # maskness = mean soft value inside the binary mask
    pre = torch.tensor([0.9 * 0.9, 0.8 * 0.95, 0.7 * 0.8])
    iou = 30 / 42
    expected = torch.tensor([pre[0], pre[1], pre[2] * math.exp(-2.0 * iou**2)])
    assert torch.allclose(res.scores, expected, atol=1e-6)
    assert res.pred_classes.tolist() == [1, 1, 1]
    # boxes are the extents of the output masks
    assert torch.equal(res.pred_boxes.tensor, BitMasks(res.pred_masks).get_bounding_boxes().tensor)
    # mask a covers cells 2..7 at 1/4 -> input px 8..32 -> output px ~16..64 (x2)
    box_a = res.pred_boxes.tensor[0]
    assert torch.allclose(box_a, torch.tensor([16.0, 16.0, 64.0, 64.0]), atol=3)
    # mask b is cropped by the image size: x up to cell 19 -> input px 76 > 72
    box_b = res.pred_boxes.tensor[1]
    assert box_b[2] == OUTPUT_SIZE[1] and torch.allclose(
        box_b[:2], torch.tensor([96.0, 72.0]), atol=3
    )


def test_hard_mask_nms_removes_duplicate_and_update_thr():
    masks, labels, scores, strides = two_objects_and_duplicate()
    res = solo_postprocess(
        masks,
        labels,
        scores,
        strides,
        image_size=IMAGE_SIZE,
        output_size=OUTPUT_SIZE,
        nms_method="mask",
        nms_iou_thr=0.5,
    )
    assert len(res) == 2 and torch.allclose(res.scores, torch.tensor([0.81, 0.76]))
    # a different class for the duplicate: no suppression at all
    res = solo_postprocess(
        masks,
        torch.tensor([1, 1, 0]),
        scores,
        strides,
        image_size=IMAGE_SIZE,
        output_size=OUTPUT_SIZE,
    )
    assert torch.allclose(res.scores, torch.tensor([0.81, 0.76, 0.56]))
    # update_thr drops decayed scores
    res = solo_postprocess(
        masks,
        labels,
        scores,
        strides,
        image_size=IMAGE_SIZE,
        output_size=OUTPUT_SIZE,
        update_thr=0.3,
    )
    assert len(res) == 2
    with pytest.raises(ValueError, match="nms_method"):
        solo_postprocess(
            masks,
            labels,
            scores,
            strides,
            image_size=IMAGE_SIZE,
            output_size=OUTPUT_SIZE,
            nms_method="soft",
        )


def test_small_masks_dropped_sorting_and_max_per_img():
    masks, labels, scores, strides = two_objects_and_duplicate()
    tiny = soft(12, 14, 2, 4, 0.99)  # area 4 <= stride 8
    masks = torch.cat([masks, tiny[None]])
    res = solo_postprocess(
        masks,
        torch.tensor([1, 2, 0, 0]),
        torch.tensor([0.5, 0.8, 0.9, 0.95]),
        torch.tensor([8.0, 8.0, 8.0, 8.0]),
        image_size=IMAGE_SIZE,
        output_size=OUTPUT_SIZE,
        max_per_img=2,
    )
    # tiny dropped; dup (class 0, 0.9*0.8=0.72) and b (0.76) are kept, a (0.45) cut by max_per_img
    assert res.scores.tolist() == pytest.approx([0.76, 0.72])
    assert res.pred_classes.tolist() == [2, 0]


def test_empty_inputs_give_valid_empty_instances():
    res = solo_postprocess(
        torch.zeros(0, MH, MW),
        torch.zeros(0, dtype=torch.long),
        torch.zeros(0),
        torch.zeros(0),
        image_size=IMAGE_SIZE,
        output_size=OUTPUT_SIZE,
    )
    assert len(res) == 0 and res.image_size == OUTPUT_SIZE
    assert res.pred_masks.shape == (0, *OUTPUT_SIZE) and res.pred_masks.dtype == torch.bool
    assert res.scores.shape == (0,) and res.pred_classes.shape == (0,)
    assert res.pred_boxes.tensor.shape == (0, 4)
    # all candidates filtered (below mask_thr) -> same empty result
    res = solo_postprocess(
        torch.full((2, MH, MW), 0.1),
        torch.zeros(2, dtype=torch.long),
        torch.ones(2),
        torch.full((2,), 8.0),
        image_size=IMAGE_SIZE,
        output_size=OUTPUT_SIZE,
    )
    assert len(res) == 0 and res.pred_masks.shape == (0, *OUTPUT_SIZE)
    assert set(res.get_fields()) == {"pred_masks", "scores", "pred_classes", "pred_boxes"}


def reference_paste(soft, image_size, output_size, thr=0.5):
    """The references' paste, one mask at a time: x4, crop to the input, resize, threshold."""
    out = []
    for m in soft:
        up = F.interpolate(m[None, None], scale_factor=4.0, mode="bilinear", align_corners=False)
        up = up[:, :, : image_size[0], : image_size[1]]
        out.append(
            F.interpolate(up, size=output_size, mode="bilinear", align_corners=False)[0, 0] > thr
        )
    return torch.stack(out)


@pytest.mark.parametrize(
    "mask_hw, image_size",
    [((50, 77), (197, 305)), ((38, 29), (150, 113)), ((21, 40), (81, 158))],
)
def test_paste_equals_the_references_paste_in_one_pass_or_chunks(mask_hw, image_size, monkeypatch):
    # random soft masks: blobs plus noise, values near the threshold, empty and full masks;
    # non-square images and sizes not multiples of 4 (the last padded rows are cropped)
    from solo_d2.modeling.solo import postprocess

    g = torch.Generator().manual_seed(sum(mask_hw))
    mh, mw = mask_hw
    ys, xs = torch.arange(mh)[:, None].float(), torch.arange(mw)[None, :].float()
    k = 12
    cy, cx = torch.rand(k, 1, 1, generator=g) * mh, torch.rand(k, 1, 1, generator=g) * mw
    r = 1 + torch.rand(k, 1, 1, generator=g) * min(mh, mw) / 2
    soft = torch.sigmoid(3 * (1 - ((ys - cy) ** 2 + (xs - cx) ** 2) / r**2)) + 0.1 * torch.randn(
        k, mh, mw, generator=g
    )
    soft = soft.clamp(0, 1)
    soft[0] = 0.02  # empty
    soft[1] = 0.97  # everything
    soft[2] = 0.5 + 1e-4 * torch.randn(mh, mw, generator=g)  # all near the threshold
    for out_size in (image_size, (image_size[0] * 2 + 3, image_size[1] + 7)):
        ref = reference_paste(soft, image_size, out_size)
        got = postprocess.paste_masks(soft, image_size, out_size, 0.5)
        assert got.dtype == torch.bool and torch.equal(got, ref), out_size
        # the memory bound (chunks of a few masks) never changes the result
        monkeypatch.setattr(
            postprocess, "_PASTE_MAX_ELEMENTS", 3 * 16 * mh * mw + 3 * out_size[0] * out_size[1]
        )
        assert torch.equal(postprocess.paste_masks(soft, image_size, out_size, 0.5), ref), out_size
        monkeypatch.undo()
    assert postprocess.paste_masks(soft[:0], image_size, image_size, 0.5).shape == (0, *image_size)


def test_ranking_through_a_mask_index_equals_ranking_gathered_masks():
    # several candidates (classes) of one cell share its mask; invalid candidates (area filter)
    # come last with score -1, whatever their category score
    from solo_d2.modeling.solo.postprocess import rank_candidates

    g = torch.Generator().manual_seed(3)
    cells = torch.rand(9, MH, MW, generator=g)
    cells[:, :4] = 0.01
    cells[4] = 0.01  # an empty mask: its candidates are invalid
    index = torch.tensor([0, 1, 1, 2, 3, 4, 4, 4, 5, 6, 7, 8, 8])
    scores = torch.rand(13, generator=g) * 0.8 + 0.1
    strides = torch.full((13,), 8.0)
    area, maskness = mask_area_maskness(cells, 0.5)
    a = rank_candidates(area, maskness, index, scores, strides, nms_pre=20)
    b = rank_candidates(area[index], maskness[index], torch.arange(13), scores, strides, nms_pre=20)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    top, ranked, valid = a
    assert valid.tolist() == [True] * 10 + [False] * 3 and set(top[-3:].tolist()) == {5, 6, 7}
    assert (
        torch.equal(ranked[:10], (scores * maskness[index])[top[:10]]) and (ranked[10:] == -1).all()
    )
    assert (ranked[:-1] >= ranked[1:]).all()
    top7 = rank_candidates(area, maskness, index, scores, strides, nms_pre=7)
    assert torch.equal(top7[0], top[:7])


@pytest.mark.parametrize("image_size", [(4 * MH + 1, 72), (60, 4 * MW + 1)])
def test_image_size_beyond_the_padded_masks_is_an_error(image_size):
    masks, labels, scores, strides = two_objects_and_duplicate()
    with pytest.raises(
        ValueError,
        match=rf"image_size \({image_size[0]}, {image_size[1]}\) exceeds the padded size "
        rf"\({4 * MH}, {4 * MW}\) implied by masks of size \({MH}, {MW}\)",
    ):
        solo_postprocess(
            masks, labels, scores, strides, image_size=image_size, output_size=OUTPUT_SIZE
        )
    # the padded size itself is a valid input size (no padding)
    padded = solo_postprocess(
        masks, labels, scores, strides, image_size=(4 * MH, 4 * MW), output_size=OUTPUT_SIZE
    )
    assert len(padded) == 3


@pytest.mark.parametrize("mask_thr", [-0.25, 0.0, 0.5])
def test_area_and_maskness_follow_the_binary_mask_for_any_threshold(mask_thr):
    """Area = pixels with p > mask_thr, maskness = their mean probability (the references'
    ``(soft * binary).sum() / binary.sum()``), also for pixels exactly 0 or at the threshold."""
    g = torch.Generator().manual_seed(4)
    soft = torch.rand(4, 5, 7, generator=g)
    soft[:, 0] = 0.0  # exact zeros: inside for a negative threshold
    soft[:, 1, :3] = 0.5  # exactly at 0.5: outside for mask_thr 0.5
    soft[2] = 0.2
    soft[2, 4, 6] = 0.9  # one pixel above 0.5: maskness 0.9 for mask_thr 0.5
    soft[3] = 0.0  # an all-zero mask: empty unless the threshold is negative
    binary = soft > mask_thr
    area, maskness = mask_area_maskness(soft, mask_thr)
    assert torch.equal(area, binary.sum(dim=(1, 2)).float())
    expected = (soft * binary).sum(dim=(1, 2)) / binary.sum(dim=(1, 2)).clamp(min=1)
    assert torch.allclose(maskness, expected, atol=1e-6, rtol=0)
    assert (area[3] == 35) == (mask_thr < 0) and (maskness[3] == 0)
    if mask_thr == 0.5:
        assert area[2] == 1 and maskness[2] == pytest.approx(0.9)
