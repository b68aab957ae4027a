"""Inference post-processing shared by SOLO, Decoupled SOLO and SOLOv2.

The caller turns head outputs into candidates (point NMS on the category grid, score
threshold, soft masks of the candidate cells at 1/4 of the padded input); this module ranks
them by category score x maskness (:func:`rank_candidates`), runs Matrix NMS (or hard mask
NMS) on the top ``nms_pre`` and pastes the top ``max_per_img`` at the output resolution
(:func:`select_and_paste`), as the references do.

Every step is a fixed sequence of tensor ops for any number of candidates: candidates that
the references drop (mask not larger than the level's stride) are ranked last with score -1
instead of being removed, so they never decay a valid one in Matrix NMS, and the number of
detections is read back once, at the end. Only :func:`paste_masks` may loop, over chunks,
when the float temporaries of all masks at once would pass ``_PASTE_MAX_ELEMENTS``.
"""

from typing import Tuple

import torch
import torch.nn.functional as F
from detectron2.structures import Boxes, Instances
from torch import Tensor

from .matrix_nms import mask_nms, matrix_nms

__all__ = [
    "point_nms",
    "masks_to_boxes",
    "mask_area_maskness",
    "rank_candidates",
    "select_and_paste",
    "paste_masks",
    "solo_postprocess",
    "empty_instances",
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
    return heat * (hmax == heat)


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
    # with positions counted from 1 on both sides, the farthest filled position is a max (0 for
    # an empty mask); sizes only through tensors, so that traced export graphs use this too
    x0, x1 = _first_and_end(cols, w)
    y0, y1 = _first_and_end(rows, h)
    return torch.stack([x0, y0, x1, y1], dim=1)


def _first_and_end(filled: Tensor, size: int) -> Tuple[Tensor, Tensor]:
    """First filled position and last + 1 of each row of ``filled`` [K, L] (float32; 0, 0 for
    an empty row)."""
    pos = torch.arange(1, size + 1, dtype=torch.float32, device=filled.device)  # 1 .. L
    end = (filled * pos).amax(dim=1)  # last + 1
    first = torch.remainder(size - (filled * pos.flip(0)).amax(dim=1), size)  # L - (L - first)
    return first, end


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


# Float elements of the two resize stages of :func:`paste_masks` at once (1 GiB of float32):
# 100 masks at 800x1216 take 0.2 Gi elements, one pass; a 4000x6000 output is pasted in chunks.
_PASTE_MAX_ELEMENTS = 1 << 28


def paste_masks(soft_masks: Tensor, image_size, output_size, threshold: float) -> Tensor:
    """The references' paste: upsample x4 (bilinear), crop to the input, resize to the output
    size (skipped when it equals the input size: a bilinear resize to the same size is the
    identity), ``> threshold``.

    Args:
        soft_masks: [K, h, w] probabilities at 1/4 of the padded input.
        image_size: ``(h_in, w_in)`` of the unpadded input, at most ``(4 h, 4 w)``.
        output_size: ``(H, W)`` of the result.

    Returns:
        [K, H, W] bool. All masks in one pass unless the float temporaries would exceed
        ``_PASTE_MAX_ELEMENTS``; then in chunks (same pixels).
    """
    k, mh, mw = soft_masks.shape
    img_h, img_w = int(image_size[0]), int(image_size[1])
    out_h, out_w = int(output_size[0]), int(output_size[1])
    same_size = (out_h, out_w) == (img_h, img_w)
    per_mask = 16 * mh * mw + (0 if same_size else out_h * out_w)
    chunk = max(1, _PASTE_MAX_ELEMENTS // max(per_mask, 1))
    out = torch.empty((k, out_h, out_w), dtype=torch.bool, device=soft_masks.device)
    for start in range(0, k, chunk):
        x = soft_masks[start : start + chunk, None].float()
        x = F.interpolate(x, size=(4 * mh, 4 * mw), mode="bilinear", align_corners=False)[
            :, :, :img_h, :img_w
        ]
        if not same_size:
            x = F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False)
        torch.gt(x[:, 0], threshold, out=out[start : start + chunk])  # each chunk in place
    return out


def rank_candidates(
    cell_area: Tensor,
    cell_maskness: Tensor,
    mask_index: Tensor,
    scores: Tensor,
    strides: Tensor,
    nms_pre: int,
) -> Tuple[Tensor, Tensor, Tensor]:
    """The top ``nms_pre`` candidates by category score x maskness, among those whose mask is
    larger than their level's stride (the references' area filter).

    Args:
        cell_area, cell_maskness: [U] of each distinct mask (:func:`mask_area_maskness`).
        mask_index: [K] long, the mask of each candidate.
        scores: [K] category scores; strides: [K] the stride of each candidate's level.

    Returns:
        ``(top [N], ranked [N], valid [N])``, ``N = min(K, nms_pre)``: candidate indices by
        descending ranked score, their score x maskness, and whether they pass the area
        filter. Invalid candidates have score -1 and come last (a stable sort, so equal
        scores keep the candidates' order).
    """
    area = cell_area[mask_index]
    valid = area > strides.to(area.dtype)
    ranked = torch.where(valid, scores.float() * cell_maskness[mask_index], -1.0)
    ranked, top = torch.sort(ranked, descending=True, stable=True)
    return top[:nms_pre], ranked[:nms_pre], valid[top[:nms_pre]]


def select_and_paste(
    soft_masks: Tensor,
    labels: Tensor,
    scores: Tensor,
    valid: Tensor,
    areas: Tensor,
    *,
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
    mask_thr: float = 0.5,
    update_thr: float = 0.05,
    max_per_img: int = 100,
    nms_method: str = "matrix",
    kernel: str = "gaussian",
    sigma: float = 2.0,
    nms_iou_thr: float = 0.5,
) -> Instances:
    """NMS of ranked candidates, the top ``max_per_img`` above ``update_thr``, pasted.

    Args:
        soft_masks: [N, h, w] probabilities at 1/4 of the padded input, by descending score.
        labels, scores, valid, areas: [N] class, ranked score (:func:`rank_candidates`),
            area filter and binary-mask area of each candidate; invalid ones come last.
        image_size, output_size, mask_thr, update_thr, max_per_img, nms_method, kernel,
            sigma, nms_iou_thr: see :func:`solo_postprocess`.

    Returns:
        ``Instances(output_size)`` sorted by score. The only host read-back is the number of
        detections.
    """
    if nms_method not in ("matrix", "mask"):
        raise ValueError(
            f"solo_postprocess: nms_method must be 'matrix' or 'mask', got {nms_method!r}"
        )
    binary = soft_masks > mask_thr
    if nms_method == "matrix":
        scores = matrix_nms(binary, labels, scores, kernel=kernel, sigma=sigma, mask_area=areas)
        keep = valid & (scores >= update_thr)
    else:
        kept = torch.zeros_like(valid)
        kept[mask_nms(binary, labels, scores, iou_threshold=nms_iou_thr)] = True
        keep = valid & kept & (scores >= update_thr)
    final, order = torch.sort(torch.where(keep, scores, -1.0), descending=True, stable=True)
    num = min(int(keep.sum()), max_per_img)  # the one read-back: the number of detections
    order, final = order[:num], final[:num]
    result = Instances((int(output_size[0]), int(output_size[1])))
    result.pred_masks = paste_masks(soft_masks[order], image_size, output_size, mask_thr)
    result.scores = final
    result.pred_classes = labels[order].long()
    result.pred_boxes = Boxes(masks_to_boxes(result.pred_masks))
    return result


def solo_postprocess(
    soft_masks: Tensor,
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

    Returns:
        ``Instances(output_size)`` with ``pred_masks`` [K', H, W] bool, ``scores`` [K'],
        ``pred_classes`` [K'] and ``pred_boxes`` (from the masks), sorted by score.
    """
    k = soft_masks.shape[0]
    if not (labels.shape[0] == scores.shape[0] == strides.shape[0] == k):
        raise ValueError(
            f"solo_postprocess: {k} masks, {labels.shape[0]} labels, {scores.shape[0]} scores, "
            f"{strides.shape[0]} strides"
        )
    check_image_size(soft_masks.shape[-2:], image_size)
    area, maskness = mask_area_maskness(soft_masks, mask_thr)
    top, ranked, valid = rank_candidates(
        area, maskness, torch.arange(k, device=soft_masks.device), scores, strides, nms_pre
    )
    return select_and_paste(
        soft_masks[top],
        labels[top],
        ranked,
        valid,
        area[top],
        image_size=image_size,
        output_size=output_size,
        mask_thr=mask_thr,
        update_thr=update_thr,
        max_per_img=max_per_img,
        nms_method=nms_method,
        kernel=kernel,
        sigma=sigma,
        nms_iou_thr=nms_iou_thr,
    )


def check_image_size(mask_hw, image_size) -> None:
    """Raise unless ``image_size`` fits in the padded size ``4 x mask_hw``."""
    mh, mw = int(mask_hw[0]), int(mask_hw[1])
    if image_size[0] > 4 * mh or image_size[1] > 4 * mw:
        raise ValueError(
            f"solo_postprocess: image_size {tuple(image_size)} exceeds the padded size "
            f"{(4 * mh, 4 * mw)} implied by masks of size {(mh, mw)}"
        )
