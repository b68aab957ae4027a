"""Losses of the SOLO family: sigmoid focal loss on the category grid, dice loss on masks.

As in every public implementation, the focal loss is summed over all cells and divided by
``N + 1`` (``N`` = positive cells). The dice loss is summed over the mask targets and divided by
their number (``dice_normalizer="targets"``: the official SOLO code and AdelaiDet, a mean over
the targets) or by ``N`` (``"cells"``: mmdetection 3.x). The two agree for SOLO and Decoupled
SOLO, which keep one target per positive cell, and differ for SOLOv2 when a cell has two
claimants. The counts are averaged over workers before use, so the loss of N workers equals
that of one process on the whole batch (the references normalize per GPU; the two agree on one
GPU and whenever workers see equal counts).
"""

from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from detectron2.utils import comm
from torch import Tensor

from ...utils.comm import reduce_mean
from .targets import LevelTargets

__all__ = [
    "dice_loss",
    "indexed_dice_loss",
    "sigmoid_focal_loss_sum",
    "solo_loss",
    "DICE_NORMALIZERS",
]

DICE_NORMALIZERS = ("targets", "cells")


def _at_least_float32(x: Tensor) -> Tensor:
    """``x`` as float32, or float64 when it is float64 (half precision is promoted)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def dice_loss(probs: Tensor, targets: Tensor) -> Tensor:
    """Dice loss per mask.

    ``1 - 2 * sum(p * q) / (sum(p^2) + sum(q^2) + 2e-3)``, computed in float32 (float64 for
    float64 ``probs``).

    Args:
        probs: [P, h, w] probabilities.
        targets: [P, h, w] binary targets.

    Returns:
        [P] loss of each mask.
    """
    if probs.shape != targets.shape:
        raise ValueError(f"dice_loss: probs {tuple(probs.shape)} vs targets {tuple(targets.shape)}")
    p = _at_least_float32(probs).flatten(1)
    q = targets.to(p.dtype).flatten(1)
    inter = (p * q).sum(dim=1)
    denom = (p * p).sum(dim=1) + 0.001 + (q * q).sum(dim=1) + 0.001
    return 1.0 - 2.0 * inter / denom


def indexed_dice_loss(probs: Tensor, masks: Tensor, rows: Tensor) -> Tensor:
    """:func:`dice_loss` of ``probs`` against ``masks[rows]``, without building float targets.

    With binary targets ``sum(p * q)`` is the sum of ``p`` where ``q`` is set and ``sum(q^2)``
    is the mask area, so the targets are read as bool through the index (one byte per pixel
    instead of a float32 copy per target); the result equals :func:`dice_loss` on
    ``masks[rows].float()`` bit for bit.

    Args:
        probs: [P, h, w] probabilities.
        masks: [R, h, w] bool (or 0/1) masks.
        rows: [P] long, the mask of each probability map.

    Returns:
        [P] loss of each mask.
    """
    if (
        rows.dim() != 1
        or probs.dim() != 3
        or rows.shape[0] != probs.shape[0]
        or masks.shape[-2:] != probs.shape[-2:]
    ):
        raise ValueError(
            f"indexed_dice_loss: probs {tuple(probs.shape)}, masks {tuple(masks.shape)} and rows "
            f"{tuple(rows.shape)} do not match (need [P, h, w], [R, h, w], [P])"
        )
    masks = masks.flatten(1)
    if masks.dtype != torch.bool:
        masks = masks != 0
    p = _at_least_float32(probs).flatten(1)
    q = masks[rows]  # [P, h*w] bool
    inter = torch.where(q, p, p.new_zeros(())).sum(dim=1)
    area = masks.sum(dim=1, dtype=p.dtype)[rows]  # exact: sum(q * q) of a 0/1 mask
    denom = (p * p).sum(dim=1) + 0.001 + area + 0.001
    return 1.0 - 2.0 * inter / denom


def sigmoid_focal_loss_sum(
    logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Summed sigmoid focal loss, the operations of fvcore's ``sigmoid_focal_loss`` (which
    AdelaiDet uses) in the same order, at the precision of ``logits`` (at least float32; fvcore
    always computes in float32).

    Args:
        logits, targets: [M, C] logits and 0/1 targets.

    Returns:
        scalar, the loss summed over all elements.
    """
    logits = _at_least_float32(logits)
    targets = targets.to(logits.dtype)
    p = torch.sigmoid(logits)
    ce_loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.sum()


def _flatten_cate(cate_logits: Sequence[Tensor], targets: Sequence[LevelTargets], num_classes: int):
    """Concatenate all levels: logits [M, C] and one-hot float targets [M, C] (float32, or
    float64 for float64 logits), M = sum B*S*S."""
    logits, onehot = [], []
    for lvl, (logit, tgt) in enumerate(zip(cate_logits, targets)):
        b, c, s1, s2 = logit.shape
        if c != num_classes:
            raise ValueError(
                f"solo_loss: level {lvl} has {c} category channels, num_classes={num_classes}"
            )
        if tuple(tgt.labels.shape) != (b, s1, s2):
            raise ValueError(
                f"solo_loss: level {lvl} logits {tuple(logit.shape)} do not match labels "
                f"{tuple(tgt.labels.shape)}"
            )
        logits.append(logit.permute(0, 2, 3, 1).reshape(-1, c))
        # background (= num_classes) becomes an all-zero row (a comparison: F.one_hot checks the
        # label range with a read-back on the CPU)
        onehot.append(tgt.labels.reshape(-1, 1) == torch.arange(num_classes, device=logit.device))
    logits = torch.cat(logits)
    return logits, torch.cat(onehot).to(torch.promote_types(logits.dtype, torch.float32))


def solo_loss(
    cate_logits: List[Tensor],
    targets: List[LevelTargets],
    mask_probs: List[Tensor],
    *,
    num_classes: int,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    cate_weight: float = 1.0,
    mask_weight: float = 3.0,
    dice_normalizer: str = "targets",
) -> Dict[str, Tensor]:
    """SOLO category + mask losses.

    Args:
        cate_logits: per level, [B, C, S_l, S_l] category logits (no background channel).
        targets: per level, :class:`LevelTargets` from :func:`solo_targets`.
        mask_probs: per level, [P_l, h_l, w_l] sigmoid mask probabilities of the level's
            mask targets (``target_img``/``target_cell`` of the level), in ``LevelTargets``
            order. P_l may be 0.
        num_classes: C.
        focal_alpha, focal_gamma: sigmoid focal loss parameters.
        cate_weight, mask_weight: loss weights.
        dice_normalizer: ``"targets"`` or ``"cells"`` (see the module docstring).

    Returns:
        ``{"loss_cate": scalar, "loss_mask": scalar}``. ``loss_cate`` is the summed focal
        loss over all cells of all levels divided by ``N + 1`` (``N`` the worker-averaged
        number of positive cells), ``loss_mask`` the summed dice loss over all mask targets
        divided by their worker-averaged number (``"cells"``: by that of the positive cells;
        at least 1).
        With no positives anywhere, ``loss_mask`` is 0 but still connected to
        ``mask_probs`` so that backward / DDP work.
    """
    if not (len(cate_logits) == len(targets) == len(mask_probs)):
        raise ValueError(
            f"solo_loss: got {len(cate_logits)} cate_logits, {len(targets)} targets and "
            f"{len(mask_probs)} mask_probs levels"
        )
    if dice_normalizer not in DICE_NORMALIZERS:
        raise ValueError(
            f"solo_loss: dice_normalizer must be one of {DICE_NORMALIZERS}, got {dice_normalizer!r}"
        )
    logits, onehot = _flatten_cate(cate_logits, targets, num_classes)
    # positive cells (a device sum, never read back) and mask targets (known on the host)
    num_pos = torch.stack([t.pos_mask.sum() for t in targets]).sum().float()
    num_pos, num_masks = reduce_mean(
        torch.stack([num_pos, torch.full_like(num_pos, sum(t.num_targets for t in targets))])
    ).unbind(0)
    # worker-averaged counts: (N_total + 1) / W makes the average of the workers' losses equal
    # the loss of one process on the whole batch (N + 1 on one process, as the references)
    world = float(comm.get_world_size())

    focal = sigmoid_focal_loss_sum(logits, onehot, alpha=focal_alpha, gamma=focal_gamma)
    loss_cate = cate_weight * focal / (num_pos + 1.0 / world)

    dice_terms = []
    for lvl, (probs, tgt) in enumerate(zip(mask_probs, targets)):
        expected = (tgt.num_targets,) + tuple(tgt.target_masks.shape[-2:])
        if tuple(probs.shape) != expected:
            raise ValueError(
                f"solo_loss: level {lvl} mask_probs {tuple(probs.shape)} do not match its "
                f"{tgt.num_targets} mask targets of size {tuple(tgt.target_masks.shape[-2:])}"
            )
        dice_terms.append(indexed_dice_loss(probs, tgt.target_masks, tgt.target_rows).sum())
    divisor = num_masks if dice_normalizer == "targets" else num_pos
    loss_mask = mask_weight * torch.stack(dice_terms).sum() / divisor.clamp(min=1.0 / world)
    return {"loss_cate": loss_cate, "loss_mask": loss_mask}
