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

__all__ = ["point_nms", "masks_to_boxes", "mask_area_maskness", "solo_postprocess", "empty_instances"]


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
    k, h, w = masks.shape
    boxes = torch.zeros(k, 4, dtype=torch.float32, device=masks.device)
    if k == 0:
        return boxes
    rows = masks.any(dim=2)  # [K, H]
    cols = masks.any(dim=1)  # [K, W]
    ys = torch.arange(h, device=masks.device, dtype=torch.float32)
    xs = torch.arange(w, device=masks.device, dtype=torch.float32)
    big = torch.tensor(float(max(h, w)), device=masks.device)
    zero = torch.tensor(0.0, device=masks.device)
    boxes[:, 0] = torch.where(cols, xs, big).min(dim=1).values
    boxes[:, 1] = torch.where(rows, ys, big).min(dim=1).values
    boxes[:, 2] = torch.where(cols, xs + 1, zero).max(dim=1).values
    boxes[:, 3] = torch.where(rows, ys + 1, zero).max(dim=1).values
    nonempty = cols.any(dim=1)
    return boxes * nonempty[:, None].to(boxes.dtype)


def mask_area_maskness(soft_masks: Tensor, mask_thr: float) -> Tuple[Tensor, Tensor]:
    """Pixel count of each binarized mask and its *maskness* (mean probability inside it).

    Args:
        soft_masks: [K, h, w] mask probabilities.
        mask_thr: binarization threshold (``p > mask_thr``).

    Returns:
        ``(area [K], maskness [K])`` float32 (maskness 0 for empty masks).
    """
    binary = soft_masks > mask_thr
    area = binary.flatten(1).sum(dim=1).to(torch.float32)
    inside = (soft_masks.to(torch.float32) * binary).flatten(1).sum(dim=1)
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


def _paste(soft_masks: Tensor, image_size, output_size, threshold: float, chunk: int) -> Tensor:
    """[K, h, w] soft masks at 1/4 padded size -> [K, H, W] bool at the output size."""
    k, mh, mw = soft_masks.shape
    img_h, img_w = int(image_size[0]), int(image_size[1])
    out_h, out_w = int(output_size[0]), int(output_size[1])
    out = torch.zeros(k, out_h, out_w, dtype=torch.bool, device=soft_masks.device)
    for start in range(0, k, chunk):
        part = soft_masks[start : start + chunk, None].float()
        part = F.interpolate(part, size=(mh * 4, mw * 4), mode="bilinear", align_corners=False)
        part = part[:, :, :img_h, :img_w]
        part = F.interpolate(part, size=(out_h, out_w), mode="bilinear", align_corners=False)
        out[start : start + chunk] = part[:, 0] > threshold
    return out


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
    paste_chunk: int = 32,
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
        paste_chunk: number of masks upsampled at once.

    Returns:
        ``Instances(output_size)`` with ``pred_masks`` [K', H, W] bool, ``scores`` [K'],
        ``pred_classes`` [K'] and ``pred_boxes`` (from the masks), sorted by score.
    """
    if nms_method not in ("matrix", "mask"):
        raise ValueError(f"solo_postprocess: nms_method must be 'matrix' or 'mask', got {nms_method!r}")
    k = soft_masks.shape[0]
    if not (labels.shape[0] == scores.shape[0] == strides.shape[0] == k):
        raise ValueError(
            f"solo_postprocess: {k} masks, {labels.shape[0]} labels, {scores.shape[0]} scores, "
            f"{strides.shape[0]} strides"
        )
    mh, mw = soft_masks.shape[-2:]
    if image_size[0] > 4 * mh or image_size[1] > 4 * mw:
        raise ValueError(
            f"solo_postprocess: image_size {tuple(image_size)} exceeds the padded size "
            f"{(4 * mh, 4 * mw)} implied by masks of size {(mh, mw)}"
        )
    device = soft_masks.device
    if k == 0:
        return empty_instances(output_size, device)

    binary = soft_masks > mask_thr
    areas = binary.flatten(1).sum(dim=1).float()  # [K]
    keep = areas > strides.to(areas.dtype)
    soft_masks, binary, areas = soft_masks[keep], binary[keep], areas[keep]
    labels, scores = labels[keep], scores[keep]
    if soft_masks.shape[0] == 0:
        return empty_instances(output_size, device)

    maskness = (soft_masks.float() * binary).flatten(1).sum(dim=1) / areas
    scores = scores.float() * maskness
    order = torch.argsort(scores, descending=True)[:nms_pre]
    soft_masks, binary, areas = soft_masks[order], binary[order], areas[order]
    labels, scores = labels[order], scores[order]

    if nms_method == "matrix":
        scores = matrix_nms(binary, labels, scores, kernel=kernel, sigma=sigma, mask_area=areas)
        keep = scores >= update_thr
    else:
        keep = torch.zeros_like(scores, dtype=torch.bool)
        keep[mask_nms(binary, labels, scores, iou_threshold=nms_iou_thr)] = True
        keep &= scores >= update_thr
    soft_masks, labels, scores = soft_masks[keep], labels[keep], scores[keep]
    if scores.shape[0] == 0:
        return empty_instances(output_size, device)
    order = torch.argsort(scores, descending=True)[:max_per_img]
    soft_masks, labels, scores = soft_masks[order], labels[order], scores[order]

    masks = _paste(soft_masks, image_size, output_size, mask_thr, max(1, int(paste_chunk)))
    result = Instances((int(output_size[0]), int(output_size[1])))
    result.pred_masks = masks
    result.scores = scores
    result.pred_classes = labels.long()
    result.pred_boxes = Boxes(masks_to_boxes(masks))
    return result
