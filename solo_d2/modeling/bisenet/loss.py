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
import torch.distributed as dist
from torch.nn import functional as F

__all__ = ["ohem_cross_entropy", "cross_entropy", "seg_loss", "reduce_normalizer", "head_loss_config"]


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


def reduce_normalizer(count: torch.Tensor) -> torch.Tensor:
    """Mean of ``count`` over distributed workers (identity without distributed)."""
    count = count.detach().float()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        count = count.clone()
        dist.all_reduce(count)
        count = count / dist.get_world_size()
    return count.clamp(min=1.0)


def _pixel_losses(logits, targets, ignore_value):
    """Per-pixel CE. logits [N, C, H, W] (upsampled to targets' size), targets [N, H, W]."""
    if logits.shape[-2:] != targets.shape[-2:]:
        logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
    loss = F.cross_entropy(logits.float(), targets.long(), ignore_index=ignore_value, reduction="none")
    return loss.flatten(), (targets != ignore_value).flatten()


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
    if not 0.0 < thresh < 1.0:
        raise ValueError(f"MODEL.BISENET.OHEM_THRESH must be a probability in (0, 1), got {thresh}")
    loss, valid = _pixel_losses(logits, targets, ignore_value)
    loss_thresh = -math.log(thresh)
    n_valid = int(valid.sum())
    n_min = n_valid // max(int(min_kept_divisor), 1)
    hard = valid & (loss > loss_thresh)
    n_hard = int(hard.sum())
    if n_hard >= n_min:
        kept_sum = (loss * hard).sum()
        n_kept = n_hard
    else:
        # fewer hard pixels than the minimum: keep the n_min largest valid losses
        masked = torch.where(valid, loss, torch.full_like(loss, -1.0))
        kept_sum = masked.topk(n_min).values.sum()
        n_kept = n_min
    normalizer = reduce_normalizer(torch.tensor(float(n_kept), device=loss.device))
    return kept_sum / normalizer


def cross_entropy(logits, targets, ignore_value=255):
    """Plain cross entropy averaged over valid pixels (normalizer reduced over workers)."""
    loss, valid = _pixel_losses(logits, targets, ignore_value)
    normalizer = reduce_normalizer(valid.sum())
    return (loss * valid).sum() / normalizer


def seg_loss(logits, targets, *, loss_type="ohem", ignore_value=255, thresh=0.7, min_kept_divisor=16):
    """Dispatch on ``MODEL.BISENET.LOSS_TYPE`` ("ohem" or "ce")."""
    if loss_type == "ohem":
        return ohem_cross_entropy(logits, targets, ignore_value, thresh, min_kept_divisor)
    if loss_type == "ce":
        return cross_entropy(logits, targets, ignore_value)
    raise ValueError(f"MODEL.BISENET.LOSS_TYPE must be 'ohem' or 'ce', got {loss_type!r}")
