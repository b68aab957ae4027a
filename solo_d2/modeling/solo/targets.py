"""Target assignment for the SOLO family (SOLO, Decoupled SOLO, SOLOv2), as the references do it.

Every ground-truth instance is assigned to the pyramid levels whose scale range contains its
scale ``sqrt(w * h)`` of its box (the annotation box when given, else the box around the
mask). On such a level the mask's center of mass (float32 sums, as the official
``solo_head.py`` computes it) falls into one cell of the ``S x S`` grid; the positive cells are
those covered by the central ``sigma`` part of the box, clipped to at most the 3x3 cells around
that center cell. Cell coordinates are ``(c / extent) // (1 / S)`` in float32 with Python
floor-division semantics, as the official code and AdelaiDet compute them (``grid_rounding
"floor"``; this differs from ``floor(c / extent * S)`` on cell borders); mmdetection truncates
the rounded quotient instead (``"trunc"``), which differs exactly on grid lines.

Overlaps: a cell claimed by several instances takes the class of the *last* claiming instance
(in annotation order), in every reference. Its mask targets differ by head in the official
code (WXinlong/SOLO, commit f4cd03b), and mmdetection 3.3.0 follows it:

- SOLO, Decoupled SOLO and Decoupled-light keep **one mask target per positive cell**, the last
  claimant's mask (``ins_label[label] = seg_mask`` overwrites in ``solo_target_single``):
  ``one_target_per_cell=True``;
- SOLOv2 (and AdelaiDet's port) keeps **one mask target per (cell, claiming instance)**:
  ``one_target_per_cell=False``.

Mask targets are the instance masks at the level's mask size (bilinear, ``>= 0.5``, i.e.
OpenCV's rounding of a uint8 0/1 mask), computed from the padded masks by an exact integer
factor (``mask_resize="padded"``, official SOLO and mmdetection). AdelaiDet resizes each
*unpadded* mask with ``cv2.resize`` to ``(int(w / f + 0.5), int(h / f + 0.5))`` and pastes it
into the top-left corner (``mask_resize="unpadded"``); the two agree only when both image sides
are multiples of the factor. Each instance mask is resized once per mask size and the targets
index it (:class:`LevelTargets`): the references copy one full mask per (cell, instance).

Cells, levels, instances and images are handled together in a fixed number of tensor ops; the
host reads back a constant number of values (the (level, instance) pairs, the claimed cells,
the class range, the targets per level and image), whatever the number of instances. Python
loops run over images (to concatenate them) and distinct mask sizes only.
"""

from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LevelTargets", "solo_targets", "instance_geometry", "resize_masks", "grid_cell"]


class LevelTargets(NamedTuple):
    """Targets of one pyramid level for a batch of images.

    The mask targets are kept compact: every instance mask is resized once per mask size and
    stored as bool (``target_masks``); each mask target is a row index into it
    (``target_rows``). The loss reads the masks through the index, so no float copy per
    (cell, instance) is ever written; :attr:`mask_targets` expands them for inspection.

    Attributes:
        labels: [B, S, S] long, class of each cell; ``num_classes`` means background.
        pos_mask: [B, S*S] bool, positive cells; cell index ``i * S + j`` with ``i`` the
            row (y) and ``j`` the column (x).
        target_img: [M] long, image of each mask target (``M >= pos_mask.sum()``: a cell
            claimed by k instances has k mask targets, or one with ``one_target_per_cell``).
        target_cell: [M] long, cell index of each mask target.
        target_masks: [R, h, w] bool, the resized masks of the instances with mask targets,
            ``(h, w)`` the level's mask size (levels of equal mask size share this tensor).
        target_rows: [M] long, row of ``target_masks`` of each mask target; targets are
            ordered by image, then instance, then cell (the references' order).
        instance_ids: [M] long, index (within its image) of the gt instance of each target.
        image_counts: the number of mask targets of each image (Python ints; None when not
            known), so that heads can split the targets by image without a read-back.
    """

    labels: Tensor
    pos_mask: Tensor
    target_img: Tensor
    target_cell: Tensor
    target_masks: Tensor
    target_rows: Tensor
    instance_ids: Tensor
    image_counts: Optional[Tuple[int, ...]] = None

    @property
    def num_targets(self) -> int:
        """M, the number of mask targets."""
        return int(self.target_rows.numel())

    @property
    def mask_targets(self) -> Tensor:
        """[M, h, w] float32 in {0, 1}: the mask targets expanded (for inspection and tests;
        the loss never builds this)."""
        return self.target_masks[self.target_rows].to(torch.float32)


def instance_geometry(masks: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Box size, center of mass and area of binary masks.

    Args:
        masks: [N, H, W] bool / uint8 / float binary masks (nonzero is foreground).

    Returns:
        ``(box_h, box_w, center_y, center_x, area)``, each [N] float32: the box extents (last -
        first + 1 pixels), the center of mass in pixel-index coordinates (like
        ``scipy.ndimage.center_of_mass``) and the pixel count; empty masks give zeros. The
        center is the exact first moment (an integer sum) rounded once to float32 and divided
        by the area in float32: the references' float32 ``sum(m * coords) / sum(m)`` up to the
        rounding of their float32 sums (exact below 2**24).
    """
    m = masks if masks.dtype == torch.bool else masks != 0
    n, h, w = m.shape
    if h == 0 or w == 0:
        return tuple(torch.zeros(n, device=m.device) for _ in range(5))  # type: ignore[return-value]
    rows, cols = m.sum(dim=2), m.sum(dim=1)  # [N, H], [N, W] int64 pixel counts
    area = rows.sum(dim=1)
    ys, xs = torch.arange(h, device=m.device), torch.arange(w, device=m.device)
    safe_area = area.to(torch.float32).clamp(min=1e-6)
    center_y = (rows * ys).sum(dim=1).to(torch.float32) / safe_area
    center_x = (cols * xs).sum(dim=1).to(torch.float32) / safe_area

    def extent(counts, pos):  # last filled position + 1 - first, 0 when empty
        filled = counts > 0
        first = torch.where(filled, pos, pos.numel()).amin(dim=1)
        last = torch.where(filled, pos, -1).amax(dim=1)
        return (last + 1 - first).clamp(min=0).to(torch.float32)

    return extent(rows, ys), extent(cols, xs), center_y, center_x, area.to(torch.float32)


def resize_masks(
    masks: Tensor, size: Tuple[int, int], dtype: torch.dtype = torch.float32
) -> Tensor:
    """Resize binary masks: bilinear (``align_corners=False``) on floats, then ``>= 0.5``.

    Shrinking by integer factors (the mask targets from the padded input) reads only the
    pixels that bilinear interpolation weighs: output row ``y`` of a factor ``f`` reads input
    rows ``f y + f/2 - 1`` and ``f y + f/2`` with weights 1/2 (``f`` even) or row
    ``f y + (f - 1)/2`` alone (``f`` odd), and the same for columns; on 0/1 masks the result is
    ``>= 0.5`` exactly when at least half of those 1, 2 or 4 samples are set.

    Args:
        masks: [N, H, W] binary masks (any dtype).
        size: target ``(h, w)``.
        dtype: of the result (``torch.bool`` for the compact mask targets).

    Returns:
        [N, h, w] masks in {0, 1}.
    """
    oh, ow = int(size[0]), int(size[1])
    n, h, w = masks.shape
    if n == 0 or oh <= 0 or ow <= 0:
        return torch.zeros((n, oh, ow), dtype=dtype, device=masks.device)
    if h % oh or w % ow:
        small = F.interpolate(
            masks[:, None].to(torch.float32), size=(oh, ow), mode="bilinear", align_corners=False
        )
        return (small[:, 0] >= 0.5).to(dtype)
    m = (masks if masks.dtype == torch.bool else masks != 0).view(torch.uint8)
    fy, fx = h // oh, w // ow
    ty, tx = _taps(fy), _taps(fx)
    rows = (
        m[:, ty[0] :: fy] if len(ty) == 1 else m[:, ty[0] :: fy] + m[:, ty[1] :: fy]
    )  # [N, oh, W]
    count = (
        rows[:, :, tx[0] :: fx]
        if len(tx) == 1
        else rows[:, :, tx[0] :: fx] + rows[:, :, tx[1] :: fx]
    )
    return (2 * count >= len(ty) * len(tx)).to(dtype)


def _taps(f: int) -> List[int]:
    """The input positions (within a group of ``f``) that a bilinear shrink by ``f`` weighs."""
    return [f // 2 - 1, f // 2] if f % 2 == 0 else [(f - 1) // 2]


def _div(x: Tensor, divisor: Union[float, Tensor]) -> Tensor:
    """``x / divisor`` correctly rounded on every device. (With a Python number as divisor,
    PyTorch's CUDA kernels multiply by its float32 reciprocal instead, which differs from the
    quotient in the last bit for some values; a tensor divisor takes the exact division.)"""
    return x / torch.as_tensor(divisor, dtype=x.dtype, device=x.device)


GRID_ROUNDINGS = ("floor", "trunc")
MASK_RESIZES = ("padded", "unpadded")


def grid_cell(
    coord: Tensor, extent: Union[int, Tensor], num_grid: Union[int, Tensor], rounding: str = "floor"
) -> Tensor:
    """Grid index of input-pixel coordinates along one axis, as the references compute it:
    ``(coord / extent) // (1 / S)`` in float32 (Python floor-division semantics, official SOLO
    and AdelaiDet; ``rounding="floor"``) or ``trunc((coord / extent) / (1 / S))`` with the
    quotient rounded to float32 (mmdetection's ``floordiv``; ``"trunc"``), as long; the same on
    CPU and CUDA. The two differ when the quotient rounds onto an integer (a grid line).
    ``extent``: the image extent along the axis, or a tensor of extents broadcast against
    ``coord`` (several axes at once). ``num_grid``: S, or a long tensor of one S per coordinate
    (broadcast against ``coord``); ``1 / S`` is rounded to float32 either way."""
    if rounding not in GRID_ROUNDINGS:
        raise ValueError(f"grid_cell: rounding must be one of {GRID_ROUNDINGS}, got {rounding!r}")
    if isinstance(num_grid, Tensor):
        inv = (1.0 / num_grid.to(torch.float64)).to(torch.float32)
    else:
        inv = torch.tensor(1.0 / num_grid, dtype=torch.float32, device=coord.device)
    extent = extent if isinstance(extent, Tensor) else float(extent)
    return torch.div(_div(coord.to(torch.float32), extent), inv, rounding_mode=rounding).long()


def _claimed_cells(
    box_h: Tensor,
    box_w: Tensor,
    center_y: Tensor,
    center_x: Tensor,
    num_grid: Tensor,
    extent: Tensor,
    sigma: float,
    rounding: str = "floor",
) -> Tuple[Tensor, Tensor]:
    """The cells claimed by P (level, instance) pairs, each on its own grid.

    Args:
        box_h, box_w, center_y, center_x: [P] float32 geometry of each pair's instance.
        num_grid: [P] long, S of each pair's level.
        extent: [2, 1] float32, the padded image's height and width.
        rounding: see :func:`grid_cell`.

    Returns:
        ``(pair, cell)``, each [Q] long: pair index and cell index ``i * S + j``, ordered by
        pair, then cell (at most the 3x3 cells around the center cell per pair).
    """
    device = box_h.device
    center = torch.stack([center_y, center_x])  # [2, P]: (y, x)
    half = 0.5 * sigma * torch.stack([box_h, box_w])
    # the cells of the center and of both ends of the central box, both axes at once: [3, 2, P]
    corners = torch.stack([center, center - half, center + half])
    cell, lo, hi = grid_cell(corners, extent, num_grid, rounding).unbind(0)
    lo = torch.maximum(lo.clamp(min=0), cell - 1)  # [2, P]: (top, left)
    hi = torch.minimum(torch.minimum(hi, num_grid - 1), cell + 1)  # [2, P]: (down, right)
    (top, left), (down, right) = lo, hi
    step = torch.arange(3, device=device)
    rows, cols = (
        top[:, None] + step,
        left[:, None] + step,
    )  # [P, 3]: top <= center cell <= down <= top + 2
    claimed = (rows <= down[:, None])[:, :, None] & (cols <= right[:, None])[
        :, None, :
    ]  # [P, 3, 3]
    pair, di, dj = claimed.nonzero(as_tuple=True)  # pair-major, then row, then column
    return pair, (top[pair] + di) * num_grid[pair] + left[pair] + dj


def _check_inputs(gt_masks, gt_classes, gt_boxes, image_hw):
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
            raise ValueError(
                f"solo_targets: image {b}: gt_boxes shape {tuple(gt_boxes[b].shape)}, "
                f"expected ({masks.shape[0]}, 4)"
            )


def _check_class_range(classes: Tensor, img: Tensor, num_classes: int) -> None:
    """Raise if a class of the batch (``classes`` [K], ``img`` [K] the image of each) lies
    outside ``[0, num_classes)``, naming the first such image and its classes (one read-back)."""
    if classes.numel() == 0:
        return
    bad = (classes < 0) | (classes >= num_classes)
    first_bad = torch.where(bad, img, img.numel() + 1).min()
    lo, hi, b = torch.stack([classes.min(), classes.max(), first_bad]).tolist()
    if lo >= 0 and hi < num_classes:
        return
    part = classes[img == b].tolist()
    raise ValueError(
        f"solo_targets: gt_classes must lie in [0, {num_classes}) (MODEL.SOLO.NUM_CLASSES); "
        f"image {b} has range [{min(part)}, {max(part)}]"
    )


def _resize_unpadded(
    gt_masks: List[Tensor],
    img: Tensor,
    local: Tensor,
    image_sizes: Sequence[Tuple[int, int]],
    size: Tuple[int, int],
) -> Tensor:
    """AdelaiDet's mask targets: each instance's *unpadded* mask resized by ``cv2.resize``
    (``INTER_LINEAR`` on uint8) to ``(int(w / f + 0.5), int(h / f + 0.5))``, ``f`` the integer
    factor from the padded size to ``size``, and pasted into the top-left corner.

    Args:
        gt_masks: per image, [N_b, H, W] padded masks; img, local: [R] long, image and index
            within it of each instance to resize.
        image_sizes: per image ``(h, w)``; size: ``(h_m, w_m)`` with ``H = f * h_m``,
            ``W = f * w_m``.

    Returns:
        [R, h_m, w_m] bool, on the masks' device.
    """
    import cv2

    pad_h, pad_w = gt_masks[0].shape[-2:]
    f = pad_h // size[0]
    if size[0] * f != pad_h or size[1] * f != pad_w:
        raise ValueError(
            "solo_targets: mask_resize='unpadded' needs one integer factor from "
            f"{(pad_h, pad_w)} to {size}"
        )
    out = torch.zeros((img.numel(), *size), dtype=torch.bool)
    for row, (b, i) in enumerate(zip(img.tolist(), local.tolist())):
        h, w = (int(v) for v in image_sizes[b])
        mask = gt_masks[b][i, :h, :w].to(device="cpu", dtype=torch.uint8).numpy()
        small = cv2.resize(
            mask, (int(w / f + 0.5), int(h / f + 0.5)), interpolation=cv2.INTER_LINEAR
        )
        out[row, : small.shape[0], : small.shape[1]] = torch.from_numpy(small) != 0
    return out.to(gt_masks[0].device)


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
    one_target_per_cell: bool = False,
    grid_rounding: str = "floor",
    mask_resize: str = "padded",
    image_sizes: Optional[Sequence[Tuple[int, int]]] = None,
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
        one_target_per_cell: keep one mask target per positive cell, the last claimant's
            (official SOLO / Decoupled SOLO); default one per (cell, claimant) (SOLOv2).
        grid_rounding: ``"floor"`` (official, AdelaiDet) or ``"trunc"`` (mmdetection), see
            :func:`grid_cell`.
        mask_resize: ``"padded"`` (official, mmdetection) or ``"unpadded"`` (AdelaiDet, needs
            ``image_sizes``), see the module docstring.
        image_sizes: per image ``(h, w)`` of the unpadded image inside the padded masks.

    Returns:
        One :class:`LevelTargets` per level. Instances with empty masks are ignored.
    """
    num_levels = len(num_grids)
    if len(scale_ranges) != num_levels or len(mask_sizes) != num_levels:
        raise ValueError(
            f"solo_targets: num_grids ({num_levels}), scale_ranges ({len(scale_ranges)}) and "
            f"mask_sizes ({len(mask_sizes)}) must have one entry per level"
        )
    if len(gt_masks) != len(gt_classes) or (
        gt_boxes is not None and len(gt_boxes) != len(gt_masks)
    ):
        raise ValueError(
            "solo_targets: gt_masks, gt_classes (and gt_boxes) need one entry per image"
        )
    if len(gt_masks) == 0:
        raise ValueError("solo_targets: empty batch (no images)")
    if mask_resize not in MASK_RESIZES:
        raise ValueError(
            f"solo_targets: mask_resize must be one of {MASK_RESIZES}, got {mask_resize!r}"
        )
    if mask_resize == "unpadded" and (image_sizes is None or len(image_sizes) != len(gt_masks)):
        raise ValueError(
            "solo_targets: mask_resize='unpadded' needs image_sizes, one (h, w) per image"
        )
    image_hw = tuple(gt_masks[0].shape[-2:])
    device = gt_masks[0].device
    _check_inputs(gt_masks, gt_classes, gt_boxes, image_hw)
    num_images, num_levels = len(gt_masks), len(num_grids)
    classes = torch.cat([c.to(device=device, dtype=torch.long) for c in gt_classes])  # [K]
    img = torch.cat(
        [
            torch.full((m.shape[0],), b, dtype=torch.long, device=device)
            for b, m in enumerate(gt_masks)
        ]
    )
    local = torch.cat(
        [torch.arange(m.shape[0], device=device) for m in gt_masks]
    )  # index within its image
    _check_class_range(classes, img, num_classes)
    # host constants in one copy: scale ranges [L, 2], grids [L], first cell of each level [L],
    # the padded extent [2]
    cells_per_level = [num_images * int(g) ** 2 for g in num_grids]
    starts = [sum(cells_per_level[:lvl]) for lvl in range(num_levels)]
    host = (
        [float(v) for r in scale_ranges for v in r]
        + [float(g) for g in num_grids]
        + [float(v) for v in starts]
    )
    consts = torch.tensor(host + [float(image_hw[0]), float(image_hw[1])], dtype=torch.float64).to(
        device
    )
    ranges = consts[: 2 * num_levels].view(num_levels, 2).to(torch.float32)
    grids = consts[2 * num_levels : 3 * num_levels].long()
    level_start = consts[3 * num_levels : 4 * num_levels].long()
    extent = consts[4 * num_levels :].view(2, 1).to(torch.float32)

    # 1. geometry of every instance (all images at once)
    masks = torch.cat([m.to(torch.bool) for m in gt_masks])  # [K, H, W]
    box_h, box_w, cy, cx, area = instance_geometry(masks)
    if gt_boxes is not None:  # the annotation boxes give the scale, as in both references
        boxes = torch.cat(gt_boxes).to(device=device, dtype=torch.float32)
        box_w, box_h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]

    # 2. (level, instance) pairs: an instance goes to every level whose range holds its scale
    scale = torch.sqrt(box_h * box_w)
    hit = (
        (area > 0)[None] & (scale[None] >= ranges[:, :1]) & (scale[None] <= ranges[:, 1:])
    )  # [L, K]
    pair_level, pair_k = hit.nonzero(as_tuple=True)  # level-major, then image, then instance
    pair, cell = _claimed_cells(
        box_h[pair_k],
        box_w[pair_k],
        cy[pair_k],
        cx[pair_k],
        grids[pair_level],
        extent,
        sigma,
        grid_rounding,
    )
    level, k = pair_level[pair], pair_k[pair]  # per mask target, in the references' order

    # 3. labels: the last claiming instance (highest index) sets a cell's class
    flat = level_start[level] + img[k] * grids[level] ** 2 + cell
    last = torch.full((sum(cells_per_level),), -1, dtype=torch.long, device=device)
    last.scatter_reduce_(0, flat, k, reduce="amax")
    classes = torch.cat(
        [classes, classes.new_full((1,), num_classes)]
    )  # index K (and -1): background
    labels, positive = classes[last], last >= 0  # cells nobody claims (-1) index the background
    if one_target_per_cell:  # the last claimant's mask overwrites the others' (official SOLO)
        sel = (last[flat] == k).nonzero()[:, 0]
        level, k, cell = level[sel], k[sel], cell[sel]

    # 4. mask targets: every instance resized once per mask size; the targets index it by k
    target_masks: Dict[Tuple[int, int], Tensor] = {}
    for size in dict.fromkeys((int(sz[0]), int(sz[1])) for sz in mask_sizes):
        if mask_resize == "unpadded":
            target_masks[size] = _resize_unpadded(gt_masks, img, local, image_sizes, size)
        else:
            target_masks[size] = resize_masks(masks, size, dtype=torch.bool)

    # targets per (level, image), read back once: split by level here, by image in the heads
    counts = torch.bincount(level * num_images + img[k], minlength=num_levels * num_images).tolist()
    per_level = [
        sum(counts[lvl * num_images : (lvl + 1) * num_images]) for lvl in range(num_levels)
    ]
    splits = [t.split(per_level) for t in (img[k], cell, k, local[k])]
    out = []
    for lvl, (g, size) in enumerate(zip(num_grids, mask_sizes)):
        g, start = int(g), starts[lvl]
        stop = start + cells_per_level[lvl]
        out.append(
            LevelTargets(
                labels=labels[start:stop].view(num_images, g, g),
                pos_mask=positive[start:stop].view(num_images, g * g),
                target_img=splits[0][lvl],
                target_cell=splits[1][lvl],
                target_masks=target_masks[(int(size[0]), int(size[1]))],
                target_rows=splits[2][lvl],
                instance_ids=splits[3][lvl],
                image_counts=tuple(counts[lvl * num_images : (lvl + 1) * num_images]),
            )
        )
    return out
