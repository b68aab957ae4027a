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

from typing import Optional

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
    return inter / union.clamp(min=1e-6)  # an empty union has inter 0: IoU 0


def same_class_iou_matrix(
    masks: Tensor, labels: Tensor, mask_area: Optional[Tensor] = None
) -> Tensor:
    """:func:`mask_iou_matrix` with pairs of different classes set to 0 (one IoU matmul over
    all pairs, as the references compute it).

    Args:
        masks: [N, H, W] bool or float binary masks.
        labels: [N] classes.
        mask_area: optional [N] precomputed areas (pixel counts).

    Returns:
        [N, N] float IoU matrix, zero across classes.
    """
    iou = mask_iou_matrix(masks, mask_area)
    return iou * (labels[:, None] == labels[None, :])


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


def mask_nms(
    masks: Tensor, labels: Tensor, scores: Tensor, *, iou_threshold: float = 0.5
) -> Tensor:
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
