"""Inference post-processing shared by SOLO, Decoupled SOLO and SOLOv2.

The caller turns head outputs into candidates (point NMS on the category grid,
score threshold, masks of the selected cells at 1/4 of the padded input); this
module scores them by maskness, runs Matrix NMS (or hard mask NMS) and pastes
only the survivors at the original image resolution, in chunks, so memory stays
bounded by ``max_per_img`` full-resolution masks.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from detectron2.structures import Boxes, Instances
from torch import Tensor

from .matrix_nms import mask_nms, matrix_nms

__all__ = [
    "point_nms", "masks_to_boxes", "mask_area_maskness", "solo_postprocess", "solo_postprocess_cells", "empty_instances",
]


def point_nms(heat: Tensor, kernel: int = 2) -> Tensor:
    """Keep local maxima of category probabilities.

    With ``kernel=2`` (the official setting) a cell ``(i, j)`` survives when it equals
    the max of the 2x2 window covering rows ``i-1..i`` and columns ``j-1..j``. Odd
    kernels use a centered window.

    Args:
        heat: [B, C, S, S] probabilities.
        kernel: window size (2 or an odd number).

    Returns:
        [B, C, S, S], non-peak cells set to 0.
    """
    if kernel == 2:
        hmax = F.max_pool2d(heat, (2, 2), stride=1, padding=1)[:, :, :-1, :-1]
    elif kernel % 2 == 1 and kernel > 0:
        hmax = F.max_pool2d(heat, kernel, stride=1, padding=(kernel - 1) // 2)
    else:
        raise ValueError(f"point_nms: kernel must be 2 or odd, got {kernel}")
    return heat * (hmax == heat).to(heat.dtype)


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Tight boxes around binary masks, like ``BitMasks.get_bounding_boxes``.

    Args:
        masks: [K, H, W] bool masks.

    Returns:
        [K, 4] float boxes ``(x0, y0, x1, y1)``, ``x1``/``y1`` exclusive; empty masks
        give all-zero boxes.
    """
    if masks.shape[0] == 0:
        return torch.zeros(0, 4, dtype=torch.float32, device=masks.device)
    h, w = masks.shape[-2], masks.shape[-1]
    rows = masks.any(dim=2)  # [K, H]
    cols = masks.any(dim=1)  # [K, W]
    # sizes only through tensors, and a finite sentinel for empty masks, so that traced
    # export graphs (dynamic H, W) use this too
    ys = torch.arange(h, device=masks.device).to(torch.float32)
    xs = torch.arange(w, device=masks.device).to(torch.float32)
    big = torch.full((), 1e9, device=masks.device)
    zero = torch.zeros((), device=masks.device)
    x0 = torch.where(cols, xs[None], big).min(dim=1).values
    y0 = torch.where(rows, ys[None], big).min(dim=1).values
    x1 = torch.where(cols, xs[None] + 1, zero).max(dim=1).values
    y1 = torch.where(rows, ys[None] + 1, zero).max(dim=1).values
    boxes = torch.stack([x0, y0, x1, y1], dim=1)
    return boxes * cols.any(dim=1)[:, None].to(boxes.dtype)


def mask_area_maskness(soft_masks: Tensor, mask_thr: float) -> Tuple[Tensor, Tensor]:
    """Pixel count of each binarized mask and its *maskness* (mean probability inside it).

    Args:
        soft_masks: [K, h, w] mask probabilities.
        mask_thr: binarization threshold (``p > mask_thr``).

    Returns:
        ``(area [K], maskness [K])`` float32 (maskness 0 for empty masks).
    """
    flat = soft_masks.to(torch.float32).flatten(1)
    if mask_thr >= 0:
        # one fused pass: p where p > mask_thr else 0, i.e. the references' soft * binary
        # (same values, same sums); its signs count the binary pixels exactly
        inside_values = F.threshold(flat, float(mask_thr), 0.0)
        inside = inside_values.sum(dim=1)
        area = inside_values.sign_().sum(dim=1)
    else:
        binary = flat > mask_thr
        area = binary.sum(dim=1).to(torch.float32)
        inside = torch.where(binary, flat, flat.new_zeros(())).sum(dim=1)
    return area, inside / area.clamp(min=1.0)


def empty_instances(output_size: Tuple[int, int], device) -> Instances:
    """Instances with zero detections but all four prediction fields."""
    h, w = int(output_size[0]), int(output_size[1])
    result = Instances((h, w))
    result.pred_masks = torch.zeros(0, h, w, dtype=torch.bool, device=device)
    result.scores = torch.zeros(0, dtype=torch.float32, device=device)
    result.pred_classes = torch.zeros(0, dtype=torch.long, device=device)
    result.pred_boxes = Boxes(torch.zeros(0, 4, dtype=torch.float32, device=device))
    return result


# Soft values at most this far below the threshold cannot produce a pixel above it after
# bilinear resizing (a convex combination, up to float rounding of ~1e-7), so the region
# around them bounds every foreground pixel of the pasted mask.
_BOX_MARGIN = 1e-3


def _paste_full(soft_masks: Tensor, image_size, output_size, threshold: float, chunk: int) -> Tensor:
    """The references' paste: upsample x4, crop to the input, resize to the output size.

    ``chunk`` masks at a time; the float temporaries stay below ~0.4x the boolean output."""
    k, mh, mw = soft_masks.shape
    img_h, img_w = int(image_size[0]), int(image_size[1])
    out_h, out_w = int(output_size[0]), int(output_size[1])
    out = torch.zeros(k, out_h, out_w, dtype=torch.bool, device=soft_masks.device)
    per_mask = 64 * mh * mw + 5 * out_h * out_w  # bytes: float x4 stage, float + bool output stage
    chunk = max(1, min(chunk, (2 * k * out_h * out_w) // (5 * per_mask)))
    for start in range(0, k, chunk):
        part = soft_masks[start : start + chunk, None].float()
        part = F.interpolate(part, size=(mh * 4, mw * 4), mode="bilinear", align_corners=False)
        part = part[:, :, :img_h, :img_w]
        part = F.interpolate(part, size=(out_h, out_w), mode="bilinear", align_corners=False)
        out[start : start + chunk] = part[:, 0] > threshold
    return out


def _paste_boxes(soft_masks: Tensor, image_size, threshold: float) -> Tuple[Tensor, Tensor]:
    """Paste at the input size (the output size equals it): each mask is upsampled x4 only
    inside the region that can exceed ``threshold``, with the same pixels as :func:`_paste_full`.

    Rows/columns of the 1/4 mask with a value above ``threshold - _BOX_MARGIN`` span
    ``[r0, r1)``; every other output pixel interpolates values below the threshold. An
    x4 bilinear output row ``y`` reads input rows ``floor((y + 0.5) / 4 - 0.5)`` and the next,
    so the candidate rows are ``[4 r0 - 2, 4 r1 + 2)``; upsampling the crop ``[r0 - 1, r1 + 1)``
    gives them exactly (same weights, multiples of 1/8, and the same neighbours), since a crop
    only differs from the full upsampling in its first and last two rows where it does not
    start or end at the mask border. Returns the masks and their tight boxes (as
    :func:`masks_to_boxes`), found inside each region."""
    k, mh, mw = soft_masks.shape
    img_h, img_w = int(image_size[0]), int(image_size[1])
    out = torch.zeros(k, img_h, img_w, dtype=torch.bool, device=soft_masks.device)
    boxes = torch.zeros(k, 4, dtype=torch.float32, device=soft_masks.device)
    near = soft_masks > threshold - _BOX_MARGIN
    rows, cols = near.any(dim=2), near.any(dim=1)  # [K, mh], [K, mw]
    has = rows.any(dim=1)
    r_idx = torch.arange(mh, device=soft_masks.device)
    c_idx = torch.arange(mw, device=soft_masks.device)
    r0 = torch.where(rows, r_idx, mh).min(dim=1).values.tolist()
    r1 = (torch.where(rows, r_idx, -1).max(dim=1).values + 1).tolist()
    c0 = torch.where(cols, c_idx, mw).min(dim=1).values.tolist()
    c1 = (torch.where(cols, c_idx, -1).max(dim=1).values + 1).tolist()
    for i in torch.nonzero(has).flatten().tolist():
        y0, y1 = max(4 * r0[i] - 2, 0), min(4 * r1[i] + 2, img_h)
        x0, x1 = max(4 * c0[i] - 2, 0), min(4 * c1[i] + 2, img_w)
        if y0 >= y1 or x0 >= x1:
            continue
        a0, a1 = max(r0[i] - 1, 0), min(r1[i] + 1, mh)
        b0, b1 = max(c0[i] - 1, 0), min(c1[i] + 1, mw)
        # keep the crop's output above 128 rows + columns: PyTorch resizes smaller outputs
        # with another (separable) CPU kernel, whose rounding may differ
        while 4 * (a1 - a0 + b1 - b0) <= 128 and (a0 > 0 or b0 > 0 or a1 < mh or b1 < mw):
            a0, a1, b0, b1 = max(a0 - 1, 0), min(a1 + 1, mh), max(b0 - 1, 0), min(b1 + 1, mw)
        crop = soft_masks[i, a0:a1, b0:b1][None, None].float()
        up = F.interpolate(crop, size=(4 * (a1 - a0), 4 * (b1 - b0)), mode="bilinear", align_corners=False)[0, 0]
        region = up[y0 - 4 * a0 : y1 - 4 * a0, x0 - 4 * b0 : x1 - 4 * b0] > threshold
        out[i, y0:y1, x0:x1] = region
        box = masks_to_boxes(region[None])[0]
        if box[2] > 0:  # non-empty
            boxes[i] = box + torch.tensor([x0, y0, x0, y0], dtype=box.dtype, device=box.device)
    return out, boxes


def _paste(soft_masks: Tensor, image_size, output_size, threshold: float, chunk: int) -> Tuple[Tensor, Tensor]:
    """[K, h, w] soft masks at 1/4 padded size -> ([K, H, W] bool at the output size, [K, 4] boxes).

    Pixel for pixel what the references compute (``F.interpolate`` x4, crop to the input,
    ``F.interpolate`` to the output size, ``> threshold``). On the CPU, when the output size
    is the input size the second resize is the identity and each mask is upsampled only around
    its foreground (:func:`_paste_boxes`); otherwise, and on GPUs (where the per-mask loop
    would cost more kernel launches than it saves work), in chunks sized so that the float
    temporaries stay below ~0.4x the boolean result. The boxes are :func:`masks_to_boxes`'s."""
    k, mh, mw = soft_masks.shape
    same_size = tuple(int(v) for v in output_size) == tuple(int(v) for v in image_size)
    if k and soft_masks.device.type == "cpu" and same_size and 4 * (mh + mw) > 128:
        return _paste_boxes(soft_masks, image_size, threshold)
    masks = _paste_full(soft_masks, image_size, output_size, threshold, chunk)
    return masks, masks_to_boxes(masks)


def solo_postprocess(
    soft_masks: Tensor,
    labels: Tensor,
    scores: Tensor,
    strides: Tensor,
    *,
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
    **options,
) -> Instances:
    """Turn one image's mask candidates into final detections.

    Args:
        soft_masks: [K, h, w] mask probabilities at 1/4 of the padded input size.
        labels: [K] long classes.
        scores: [K] category scores (already score-thresholded by the caller).
        strides: [K] level stride of each candidate (masks with area <= stride are dropped).
        image_size: ``(h, w)`` of the unpadded network input.
        output_size: ``(H, W)`` of the original image (the output resolution).
        mask_thr: binarization threshold (at 1/4 and at the output resolution).
        update_thr: minimum score after NMS.
        max_per_img: maximum number of detections.
        nms_pre: number of candidates entering NMS.
        nms_method: ``"matrix"`` (Matrix NMS) or ``"mask"`` (hard mask NMS).
        kernel, sigma: Matrix NMS kernel.
        nms_iou_thr: IoU threshold of hard mask NMS.
        paste_chunk: at most this many masks are resized at once at the output size.

    The options (``mask_thr`` .. ``paste_chunk``) and their defaults are those of
    :func:`solo_postprocess_cells`, which this calls with one mask per candidate.

    Returns:
        ``Instances(output_size)`` with ``pred_masks`` [K', H, W] bool, ``scores`` [K'],
        ``pred_classes`` [K'] and ``pred_boxes`` (from the masks), sorted by score.
    """
    index = torch.arange(soft_masks.shape[0], device=soft_masks.device)
    return solo_postprocess_cells(
        soft_masks, index, labels, scores, strides, image_size=image_size, output_size=output_size, **options
    )


def solo_postprocess_cells(
    cell_masks: Tensor,
    mask_index: Tensor,
    labels: Tensor,
    scores: Tensor,
    strides: Tensor,
    *,
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
    mask_thr: float = 0.5,
    update_thr: float = 0.05,
    max_per_img: int = 100,
    nms_pre: int = 500,
    nms_method: str = "matrix",
    kernel: str = "gaussian",
    sigma: float = 2.0,
    nms_iou_thr: float = 0.5,
    paste_chunk: int = 32,
) -> Instances:
    """:func:`solo_postprocess` where candidate ``i`` has the mask ``cell_masks[mask_index[i]]``.

    Several candidates (classes) of one grid cell share its mask: the masks, their areas and
    maskness are computed once per cell, and only the ``nms_pre`` best candidates' binary
    masks (per class block, see :func:`~.matrix_nms.same_class_iou_matrix`) and the kept
    detections' soft masks are gathered. The result equals :func:`solo_postprocess` on
    ``cell_masks[mask_index]``.

    Args:
        cell_masks: [U, h, w] mask probabilities at 1/4 of the padded input size.
        mask_index: [K] long, row of ``cell_masks`` of each candidate.
        labels, scores, strides: [K] per candidate; other arguments as :func:`solo_postprocess`.
    """
    if nms_method not in ("matrix", "mask"):
        raise ValueError(f"solo_postprocess: nms_method must be 'matrix' or 'mask', got {nms_method!r}")
    k = mask_index.shape[0]
    if not (labels.shape[0] == scores.shape[0] == strides.shape[0] == k):
        raise ValueError(
            f"solo_postprocess: {k} masks, {labels.shape[0]} labels, {scores.shape[0]} scores, "
            f"{strides.shape[0]} strides"
        )
    mh, mw = cell_masks.shape[-2:]
    if image_size[0] > 4 * mh or image_size[1] > 4 * mw:
        raise ValueError(
            f"solo_postprocess: image_size {tuple(image_size)} exceeds the padded size "
            f"{(4 * mh, 4 * mw)} implied by masks of size {(mh, mw)}"
        )
    device = cell_masks.device
    if k == 0:
        return empty_instances(output_size, device)

    cell_area, cell_maskness = mask_area_maskness(cell_masks, mask_thr)
    areas = cell_area[mask_index]
    cand = torch.nonzero(areas > strides.to(areas.dtype)).flatten()  # area filter, order kept
    if cand.shape[0] == 0:
        return empty_instances(output_size, device)
    scores = scores[cand].float() * cell_maskness[mask_index[cand]]
    order = torch.argsort(scores, descending=True)[:nms_pre]
    cand, scores = cand[order], scores[order]
    labels, cells, areas = labels[cand], mask_index[cand], areas[cand]

    binary = cell_masks[cells] > mask_thr
    if nms_method == "matrix":
        scores = matrix_nms(binary, labels, scores, kernel=kernel, sigma=sigma, mask_area=areas)
        keep = scores >= update_thr
    else:
        keep = torch.zeros_like(scores, dtype=torch.bool)
        keep[mask_nms(binary, labels, scores, iou_threshold=nms_iou_thr)] = True
        keep &= scores >= update_thr
    del binary
    cells, labels, scores = cells[keep], labels[keep], scores[keep]
    if scores.shape[0] == 0:
        return empty_instances(output_size, device)
    order = torch.argsort(scores, descending=True)[:max_per_img]
    cells, labels, scores = cells[order], labels[order], scores[order]

    masks, boxes = _paste(cell_masks[cells], image_size, output_size, mask_thr, max(1, int(paste_chunk)))
    result = Instances((int(output_size[0]), int(output_size[1])))
    result.pred_masks = masks
    result.scores = scores
    result.pred_classes = labels.long()
    result.pred_boxes = Boxes(boxes)
    return result
