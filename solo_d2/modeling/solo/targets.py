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
import sys
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


_LANES = 127  # int64 words (8 bool bytes each) summed at once: every byte lane stays < 128


def _lane_total(words: Tensor) -> Tensor:
    """[..., 8 lanes packed in int64] -> [..., 8] byte-lane values (each < 256)."""
    shifts = torch.arange(0, 64, 8, device=words.device)
    return (words[..., None] >> shifts) & 255


def _row_col_sums(masks: Tensor) -> Tuple[Tensor, Tensor]:
    """Pixel counts per row ``[N, H]`` and per column ``[N, W]`` of binary masks (int64).

    Bool masks whose width is a multiple of 8 are read as int64 words of 8 pixels: summing at
    most 127 words adds the pixels of each byte lane without carries, so both sums cost one
    integer pass over the masks instead of a float copy. Other masks: float sums (exact)."""
    n, h, w = masks.shape
    if masks.dtype != torch.bool or w % 8 or n * h * w == 0 or sys.byteorder != "little":
        m = masks.to(torch.float32)
        return m.sum(dim=2).long(), m.sum(dim=1).long()
    words = masks.contiguous().view(torch.int64)  # [N, H, W/8]
    nw = w // 8
    row_sum = sum(_lane_total(words[:, :, i : i + _LANES].sum(dim=2)).sum(dim=2) for i in range(0, nw, _LANES))
    col_sum = sum(_lane_total(words[:, i : i + _LANES].sum(dim=1)) for i in range(0, h, _LANES))  # [N, W/8, 8]
    col_sum = col_sum.reshape(n, w)
    return row_sum, col_sum


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
    if masks.dtype == torch.bool:
        rows, cols = _row_col_sums(masks)  # exact integer counts
        row_sum, col_sum = rows.to(torch.float32), cols.to(torch.float32)
    else:
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


def _integer_factor_resize(masks: Tensor, size: Tuple[int, int]) -> Optional[Tensor]:
    """:func:`resize_masks` of 0/1 masks for integer factors, without floats, or None.

    Bilinear (``align_corners=False``) shrinking by an integer factor ``f`` reads, per output
    row ``y``, input rows ``f y + f/2 - 1`` and ``f y + f/2`` with weights 1/2 (``f`` even) or
    row ``f y + (f - 1)/2`` alone (``f`` odd); the same for columns. On 0/1 masks the result
    is (count of the 1, 2 or 4 samples that are 1) / (number of samples), exactly, so
    ``>= 0.5`` is ``2 * count >= samples``."""
    n, h, w = masks.shape
    oh, ow = size
    if masks.dtype != torch.bool or oh <= 0 or ow <= 0 or h % oh or w % ow:
        return None
    fy, fx = h // oh, w // ow
    m = masks.view(torch.uint8)
    ry = [fy // 2 - 1, fy // 2] if fy % 2 == 0 else [(fy - 1) // 2]
    rx = [fx // 2 - 1, fx // 2] if fx % 2 == 0 else [(fx - 1) // 2]
    rows = m[:, ry[0] :: fy] if len(ry) == 1 else m[:, ry[0] :: fy] + m[:, ry[1] :: fy]  # contiguous rows
    count = rows[:, :, rx[0] :: fx] if len(rx) == 1 else rows[:, :, rx[0] :: fx] + rows[:, :, rx[1] :: fx]
    return (2 * count >= len(ry) * len(rx)).to(torch.float32)


def resize_masks(masks: Tensor, size: Tuple[int, int]) -> Tensor:
    """Resize binary masks: bilinear (``align_corners=False``) on floats, then ``>= 0.5``.

    Args:
        masks: [N, H, W] binary masks (any dtype).
        size: target ``(h, w)``.

    Returns:
        [N, h, w] float masks in {0, 1}. Bool masks shrunk by integer factors (the mask
        targets at 1/4 of the padded input) take an exact integer path with the same result.
    """
    size = (int(size[0]), int(size[1]))
    if masks.shape[0] == 0:
        return torch.zeros((0,) + size, dtype=torch.float32, device=masks.device)
    fast = _integer_factor_resize(masks, size)
    if fast is not None:
        return fast
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

    keys = ("labels", "pos", "img", "cell", "rows", "ids")
    per_level: List[Dict[str, List[Tensor]]] = [{k: [] for k in keys} for _ in range(num_levels)]
    # per mask size: the resized masks of every instance with a mask target there (all images);
    # each level's targets are then gathered from them once, in the references' order
    resized: Dict[Tuple[int, int], List[Tensor]] = {}
    resized_count: Dict[Tuple[int, int], int] = {}
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
        pending: List[Tuple[int, Tuple[int, int], Tensor]] = []  # (level, mask size, instance ids)

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
            d = per_level[lvl]
            d["labels"].append(labels.view(s, s))
            d["pos"].append(pos)
            d["img"].append(torch.full_like(cell, b))
            d["cell"].append(cell)
            d["ids"].append(ids)
            d["rows"].append(ids)  # replaced below by rows of resized[size]
            pending.append((lvl, size, ids))
        # resize only the instances that have mask targets, once per mask size
        for size in {p[1] for p in pending if p[2].numel()}:
            needed = torch.unique(torch.cat([ids for _, sz, ids in pending if sz == size]))
            subset = masks if needed.numel() == masks.shape[0] else masks[needed]
            resized.setdefault(size, []).append(resize_masks(subset, size))
            offset = resized_count.get(size, 0)
            resized_count[size] = offset + needed.numel()
            for lvl, sz, ids in pending:
                if sz == size and ids.numel():
                    per_level[lvl]["rows"][-1] = offset + torch.searchsorted(needed, ids)

    resized_all = {size: parts[0] if len(parts) == 1 else torch.cat(parts) for size, parts in resized.items()}
    out = []
    for d, size in zip(per_level, mask_sizes):
        size = (int(size[0]), int(size[1]))
        rows = torch.cat(d["rows"])
        if rows.numel():
            mask_targets = resized_all[size][rows]
        else:
            mask_targets = torch.zeros((0,) + size, device=device)
        out.append(
            LevelTargets(
                labels=torch.stack(d["labels"]),
                pos_mask=torch.stack(d["pos"]),
                target_img=torch.cat(d["img"]),
                target_cell=torch.cat(d["cell"]),
                mask_targets=mask_targets,
                instance_ids=torch.cat(d["ids"]),
            )
        )
    return out
