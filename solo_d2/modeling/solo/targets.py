"""Target assignment for the SOLO family (SOLO, Decoupled SOLO, SOLOv2).

Every ground-truth instance is assigned to the pyramid levels whose scale range
contains its scale (``sqrt(w * h)`` of the box derived from its mask). On such a
level the instance's mask center of mass falls into one cell of the ``S x S``
grid; the positive cells are the cells covered by the central ``sigma`` part of
the box, clipped to at most the 3x3 cells around that center cell (as in the
official SOLO implementation). Each positive cell learns the instance's class and
its mask, resized to the level's mask size.

Everything is vectorized over instances and cells; Python loops only run over
pyramid levels and images.
"""
from typing import Dict, List, NamedTuple, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LevelTargets", "solo_targets", "instance_geometry", "resize_masks"]


class LevelTargets(NamedTuple):
    """Targets of one pyramid level for a batch of images.

    Attributes:
        labels: [B, S, S] long, class of each cell; ``num_classes`` means background.
        pos_mask: [B, S*S] bool, positive cells; cell index ``i * S + j`` with ``i`` the
            row (y) and ``j`` the column (x).
        mask_targets: [P, h, w] float in {0, 1}, ``P = pos_mask.sum()``, in the order of
            ``pos_mask.nonzero()`` (image-major, then cell index); ``(h, w)`` is the
            level's mask size.
        instance_ids: [P] long, index (within its image) of the gt instance that each
            positive cell learns.
    """

    labels: Tensor
    pos_mask: Tensor
    mask_targets: Tensor
    instance_ids: Tensor


def instance_geometry(masks: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Box size, center of mass and area of binary masks.

    Args:
        masks: [N, H, W] bool / uint8 / float binary masks.

    Returns:
        ``(box_h, box_w, center_y, center_x, area, float_masks)``: the first five are
        [N] float tensors; ``box_h``/``box_w`` are the extents (in pixels, last - first
        + 1) of the box around the mask, the center of mass is in pixel-index
        coordinates (like ``scipy.ndimage.center_of_mass``), ``area`` is the pixel
        count. Empty masks get zeros everywhere. ``float_masks`` is the [N, H, W] float
        copy, returned so callers can reuse it.
    """
    n, h, w = masks.shape
    m = masks.float()
    row_sum = m.sum(dim=2)  # [N, H]
    col_sum = m.sum(dim=1)  # [N, W]
    area = row_sum.sum(dim=1)  # [N]
    ys = torch.arange(h, device=masks.device, dtype=torch.float32)
    xs = torch.arange(w, device=masks.device, dtype=torch.float32)
    safe_area = area.clamp(min=1.0)
    center_y = (row_sum * ys).sum(dim=1) / safe_area
    center_x = (col_sum * xs).sum(dim=1) / safe_area

    rows_any = row_sum > 0
    cols_any = col_sum > 0
    # first / last occupied row and column, vectorized (no loop over instances)
    y0 = torch.where(rows_any, ys, torch.full_like(ys, float(h))).min(dim=1).values
    y1 = torch.where(rows_any, ys + 1, torch.zeros_like(ys)).max(dim=1).values
    x0 = torch.where(cols_any, xs, torch.full_like(xs, float(w))).min(dim=1).values
    x1 = torch.where(cols_any, xs + 1, torch.zeros_like(xs)).max(dim=1).values
    nonempty = area > 0
    box_h = torch.where(nonempty, y1 - y0, torch.zeros_like(area))
    box_w = torch.where(nonempty, x1 - x0, torch.zeros_like(area))
    return box_h, box_w, center_y, center_x, area, m


def resize_masks(float_masks: Tensor, size: Tuple[int, int]) -> Tensor:
    """Resize binary masks: bilinear on floats, then ``>= 0.5``.

    Args:
        float_masks: [N, H, W] float masks in {0, 1}.
        size: target ``(h, w)``.

    Returns:
        [N, h, w] float masks in {0, 1}.
    """
    n = float_masks.shape[0]
    if n == 0:
        return float_masks.new_zeros((0, int(size[0]), int(size[1])))
    if tuple(float_masks.shape[-2:]) == tuple(size):
        return (float_masks >= 0.5).float()
    resized = F.interpolate(
        float_masks[:, None], size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=False
    )[:, 0]
    return (resized >= 0.5).float()


def _cell(coord: Tensor, extent: int, num_grid: int) -> Tensor:
    """Grid cell index (floor) of input-pixel coordinates along one axis, as long."""
    return torch.floor(coord / extent * num_grid).long()


def _level_assignment(
    box_h: Tensor,
    box_w: Tensor,
    center_y: Tensor,
    center_x: Tensor,
    area: Tensor,
    image_hw: Tuple[int, int],
    num_grid: int,
    sigma: float,
) -> Tuple[Tensor, Tensor]:
    """Assign cells of one level of one image to instances.

    Args:
        box_h, box_w, center_y, center_x, area: [n] float, geometry of the instances
            assigned to this level.
        image_hw: padded input size ``(H, W)``.
        num_grid: S.
        sigma: fraction of the box used for center sampling.

    Returns:
        ``(pos, winner)``: [S*S] bool positive cells and [S*S] long index (into the n
        instances) of the instance each cell learns (meaningless where not positive).
        Conflicts (several instances claiming a cell) go to the instance with the
        smallest mask area; equal areas go to the lower index.
    """
    height, width = image_hw
    s = num_grid
    half_h = 0.5 * sigma * box_h
    half_w = 0.5 * sigma * box_w
    ci = _cell(center_y, height, s).clamp(0, s - 1)
    cj = _cell(center_x, width, s).clamp(0, s - 1)
    top_box = _cell(center_y - half_h, height, s).clamp(min=0)
    down_box = _cell(center_y + half_h, height, s).clamp(max=s - 1)
    left_box = _cell(center_x - half_w, width, s).clamp(min=0)
    right_box = _cell(center_x + half_w, width, s).clamp(max=s - 1)
    top = torch.maximum(top_box, ci - 1)
    down = torch.minimum(down_box, ci + 1)
    left = torch.maximum(left_box, cj - 1)
    right = torch.minimum(right_box, cj + 1)

    grid = torch.arange(s, device=area.device)
    in_rows = (grid[None] >= top[:, None]) & (grid[None] <= down[:, None])  # [n, S]
    in_cols = (grid[None] >= left[:, None]) & (grid[None] <= right[:, None])  # [n, S]
    member = (in_rows[:, :, None] & in_cols[:, None, :]).reshape(-1, s * s)  # [n, S*S]

    key = torch.where(member, area[:, None], torch.full_like(area[:, None], float("inf")))
    winner = key.argmin(dim=0)  # first index among equal minima
    pos = member.any(dim=0)
    return pos, winner


def solo_targets(
    gt_masks: List[Tensor],
    gt_classes: List[Tensor],
    *,
    num_grids: Sequence[int],
    scale_ranges: Sequence[Tuple[float, float]],
    mask_sizes: Sequence[Tuple[int, int]],
    sigma: float,
    num_classes: int,
) -> List[LevelTargets]:
    """Compute SOLO targets for a batch.

    Args:
        gt_masks: per image, [N_b, H, W] bool/uint8 masks at the padded input
            resolution (same H, W for all images). N_b may be 0.
        gt_classes: per image, [N_b] long in ``[0, num_classes)``.
        num_grids: S per level.
        scale_ranges: ``(lo, hi)`` per level; an instance of scale ``s`` is assigned to
            every level with ``lo <= s <= hi`` (ranges overlap).
        mask_sizes: ``(h, w)`` of the mask targets per level.
        sigma: center-sampling fraction of the box (0.2 in SOLO).
        num_classes: number of classes; also the background label.

    Returns:
        One :class:`LevelTargets` per level. Instances with empty masks are ignored.
    """
    num_levels = len(num_grids)
    if len(scale_ranges) != num_levels or len(mask_sizes) != num_levels:
        raise ValueError(
            f"solo_targets: num_grids ({num_levels}), scale_ranges ({len(scale_ranges)}) and "
            f"mask_sizes ({len(mask_sizes)}) must have one entry per level"
        )
    if len(gt_masks) != len(gt_classes):
        raise ValueError(
            f"solo_targets: {len(gt_masks)} gt_masks but {len(gt_classes)} gt_classes entries"
        )
    if len(gt_masks) == 0:
        raise ValueError("solo_targets: empty batch (no images)")
    image_hw = tuple(gt_masks[0].shape[-2:])
    device = gt_masks[0].device

    per_level: List[Dict[str, List[Tensor]]] = [
        {"labels": [], "pos": [], "masks": [], "ids": []} for _ in range(num_levels)
    ]
    for masks, classes in zip(gt_masks, gt_classes):
        if masks.dim() != 3 or tuple(masks.shape[-2:]) != image_hw:
            raise ValueError(
                f"solo_targets: gt_masks must be [N, H, W] with the same H, W for the batch; "
                f"got {tuple(masks.shape)} vs {image_hw}"
            )
        if classes.shape != (masks.shape[0],):
            raise ValueError(
                f"solo_targets: gt_classes shape {tuple(classes.shape)} does not match "
                f"{masks.shape[0]} masks"
            )
        if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= num_classes):
            raise ValueError(
                f"solo_targets: gt_classes must lie in [0, {num_classes}); "
                f"got range [{int(classes.min())}, {int(classes.max())}]"
            )
        classes = classes.to(device=device, dtype=torch.long)
        box_h, box_w, cy, cx, area, fmasks = instance_geometry(masks)
        scale = torch.sqrt(box_h * box_w)
        valid = area > 0
        resized_cache: Dict[Tuple[int, int], Tensor] = {}

        for lvl, (s, (lo, hi), size) in enumerate(zip(num_grids, scale_ranges, mask_sizes)):
            size = (int(size[0]), int(size[1]))
            hit = torch.nonzero(valid & (scale >= lo) & (scale <= hi)).flatten()  # [n]
            labels = torch.full((s, s), num_classes, dtype=torch.long, device=device)
            if hit.numel() == 0:
                per_level[lvl]["labels"].append(labels)
                per_level[lvl]["pos"].append(torch.zeros(s * s, dtype=torch.bool, device=device))
                per_level[lvl]["masks"].append(fmasks.new_zeros((0,) + size))
                per_level[lvl]["ids"].append(torch.zeros(0, dtype=torch.long, device=device))
                continue
            pos, winner = _level_assignment(
                box_h[hit], box_w[hit], cy[hit], cx[hit], area[hit], image_hw, s, sigma
            )
            cell_instance = hit[winner]  # [S*S] image-level instance index
            labels = torch.where(pos, classes[cell_instance], labels.flatten()).view(s, s)
            ids = cell_instance[pos]  # [P] in cell-index order
            if size not in resized_cache:
                resized_cache[size] = resize_masks(fmasks, size)
            per_level[lvl]["labels"].append(labels)
            per_level[lvl]["pos"].append(pos)
            per_level[lvl]["masks"].append(resized_cache[size][ids])
            per_level[lvl]["ids"].append(ids)

    return [
        LevelTargets(
            labels=torch.stack(d["labels"]),
            pos_mask=torch.stack(d["pos"]),
            mask_targets=torch.cat(d["masks"]),
            instance_ids=torch.cat(d["ids"]),
        )
        for d in per_level
    ]
