"""Matrix NMS (SOLOv2, section 4.2) and a hard mask NMS alternative.

Matrix NMS decays every score in one parallel pass: for candidates sorted by
score, with ``IoU`` the same-class upper-triangular IoU matrix,

    compensate_i = max_{k < i} IoU(k, i)
    decay_j      = min_i f(IoU(i, j)) / f(compensate_i)
    score_j     *= decay_j

where ``f(x) = exp(-sigma * x^2)`` (gaussian) or ``1 - x`` (linear). The minimum
runs over all rows (as in the official code); rows that do not suppress ``j``
contribute ``f(0) / f(compensate_i) >= 1`` and row 0 contributes exactly ``1``,
so ``decay_j <= 1``.
"""
from typing import List, Optional

import torch
from torch import Tensor

__all__ = ["mask_iou_matrix", "same_class_iou_matrix", "matrix_nms", "matrix_nms_decay", "mask_nms"]


def mask_iou_matrix(masks: Tensor, mask_area: Optional[Tensor] = None) -> Tensor:
    """Pairwise IoU of binary masks.

    Args:
        masks: [N, H, W] bool or float binary masks.
        mask_area: optional [N] precomputed areas (pixel counts).

    Returns:
        [N, N] float IoU matrix (0 where the union is empty).
    """
    n = masks.shape[0]
    flat = masks.reshape(n, -1).float()
    inter = flat @ flat.t()  # [N, N]
    area = flat.sum(dim=1) if mask_area is None else mask_area.to(flat.dtype)
    union = area[:, None] + area[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-6), torch.zeros_like(inter))


# Classes are grouped into blocks of at least this many masks (a class is never split), so
# that many small classes cost a few matmuls rather than one call each.
_MIN_BLOCK = 48


def _class_blocks(labels: Tensor) -> List[int]:
    """Sizes of blocks of consecutive classes (in ascending order), each of at least
    ``_MIN_BLOCK`` masks except perhaps the last; a class is never split."""
    sizes, size = [], 0
    for k in torch.unique(labels, return_counts=True)[1].tolist():
        size += k
        if size >= _MIN_BLOCK:
            sizes.append(size)
            size = 0
    return sizes + [size] if size else sizes


def same_class_iou_matrix(masks: Tensor, labels: Tensor, mask_area: Optional[Tensor] = None) -> Tensor:
    """Pairwise IoU of binary masks for pairs of the same class, 0 for pairs of different classes.

    Only same-class pairs matter to Matrix NMS and mask NMS, so when the classes split the
    masks into blocks the intersections are computed per block of classes (about
    ``sum n_block^2`` instead of ``n^2`` dot products) on the CPU; on GPUs one matmul over all
    pairs is faster. The IoU of a same-class pair is bit-identical to :func:`mask_iou_matrix`'s:
    intersections of 0/1 masks are exact integers either way.

    Args:
        masks: [N, H, W] bool or float binary masks.
        labels: [N] classes.
        mask_area: optional [N] precomputed areas (pixel counts).

    Returns:
        [N, N] float IoU matrix, zero across classes (the diagonal is unspecified for classes
        with a single mask; both NMS variants ignore it).
    """
    n = masks.shape[0]
    blocks = _class_blocks(labels) if n and masks.device.type == "cpu" else None
    if blocks is None or 2 * sum(k * k for k in blocks) > n * n:  # GPUs, or little to gain: one matmul
        iou = mask_iou_matrix(masks, mask_area)
        return iou * (labels[:, None] == labels[None, :]).to(iou.dtype)
    flat = masks.reshape(n, -1)
    dtype = flat.dtype if flat.is_floating_point() else torch.float32
    area = flat.sum(dim=1, dtype=dtype) if mask_area is None else mask_area.to(dtype)
    iou = torch.zeros((n, n), dtype=dtype, device=masks.device)
    order = torch.argsort(labels, stable=True)  # masks grouped by class
    start = 0
    for k in blocks:
        idx = order[start : start + k]
        start += k
        block = flat[idx].to(dtype)  # (index_select is much slower here on CPU)
        inter = block @ block.t()
        a = area[idx]
        union = a[:, None] + a[None, :] - inter
        block_iou = torch.where(union > 0, inter / union.clamp(min=1e-6), torch.zeros_like(inter))
        lab = labels[idx]
        iou[idx[:, None], idx[None, :]] = block_iou * (lab[:, None] == lab[None, :]).to(dtype)
    return iou


def matrix_nms(
    masks: Tensor,
    labels: Tensor,
    scores: Tensor,
    *,
    kernel: str = "gaussian",
    sigma: float = 2.0,
    mask_area: Optional[Tensor] = None,
) -> Tensor:
    """Decay scores with Matrix NMS.

    Args:
        masks: [N, H, W] bool / float binary masks, sorted by ``scores`` descending.
        labels: [N] class of each mask; only same-class pairs suppress each other.
        scores: [N] scores sorted descending.
        kernel: ``"gaussian"`` or ``"linear"``.
        sigma: gaussian kernel parameter.
        mask_area: optional [N] areas of the masks.

    Returns:
        [N] decayed scores (same order as the input).
    """
    if kernel not in ("gaussian", "linear"):
        raise ValueError(f"matrix_nms: kernel must be 'gaussian' or 'linear', got {kernel!r}")
    n = scores.shape[0]
    if masks.shape[0] != n or labels.shape[0] != n:
        raise ValueError(
            f"matrix_nms: {masks.shape[0]} masks, {labels.shape[0]} labels, {n} scores"
        )
    if n == 0:
        return scores.new_zeros((0,))
    # [N, N], row i suppresses column j > i of its class
    decay_iou = same_class_iou_matrix(masks, labels, mask_area).triu(diagonal=1)
    return scores * matrix_nms_decay(decay_iou, kernel, sigma).to(scores.dtype)


def matrix_nms_decay(decay_iou: Tensor, kernel: str, sigma: float) -> Tensor:
    """Matrix NMS decay factors from ``decay_iou`` [N, N] (IoU of row i, the higher-scored
    mask, with column j > i of its class; 0 elsewhere) -> [N]. No data-dependent branch, so
    the export graphs use it too."""
    compensate = decay_iou.max(dim=0).values  # [N]: max IoU with a higher-scored mask
    comp = compensate[:, None].expand_as(decay_iou)  # row i holds compensate_i
    if kernel == "gaussian":
        ratio = torch.exp(-sigma * (decay_iou**2 - comp**2))
    else:
        ratio = (1.0 - decay_iou) / (1.0 - comp).clamp(min=1e-6)
    return ratio.min(dim=0).values


def mask_nms(masks: Tensor, labels: Tensor, scores: Tensor, *, iou_threshold: float = 0.5) -> Tensor:
    """Sequential hard NMS on masks (same-class suppression).

    Equivalent to the greedy loop "keep the best remaining mask, drop same-class masks
    with IoU > iou_threshold", computed as a fixed point of a vectorized update (the
    first ``t`` decisions are final after ``t`` iterations; usually few are needed).

    Args:
        masks: [N, H, W] binary masks sorted by ``scores`` descending.
        labels: [N] classes.
        scores: [N] scores sorted descending (only used for sizes/device).
        iou_threshold: suppression threshold.

    Returns:
        [K] long indices of the kept masks, ascending (= descending score).
    """
    n = scores.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    iou = same_class_iou_matrix(masks, labels).triu(diagonal=1)
    suppresses = iou > iou_threshold  # [N, N], upper triangular, same class only
    keep = torch.ones(n, dtype=torch.bool, device=scores.device)
    for _ in range(n):
        new_keep = ~(suppresses & keep[:, None]).any(dim=0)
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return torch.nonzero(keep).flatten()
