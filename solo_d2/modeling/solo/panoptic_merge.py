"""Panoptic merging: instance masks (things) and a semantic map (stuff) into one segment map.

The rules are Panoptic FPN's (Detectron2's ``combine_semantic_and_instance_outputs``, keys
``MODEL.PANOPTIC_FPN.COMBINE.*``):

1. Instances with score ``>= instances_score_thresh`` are pasted in descending score order. An
   instance whose pixels are already taken for more than ``overlap_thresh`` of its area is
   dropped; otherwise it takes its pixels that no earlier instance took.
2. Every stuff class of the semantic argmax (label 0 is the "things" class of Panoptic FPN and is
   skipped) takes its pixels that no instance took, if there are at least ``stuff_area_thresh``.

Segment ids start at 1 in paste order (instances, then stuff in ascending label); 0 is void.
The loop runs over the kept instances (at most ``MAX_PER_IMG``), each step a few tensor ops over
the image; no Python loop touches pixels. Stuff segments come from one ``bincount``.
"""

from typing import Dict, List, Tuple

import torch
from torch import Tensor

__all__ = ["combine_panoptic"]


def combine_panoptic(
    masks: Tensor,
    scores: Tensor,
    classes: Tensor,
    semantic: Tensor,
    *,
    overlap_thresh: float = 0.5,
    stuff_area_thresh: int = 4096,
    instances_score_thresh: float = 0.5,
    thing_ids: List[int] = None,
    stuff_ids: List[int] = None,
) -> Tuple[Tensor, List[Dict]]:
    """Merge instances and semantic labels of one image.

    Args:
        masks: [N, H, W] bool instance masks; scores: [N] float; classes: [N] long thing class
            (``0..K-1``, the SOLO head's).
        semantic: [H, W] long semantic labels, ``0`` = things, ``1..S`` = stuff classes.
        overlap_thresh, stuff_area_thresh, instances_score_thresh: the rules above.
        thing_ids: category id written for thing class ``k`` (default ``k``);
        stuff_ids: category id written for semantic label ``s`` (default ``s``; entry 0 unused).
            They map the model's classes to the dataset's contiguous ids (see
            :func:`solo_d2.data.panoptic.panoptic_class_maps`).

    Returns:
        ``(panoptic_seg, segments_info)``: [H, W] int32 segment ids, and per segment ``{"id",
        "isthing", "category_id", "area"}`` plus ``"score"`` and ``"instance_id"`` (index into
        the inputs) for things, in Detectron2's format.
    """
    h, w = semantic.shape[-2:]
    if (
        masks.shape[-2:] != (h, w)
        or masks.shape[0] != scores.shape[0]
        or scores.shape != classes.shape
    ):
        raise ValueError(
            f"combine_panoptic: masks {tuple(masks.shape)}, scores {tuple(scores.shape)}, classes "
            f"{tuple(classes.shape)} and semantic {tuple(semantic.shape)} do not match"
        )
    panoptic = torch.zeros((h, w), dtype=torch.int32, device=semantic.device)
    taken = torch.zeros((h, w), dtype=torch.bool, device=semantic.device)
    segments: List[Dict] = []
    order = torch.argsort(scores, descending=True, stable=True)
    order = order[scores[order] >= instances_score_thresh]
    masks = masks.to(device=semantic.device, dtype=torch.bool)
    areas = masks.flatten(1).sum(1)
    for k in order.tolist():
        area = int(areas[k])
        if area == 0:
            continue
        mask = masks[k]
        overlap = int((mask & taken).sum())
        if overlap / area > overlap_thresh:
            continue
        if overlap > 0:
            mask = mask & ~taken
        seg_id = len(segments) + 1
        panoptic[mask] = seg_id
        taken |= mask
        cls = int(classes[k])
        segments.append(
            {
                "id": seg_id,
                "isthing": True,
                "score": float(scores[k]),
                "category_id": thing_ids[cls] if thing_ids is not None else cls,
                "instance_id": k,
                "area": area - overlap,
            }
        )
    # stuff: the semantic labels of the free pixels, counted at once
    free_labels = semantic[~taken].long()
    num_labels = int(semantic.max()) + 1 if semantic.numel() else 1
    counts = torch.bincount(free_labels.clamp(min=0), minlength=num_labels).tolist()
    for label, count in enumerate(counts):
        if label == 0 or count < stuff_area_thresh:  # 0: the "things" class
            continue
        seg_id = len(segments) + 1
        panoptic[(semantic == label) & ~taken] = seg_id
        segments.append(
            {
                "id": seg_id,
                "isthing": False,
                "category_id": stuff_ids[label] if stuff_ids is not None else label,
                "area": count,
            }
        )
    return panoptic, segments
