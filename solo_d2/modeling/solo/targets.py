"""Target assignment for the SOLO family (SOLO, Decoupled SOLO, SOLOv2), as the references do it.

Every ground-truth instance is assigned to the pyramid levels whose scale range contains its
scale ``sqrt(w * h)`` of its box (the annotation box when given, else the box around the
mask). On such a level the mask's center of mass falls into one cell of the ``S x S`` grid;
the positive cells are those covered by the central ``sigma`` part of the box, clipped to at
most the 3x3 cells around that center cell. Cell coordinates are computed exactly as the
detectron2 SOLOv2 port (AdelaiDet) computes them: ``(c / extent) // (1 / S)`` in float32 with
Python floor-division semantics, which differs from ``floor(c / extent * S)`` at cell borders.

Overlaps follow both public implementations: a cell claimed by several instances takes the
class of the *last* claiming instance (in annotation order), and it gets *one mask target per
claiming instance* (the loss sees every (cell, instance) pair). Mask targets are the
instance masks at the level's mask size (bilinear, ``>= 0.5``, i.e. OpenCV's rounding of a
uint8 0/1 mask), computed from the padded masks (official SOLO; AdelaiDet resizes the
unpadded mask, which only differs when the image size is not a multiple of 4).

Everything is vectorized over instances and cells; Python loops only run over levels and images.
"""
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LevelTargets", "solo_targets", "instance_geometry", "resize_masks", "grid_cell"]


class LevelTargets(NamedTuple):
    """Targets of one pyramid level for a batch of images.

    Attributes:
        labels: [B, S, S] long, class of each cell; ``num_classes`` means background.
        pos_mask: [B, S*S] bool, positive cells; cell index ``i * S + j`` with ``i`` the
            row (y) and ``j`` the column (x).
        target_img: [M] long, image of each mask target (``M >= pos_mask.sum()``: a cell
            claimed by k instances has k mask targets).
        target_cell: [M] long, cell index of each mask target.
        mask_targets: [M, h, w] float in {0, 1}, ``(h, w)`` the level's mask size; ordered by
            image, then instance, then cell (the references' order).
        instance_ids: [M] long, index (within its image) of the gt instance of each target.
    """

    labels: Tensor
    pos_mask: Tensor
    target_img: Tensor
    target_cell: Tensor
    mask_targets: Tensor
    instance_ids: Tensor


def instance_geometry(masks: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Box size, center of mass and area of binary masks.

    Args:
        masks: [N, H, W] bool / uint8 / float binary masks.

    Returns:
        ``(box_h, box_w, center_y, center_x, area)``, each [N] float32: the box extents (last -
        first + 1 pixels), the center of mass in pixel-index coordinates (like
        ``scipy.ndimage.center_of_mass``) and the pixel count. Empty masks give zeros.
    """
    n, h, w = masks.shape
    m = masks if masks.dtype == torch.float32 else masks.to(torch.float32)
    row_sum = m.sum(dim=2)  # [N, H]
    col_sum = m.sum(dim=1)  # [N, W]
    area = row_sum.sum(dim=1)  # [N]
    ys = torch.arange(h, device=masks.device, dtype=torch.float32)
    xs = torch.arange(w, device=masks.device, dtype=torch.float32)
    safe_area = area.clamp(min=1e-6)
    center_y = (row_sum * ys).sum(dim=1) / safe_area
    center_x = (col_sum * xs).sum(dim=1) / safe_area

    rows_any, cols_any = row_sum > 0, col_sum > 0
    y0 = torch.where(rows_any, ys, torch.full_like(ys, float(h))).min(dim=1).values if h else area
    y1 = torch.where(rows_any, ys + 1, torch.zeros_like(ys)).max(dim=1).values if h else area
    x0 = torch.where(cols_any, xs, torch.full_like(xs, float(w))).min(dim=1).values if w else area
    x1 = torch.where(cols_any, xs + 1, torch.zeros_like(xs)).max(dim=1).values if w else area
    nonempty = area > 0
    box_h = torch.where(nonempty, y1 - y0, torch.zeros_like(area))
    box_w = torch.where(nonempty, x1 - x0, torch.zeros_like(area))
    return box_h, box_w, center_y, center_x, area


def resize_masks(masks: Tensor, size: Tuple[int, int]) -> Tensor:
    """Resize binary masks: bilinear (``align_corners=False``) on floats, then ``>= 0.5``.

    Args:
        masks: [N, H, W] binary masks (any dtype).
        size: target ``(h, w)``.

    Returns:
        [N, h, w] float masks in {0, 1}.
    """
    size = (int(size[0]), int(size[1]))
    if masks.shape[0] == 0:
        return torch.zeros((0,) + size, dtype=torch.float32, device=masks.device)
    m = masks.to(torch.float32)
    if tuple(m.shape[-2:]) != size:
        m = F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return (m >= 0.5).to(torch.float32)


def grid_cell(coord: Tensor, extent: int, num_grid: int) -> Tensor:
    """Grid index of input-pixel coordinates along one axis, as the references compute it:
    ``(coord / extent) // (1 / S)`` in float32 (Python floor-division semantics), as long."""
    ratio = coord.to(torch.float32) / float(extent)
    return torch.div(ratio, 1.0 / num_grid, rounding_mode="floor").long()


def _level_membership(
    box_h: Tensor, box_w: Tensor, center_y: Tensor, center_x: Tensor,
    image_hw: Tuple[int, int], num_grid: int, sigma: float,
) -> Tensor:
    """[n, S*S] bool: the cells each of the n instances claims on one level."""
    height, width = image_hw
    s = num_grid
    half_h = 0.5 * sigma * box_h
    half_w = 0.5 * sigma * box_w
    ci = grid_cell(center_y, height, s)
    cj = grid_cell(center_x, width, s)
    top = torch.maximum(grid_cell(center_y - half_h, height, s).clamp(min=0), ci - 1)
    down = torch.minimum(grid_cell(center_y + half_h, height, s).clamp(max=s - 1), ci + 1)
    left = torch.maximum(grid_cell(center_x - half_w, width, s).clamp(min=0), cj - 1)
    right = torch.minimum(grid_cell(center_x + half_w, width, s).clamp(max=s - 1), cj + 1)
    grid = torch.arange(s, device=box_h.device)
    in_rows = (grid[None] >= top[:, None]) & (grid[None] <= down[:, None])  # [n, S]
    in_cols = (grid[None] >= left[:, None]) & (grid[None] <= right[:, None])  # [n, S]
    return (in_rows[:, :, None] & in_cols[:, None, :]).reshape(-1, s * s)


def _check_inputs(gt_masks, gt_classes, gt_boxes, num_classes, image_hw):
    for b, (masks, classes) in enumerate(zip(gt_masks, gt_classes)):
        if masks.dim() != 3 or tuple(masks.shape[-2:]) != image_hw:
            raise ValueError(
                f"solo_targets: gt_masks must be [N, H, W] with the same H, W for the batch; "
                f"image {b} has {tuple(masks.shape)} vs {image_hw}"
            )
        if classes.shape != (masks.shape[0],):
            raise ValueError(
                f"solo_targets: image {b}: gt_classes shape {tuple(classes.shape)} does not match "
                f"{masks.shape[0]} masks"
            )
        if gt_boxes is not None and tuple(gt_boxes[b].shape) != (masks.shape[0], 4):
            raise ValueError(f"solo_targets: image {b}: gt_boxes shape {tuple(gt_boxes[b].shape)}, expected ({masks.shape[0]}, 4)")
        if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= num_classes):
            raise ValueError(
                f"solo_targets: gt_classes must lie in [0, {num_classes}) (MODEL.SOLO.NUM_CLASSES); "
                f"image {b} has range [{int(classes.min())}, {int(classes.max())}]"
            )


def solo_targets(
    gt_masks: List[Tensor],
    gt_classes: List[Tensor],
    *,
    num_grids: Sequence[int],
    scale_ranges: Sequence[Tuple[float, float]],
    mask_sizes: Sequence[Tuple[int, int]],
    sigma: float,
    num_classes: int,
    gt_boxes: Optional[List[Tensor]] = None,
) -> List[LevelTargets]:
    """Compute SOLO targets for a batch.

    Args:
        gt_masks: per image, [N_b, H, W] bool/uint8 masks at the padded input resolution
            (same H, W for all images). N_b may be 0.
        gt_classes: per image, [N_b] long in ``[0, num_classes)``.
        num_grids: S per level.
        scale_ranges: ``(lo, hi)`` per level; an instance of scale ``s`` is assigned to
            every level with ``lo <= s <= hi`` (ranges overlap).
        mask_sizes: ``(h, w)`` of the mask targets per level.
        sigma: center-sampling fraction of the box (0.2 in SOLO).
        num_classes: number of classes; also the background label.
        gt_boxes: optional, per image [N_b, 4] ``(x0, y0, x1, y1)`` boxes (the annotation
            boxes, as both references use); default: the boxes around the masks.

    Returns:
        One :class:`LevelTargets` per level. Instances with empty masks are ignored.
    """
    num_levels = len(num_grids)
    if len(scale_ranges) != num_levels or len(mask_sizes) != num_levels:
        raise ValueError(
            f"solo_targets: num_grids ({num_levels}), scale_ranges ({len(scale_ranges)}) and "
            f"mask_sizes ({len(mask_sizes)}) must have one entry per level"
        )
    if len(gt_masks) != len(gt_classes) or (gt_boxes is not None and len(gt_boxes) != len(gt_masks)):
        raise ValueError("solo_targets: gt_masks, gt_classes (and gt_boxes) need one entry per image")
    if len(gt_masks) == 0:
        raise ValueError("solo_targets: empty batch (no images)")
    image_hw = tuple(gt_masks[0].shape[-2:])
    device = gt_masks[0].device
    _check_inputs(gt_masks, gt_classes, gt_boxes, num_classes, image_hw)

    keys = ("labels", "pos", "img", "cell", "masks", "ids")
    per_level: List[Dict[str, List[Tensor]]] = [{k: [] for k in keys} for _ in range(num_levels)]
    for b, (masks, classes) in enumerate(zip(gt_masks, gt_classes)):
        classes = classes.to(device=device, dtype=torch.long)
        mask_h, mask_w, cy, cx, area = instance_geometry(masks)
        if gt_boxes is not None:
            boxes = gt_boxes[b].to(device=device, dtype=torch.float32)
            box_w, box_h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        else:
            box_h, box_w = mask_h, mask_w
        scale = torch.sqrt(box_h * box_w)
        valid = area > 0
        resized: Dict[Tuple[int, int], Tensor] = {}

        for lvl, (s, (lo, hi), size) in enumerate(zip(num_grids, scale_ranges, mask_sizes)):
            size = (int(size[0]), int(size[1]))
            hit = torch.nonzero(valid & (scale >= lo) & (scale <= hi)).flatten()  # [n], ascending
            member = _level_membership(box_h[hit], box_w[hit], cy[hit], cx[hit], image_hw, s, sigma)
            labels = torch.full((s * s,), num_classes, dtype=torch.long, device=device)
            pos = member.any(dim=0)
            if hit.numel():
                # the last claiming instance (highest index) sets a cell's class
                order = torch.arange(hit.numel(), device=device)[:, None]
                last = torch.where(member, order, torch.full_like(order, -1)).max(dim=0).values
                labels = torch.where(pos, classes[hit[last.clamp(min=0)]], labels)
            inst, cell = member.nonzero(as_tuple=True)  # instance-major, then cell: the references' order
            ids = hit[inst]
            if ids.numel() and size not in resized:
                resized[size] = resize_masks(masks, size)
            d = per_level[lvl]
            d["labels"].append(labels.view(s, s))
            d["pos"].append(pos)
            d["img"].append(torch.full_like(cell, b))
            d["cell"].append(cell)
            d["masks"].append(resized[size][ids] if ids.numel() else torch.zeros((0,) + size, device=device))
            d["ids"].append(ids)

    return [
        LevelTargets(
            labels=torch.stack(d["labels"]),
            pos_mask=torch.stack(d["pos"]),
            target_img=torch.cat(d["img"]),
            target_cell=torch.cat(d["cell"]),
            mask_targets=torch.cat(d["masks"]),
            instance_ids=torch.cat(d["ids"]),
        )
        for d in per_level
    ]
