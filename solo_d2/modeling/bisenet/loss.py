"""Losses of BiSeNet: OHEM cross entropy and plain cross entropy.

Both return ``sum(per-pixel loss over kept pixels) / normalizer``. When
``torch.distributed`` is initialized with more than one worker, the normalizer
(the number of kept pixels) is all-reduced and averaged over workers. DDP then
averages the gradients over the W workers, so the effective loss is
``sum over all workers / (W * mean kept count) = sum / total kept count``: the
same as one process on the combined batch. For OHEM the hard-pixel threshold is
per pixel and thus identical; only the "at least n_min kept" rule is evaluated
per worker (n_min is a per-worker count), which is the part that cannot match
exactly.
"""

import math

import torch
from torch.nn import functional as F

from ...utils.comm import reduce_mean

__all__ = [
    "ohem_cross_entropy",
    "ohem_selection",
    "pixel_losses",
    "cross_entropy",
    "seg_loss",
    "head_loss_config",
]


def head_loss_config(cfg) -> dict:
    """``from_config`` arguments shared by the BiSeNet V1 and V2 heads (classes, norm, losses)."""
    b = cfg.MODEL.BISENET
    return {
        "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
        "norm": b.NORM,
        "loss_weight": cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT,
        "aux_loss_weight": b.AUX_LOSS_WEIGHT,
        "loss_type": b.LOSS_TYPE,
        "ohem_thresh": b.OHEM_THRESH,
        "ohem_min_kept_divisor": b.OHEM_MIN_KEPT_DIVISOR,
    }


def pixel_losses(logits, targets, ignore_value=255):
    """Per-pixel CE, flattened: ``(loss [N*H*W], valid [N*H*W] bool)``.

    logits [N, C, h, w] are resized bilinearly to the targets' [N, H, W] size. The CE is computed
    in float32 or wider: half / bfloat16 logits (autocast) are cast to float32,
    float64 stays float64.
    """
    if logits.shape[-2:] != targets.shape[-2:]:
        logits = F.interpolate(
            logits, size=targets.shape[-2:], mode="bilinear", align_corners=False
        )
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    loss = F.cross_entropy(logits, targets.long(), ignore_index=ignore_value, reduction="none")
    return loss.flatten(), (targets != ignore_value).flatten()


def ohem_selection(loss, valid, thresh=0.7, min_kept_divisor=16):
    """Which pixels OHEM averages (pure function of the per-pixel losses of :func:`pixel_losses`).

    Hard pixels are valid ones with ``loss > -log(thresh)``;
    ``n_min = n_valid // min_kept_divisor``. If at least ``n_min`` pixels are hard they are kept,
    else the ``n_min`` largest valid losses.

    Returns:
        ``(kept, counts)``: ``kept`` bool like ``loss``; ``counts`` a dict of ints ``n_valid``,
        ``n_min``, ``n_hard``, ``n_kept``.
    """
    if not 0.0 < thresh < 1.0:
        raise ValueError(f"MODEL.BISENET.OHEM_THRESH must be a probability in (0, 1), got {thresh}")
    n_valid = int(valid.sum())
    n_min = n_valid // max(int(min_kept_divisor), 1)
    kept = valid & (loss > -math.log(thresh))
    n_hard = int(kept.sum())
    if n_hard < n_min:
        # fewer hard pixels than the minimum: keep the n_min largest valid losses
        masked = torch.where(valid, loss.detach(), torch.full_like(loss, -1.0))
        kept = torch.zeros_like(valid)
        kept[masked.topk(n_min).indices] = True
    counts = dict(n_valid=n_valid, n_min=n_min, n_hard=n_hard, n_kept=max(n_hard, n_min))
    return kept, counts


def ohem_cross_entropy(logits, targets, ignore_value=255, thresh=0.7, min_kept_divisor=16):
    """Online hard example mining cross entropy.

    Args:
        logits: [N, C, h, w] class scores; bilinearly resized to the targets' size.
        targets: [N, H, W] integer labels; ``ignore_value`` pixels are never counted.
        thresh: probability threshold; pixels with loss > -log(thresh) are hard.
        min_kept_divisor: at least ``valid_pixels // min_kept_divisor`` pixels are
            kept; when fewer are hard, the top-k losses among valid pixels are kept.
    Returns:
        scalar loss (mean over kept pixels, normalizer reduced over workers).
    """
    loss, valid = pixel_losses(logits, targets, ignore_value)
    kept, counts = ohem_selection(loss, valid, thresh, min_kept_divisor)
    kept_sum = torch.where(kept, loss, torch.zeros_like(loss)).sum()
    normalizer = reduce_mean(torch.tensor(float(counts["n_kept"]), device=loss.device)).clamp(
        min=1.0
    )
    return kept_sum / normalizer


def cross_entropy(logits, targets, ignore_value=255):
    """Plain cross entropy averaged over valid pixels (normalizer reduced over workers)."""
    loss, valid = pixel_losses(logits, targets, ignore_value)
    normalizer = reduce_mean(valid.sum()).clamp(min=1.0)
    return (loss * valid).sum() / normalizer


def seg_loss(
    logits, targets, *, loss_type="ohem", ignore_value=255, thresh=0.7, min_kept_divisor=16
):
    """Dispatch on ``MODEL.BISENET.LOSS_TYPE`` ("ohem" or "ce")."""
    if loss_type == "ohem":
        return ohem_cross_entropy(logits, targets, ignore_value, thresh, min_kept_divisor)
    if loss_type == "ce":
        return cross_entropy(logits, targets, ignore_value)
    raise ValueError(f"MODEL.BISENET.LOSS_TYPE must be 'ohem' or 'ce', got {loss_type!r}")
