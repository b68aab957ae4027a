"""Geometry and resizing of full-resolution binary instance masks, for target assignment.

Target assignment reads every ground-truth mask at the padded input resolution: its center of
mass, its extents and its area, and its downsampled copy (the mask target). These are
memory-bound passes over ``N x H x W`` bytes, so this module keeps them few and narrow:

- bool masks are summed as int64 words of 8 pixels (no float copies, see :func:`_row_sums`);
- integer-factor downsampling reads only the sampled rows and columns
  (:func:`_integer_factor_resize`), with the bilinear ``>= 0.5`` result;
- with boxes (the annotation boxes, which bound the masks), :class:`InstanceMasks` makes one
  pass over all masks for the row counts (so the areas), and reads columns and downsampled
  masks only inside a window around each box; an instance whose window does not hold all its
  pixels is read whole (on CPU; see :class:`InstanceMasks`). Results are identical to reading
  every mask whole: areas, first moments and extents are integer sums over the same counts.
"""
import functools
import math
import sys
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["InstanceMasks", "instance_geometry", "resize_masks"]


# int64 words (8 bool bytes each) summed at once: every byte lane stays < 256. The top lane can
# pass 127, so the int64 sum wraps (two's complement, modulo 2**64); its bytes stay exact.
_LANES = 255
_M8 = 0x00FF00FF00FF00FF  # the even byte lanes of a word


def _lane_sums(words: Tensor) -> Tensor:
    """[..., m] int64 sums of words of 8 byte lanes (each lane < 256) -> [...] int64 sum of
    all ``8 m`` lanes (little-endian: lane ``j`` of word ``i`` is pixel ``8 i + j``).

    One word (``m == 1``, rows of at most 255 words) is folded in place, without a copy per
    byte: adjacent lanes are added into four 16-bit lanes (each < 512), and a multiplication
    by ``0x0001000100010001`` adds those into the top 16 bits (< 2048, so the sign stays 0)."""
    if words.shape[-1] != 1:
        return words.contiguous().view(torch.uint8).view(*words.shape[:-1], -1).sum(dim=-1)
    x = words[..., 0]
    y = (x >> 8) & _M8
    x = (x & _M8).add_(y)  # four 16-bit lanes
    x *= 0x0001000100010001
    x >>= 48
    return x


def _largest_divisor(n: int, limit: int) -> int:
    """Largest divisor of ``n`` that is at most ``limit``."""
    return next(d for d in range(min(n, limit), 0, -1) if n % d == 0)


def _grouped_sum(words: Tensor, dim: int) -> Tensor:
    """Sums of int64 words along ``dim`` in groups of at most 255 (so that no byte lane
    carries): ``dim`` is replaced by one entry per group. Groups are equal and contiguous (a
    divisor of the length, one reduction over a reshaped view) unless the length has no
    divisor of a useful size; then slices of 255 are summed one by one."""
    size = words.shape[dim]
    g = _largest_divisor(size, _LANES)
    if 4 * g >= min(size, _LANES):
        return words.view(*words.shape[:dim], size // g, g, *words.shape[dim + 1 :]).sum(dim=dim + 1)
    parts = [words.narrow(dim, i, min(_LANES, size - i)).sum(dim=dim) for i in range(0, size, _LANES)]
    return torch.stack(parts, dim=dim)


def _packed(masks: Tensor) -> bool:
    """Whether :func:`_row_sums` / :func:`_col_sums` can read the masks as int64 words."""
    n, h, w = masks.shape
    return masks.dtype == torch.bool and w % 8 == 0 and n * h * w > 0 and sys.byteorder == "little"


def _row_sums(masks: Tensor) -> Tensor:
    """[N, H] int64 pixel count of each row of binary masks [N, H, W].

    Bool masks whose width is a multiple of 8 are read as int64 words of 8 pixels: summing at
    most 255 words adds the pixels of each byte lane without carries. The words of a row are
    summed in equal contiguous groups (a divisor of the row length), one reduction over a
    reshaped view, so the pass reads each byte once and writes no float copy; the lanes of the
    group sums are then added as bytes (:func:`_lane_sums`)."""
    n, h, w = masks.shape
    if not _packed(masks):
        return masks.to(torch.float32).sum(dim=2).long()
    words = masks.contiguous().view(torch.int64)  # [N, H, W/8]
    return _lane_sums(_grouped_sum(words, dim=2))  # [N, H, groups] -> [N, H]


def _col_sums(masks: Tensor) -> Tensor:
    """[N, W] int64 pixel count of each column of binary masks [N, H, W] (as :func:`_row_sums`,
    the rows summed in groups of at most 255 per byte lane)."""
    n, h, w = masks.shape
    if not _packed(masks):
        return masks.to(torch.float32).sum(dim=1).long()
    blocks = _grouped_sum(masks.contiguous().view(torch.int64), dim=1)  # [N, groups, W/8]
    return blocks.view(torch.uint8).view(n, -1, w).sum(dim=1)  # lane j of word i: column 8 i + j


def instance_geometry(masks: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Box size, center of mass and area of binary masks.

    Args:
        masks: [N, H, W] bool / uint8 / float binary masks (nonzero is foreground).

    Returns:
        ``(box_h, box_w, center_y, center_x, area)``, each [N] float32: the box extents (last -
        first + 1 pixels), the center of mass in pixel-index coordinates (like
        ``scipy.ndimage.center_of_mass``) and the pixel count. Empty masks give zeros. The
        center is the exact first moment (an integer sum), rounded once to float32, divided by
        the area in float32 (see :func:`_geometry`).
    """
    if masks.dtype != torch.bool:
        masks = masks != 0
    return _geometry(_axis_stats(_row_sums(masks)), _axis_stats(_col_sums(masks)))


class _Axis(NamedTuple):
    """Exact statistics of pixel counts along one axis, per mask: ``total`` and ``moment``
    (sum of position x count) [N] int64; ``lo``, ``hi`` [N] int64, the first position with
    pixels and the last plus one (None when extents are not asked for)."""

    total: Tensor
    moment: Tensor
    lo: Optional[Tensor]
    hi: Optional[Tensor]


def _axis_stats(counts: Tensor, offset: Optional[Tensor] = None, extents: bool = True) -> _Axis:
    """:class:`_Axis` of int64 pixel counts [N, L] at positions ``offset + 0 .. L-1`` (``offset``
    [N] long, default 0). Integer sums: the same for any split of the axis into windows."""
    n, length = counts.shape
    pos = torch.arange(length, device=counts.device)
    if offset is not None:
        pos = offset[:, None] + pos  # [N, L]
    total, moment = counts.sum(dim=1), (counts * pos).sum(dim=1)
    if not extents:
        return _Axis(total, moment, None, None)
    if length == 0:
        return _Axis(total, moment, total.clone(), total.clone())
    filled = counts > 0
    lo = torch.where(filled, pos, torch.full_like(pos, torch.iinfo(torch.int64).max)).amin(dim=1)
    hi = torch.where(filled, pos + 1, torch.zeros_like(pos)).amax(dim=1)
    return _Axis(total, moment, lo, hi)


def _geometry(rows: _Axis, cols: _Axis) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """:func:`instance_geometry` from the statistics of the row counts (over y) and the column
    counts (over x). The centers are the integer first moments rounded once to float32 and
    divided by the area in float32, as the references' float32 ``sum(m * coords) / sum(m)``
    computes them up to the rounding of their float32 sums (exact below 2**24); box extents are
    zeros when the statistics have none."""
    area = rows.total.to(torch.float32)
    safe_area = area.clamp(min=1e-6)
    center_y = rows.moment.to(torch.float32) / safe_area
    center_x = cols.moment.to(torch.float32) / safe_area
    if rows.lo is None or cols.lo is None:
        return torch.zeros_like(area), torch.zeros_like(area), center_y, center_x, area
    nonempty = rows.total > 0
    box_h = torch.where(nonempty, rows.hi - rows.lo, torch.zeros_like(rows.lo)).to(torch.float32)
    box_w = torch.where(nonempty, cols.hi - cols.lo, torch.zeros_like(cols.lo)).to(torch.float32)
    return box_h, box_w, center_y, center_x, area


def _integer_factor_resize(masks: Tensor, size: Tuple[int, int]) -> Optional[Tensor]:
    """:func:`resize_masks` of 0/1 masks for integer factors, without floats, or None.

    Bilinear (``align_corners=False``) shrinking by an integer factor ``f`` reads, per output
    row ``y``, input rows ``f y + f/2 - 1`` and ``f y + f/2`` with weights 1/2 (``f`` even) or
    row ``f y + (f - 1)/2`` alone (``f`` odd); the same for columns. On 0/1 masks the result
    is (count of the 1, 2 or 4 samples that are 1) / (number of samples), exactly, so
    ``>= 0.5`` is ``2 * count >= samples``. For ``f_x`` of 2, 4 or 8 each group of ``f_x``
    pixels is read as one int16/32/64 word (the row sums add bytewise without carries), and
    its two middle bytes are the column samples."""
    n, h, w = masks.shape
    oh, ow = size
    if masks.dtype != torch.bool or oh <= 0 or ow <= 0 or h % oh or w % ow:
        return None
    fy, fx = h // oh, w // ow
    ry = [fy // 2 - 1, fy // 2] if fy % 2 == 0 else [(fy - 1) // 2]
    samples = len(ry) * (2 if fx % 2 == 0 else 1)
    packable = sys.byteorder == "little" and masks.is_contiguous() and masks.storage_offset() % fx == 0
    word = _WORDS.get(fx) if packable else None
    m = masks.view(torch.uint8) if word is None else masks.view(word)  # [N, H, W] or [N, H, W / fx]

    rows = m[:, ry[0] :: fy] if len(ry) == 1 else m[:, ry[0] :: fy] + m[:, ry[1] :: fy]  # contiguous rows
    if word is not None:  # one word per output pixel: its two middle bytes, each a count <= 2
        # keep them, multiply by 0x0101 so that the upper one holds their sum (the byte above
        # it, the upper count, falls out of int16 words and is cleared in wider ones), compare
        low = 8 * (fx // 2 - 1)  # bit offset of the lower middle byte
        count = rows & (0x0303 << low) if len(ry) == 1 else rows.bitwise_and_(0x0303 << low)
        count *= 0x0101
        if fx > 2:
            count &= 0xFF << (low + 8)
        return count >= ((samples + 1) // 2) << (low + 8)
    if fx % 2 == 0:
        count = rows[:, :, fx // 2 - 1 :: fx] + rows[:, :, fx // 2 :: fx]
    else:
        count = rows[:, :, (fx - 1) // 2 :: fx]
    return count >= (samples + 1) // 2  # 2 * count >= samples


_WORDS = {2: torch.int16, 4: torch.int32, 8: torch.int64}  # even x factors read as one word each


def resize_masks(masks: Tensor, size: Tuple[int, int], dtype: torch.dtype = torch.float32) -> Tensor:
    """Resize binary masks: bilinear (``align_corners=False``) on floats, then ``>= 0.5``.

    Args:
        masks: [N, H, W] binary masks (any dtype).
        size: target ``(h, w)``.
        dtype: of the result (``torch.bool`` for the compact mask targets).

    Returns:
        [N, h, w] masks in {0, 1}. Bool masks shrunk by integer factors (the mask targets at
        1/4 of the padded input) take an exact integer path with the same result.
    """
    size = (int(size[0]), int(size[1]))
    if masks.shape[0] == 0:
        return torch.zeros((0,) + size, dtype=dtype, device=masks.device)
    out = _integer_factor_resize(masks, size)
    if out is None:
        m = masks.to(torch.float32)
        if tuple(m.shape[-2:]) != size:
            m = F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        out = m >= 0.5
    return out.to(dtype)


def _window(lo: float, hi: float, extent: int, align: int) -> Tuple[int, int]:
    """Window ``[start, stop)`` on one axis around box coordinates ``lo``..``hi``, one pixel
    wider on each side, with both ends multiples of ``align`` inside ``[0, extent]`` (``extent``
    a multiple of ``align``). Non-finite coordinates widen the window to the image."""
    lo = min(max(lo, 0.0), float(extent)) if math.isfinite(lo) else 0.0
    hi = min(max(hi, 0.0), float(extent)) if math.isfinite(hi) else float(extent)
    start = max(math.floor(lo) - 1, 0) // align * align
    stop = min(-(-(math.ceil(hi) + 1) // align) * align, extent)
    return start, max(stop, start + align)


def _group_windows(heights: List[int], widths: List[int], waste: float = 2.0) -> List[Tuple[List[int], int, int]]:
    """Group windows into stacks of one size ``(max height, max width)``.

    Windows are taken largest first; a window joins the current stack while the stack's area
    stays within ``waste`` x the area of its windows. Returns ``(ids, height, width)`` per stack."""
    order = sorted(range(len(heights)), key=lambda i: -heights[i] * widths[i])
    groups: List[Tuple[List[int], int, int]] = []
    ids: List[int] = []
    sh = sw = covered = 0
    for i in order:
        h2, w2 = max(sh, heights[i]), max(sw, widths[i])
        if ids and (len(ids) + 1) * h2 * w2 > waste * (covered + heights[i] * widths[i]):
            groups.append((sorted(ids), sh, sw))
            ids, h2, w2, covered = [], heights[i], widths[i], 0
        ids.append(i)
        sh, sw, covered = h2, w2, covered + heights[i] * widths[i]
    if ids:
        groups.append((sorted(ids), sh, sw))
    return groups


class _Stack(NamedTuple):
    """Windows of one size, gathered: ``ids``, ``y0``, ``x0`` (Python ints) the instance and the
    top-left corner of each window, ``windows`` [n, h, w] bool their pixels."""

    ids: List[int]
    y0: List[int]
    x0: List[int]
    windows: Tensor


class InstanceMasks:
    """The masks of a batch of images, with their geometry and resized copies.

    Args:
        masks: [N, H, W] binary masks, or a list of them (one per image, same H, W), numbered
            together in order (instance ``i`` of the second image is ``N_0 + i``).
        boxes: optional [N_total, 4] ``(x0, y0, x1, y1)`` boxes that should bound the masks
            (the annotation boxes). With them, bool CPU masks whose size is a multiple of
            ``align`` are read inside windows around the boxes (see the module docstring); an
            instance with pixels outside its window is read whole, so results never depend on
            the boxes. On GPUs, where whole-mask passes are cheap and each small op costs a
            launch, the masks are always read whole.
        align: ``(ay, ax)``, window corners are multiples of these (the integer resize factors
            of the mask targets, so that windows resize exactly); ``ax`` is also a multiple of 8.

    The windows of all images are grouped by size (:func:`_group_windows`) into stacks
    ``[n, h, w]`` that are processed as one tensor each; only the window bookkeeping (Python
    integers) and the views that gather and place windows visit the instances one by one.
    """

    def __init__(
        self, masks: Union[Tensor, Sequence[Tensor]], boxes: Optional[Tensor] = None,
        align: Tuple[int, int] = (1, 1),
    ):
        self.parts = [masks] if isinstance(masks, Tensor) else list(masks)
        if not self.parts:
            raise ValueError("InstanceMasks: no masks (an empty list of images)")
        h, w = self.parts[0].shape[-2:]
        device = self.parts[0].device
        if any(p.dim() != 3 or tuple(p.shape[-2:]) != (h, w) for p in self.parts):
            raise ValueError(
                f"InstanceMasks: every image's masks must be [N, {h}, {w}], got {[tuple(p.shape) for p in self.parts]}"
            )
        self.image = torch.tensor(
            [b for b, p in enumerate(self.parts) for _ in range(p.shape[0])], dtype=torch.long
        )  # [N] (CPU) image of each instance
        self.start = [0]  # first instance of each image
        for p in self.parts:
            self.start.append(self.start[-1] + p.shape[0])
        n = self.start[-1]
        self.shape = (n, h, w)
        ay, ax = int(align[0]), int(align[1])
        ax = ax * 8 // math.gcd(ax, 8)
        self.align = (ay, ax)
        self.stacks: List[_Stack] = []
        self.whole = torch.ones(n, dtype=torch.bool, device=device)  # read without windows
        self._checked = False  # whether geometry() has found the masks windows do not hold
        if boxes is not None and tuple(boxes.shape) != (n, 4):
            raise ValueError(f"InstanceMasks: boxes must be [{n}, 4] (one per mask), got {tuple(boxes.shape)}")
        if (
            boxes is None or n == 0 or h % ay or w % ax or sys.byteorder != "little"
            or any(p.dtype != torch.bool or p.device.type != "cpu" for p in self.parts)
        ):
            return
        corners = boxes.tolist()  # Python numbers: N is small
        ys = [_window(b[1], b[3], h, ay) for b in corners]
        xs = [_window(b[0], b[2], w, ax) for b in corners]
        y0, x0 = [a for a, _ in ys], [a for a, _ in xs]
        wh, ww = [b - a for a, b in ys], [b - a for a, b in xs]
        if sum(a * b for a, b in zip(wh, ww)) * 2 > n * h * w:  # windows would not save a pass
            return
        parts = [p.contiguous() for p in self.parts]
        image = self.image.tolist()
        for ids, sh, sw in _group_windows(wh, ww):
            # anchor each window so that the common size fits (h, w, sh, sw are aligned)
            sy0 = [min(y0[i], h - sh) for i in ids]
            sx0 = [min(x0[i], w - sw) for i in ids]
            # one view per window, gathered by one stack (bool views: large enough per window
            # for the copies to be split across threads)
            views = [
                parts[image[i]].as_strided(
                    (sh, sw), (w, 1), parts[image[i]].storage_offset() + ((i - self.start[image[i]]) * h + a) * w + b
                )
                for i, a, b in zip(ids, sy0, sx0)
            ]
            self.stacks.append(_Stack(ids, sy0, sx0, torch.stack(views)))
        self.whole = torch.zeros(n, dtype=torch.bool, device=device)

    def _whole(self, fn: Callable[[Tensor], Tensor], ids: List[int]) -> Tensor:
        """``fn`` of the full masks of instances ``ids`` (ascending, not empty), applied per image
        and concatenated."""
        out = []
        for b, part in enumerate(self.parts):
            local = [i - self.start[b] for i in ids if self.start[b] <= i < self.start[b + 1]]
            if local:
                out.append(fn(part if len(local) == part.shape[0] else part[torch.tensor(local, device=part.device)]))
        return out[0] if len(out) == 1 else torch.cat(out)

    def geometry(self, extents: bool = True) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``(box_h, box_w, center_y, center_x, area)`` of every mask, as :func:`instance_geometry`
        (callers with boxes need no extents: with ``extents`` False, ``box_h`` and ``box_w`` may
        be zeros).

        The row counts (hence areas) come from one pass over all masks; the column counts from
        the windows, and from the whole mask where a window misses some of the mask's pixels
        (its column total then falls short of the area). Every statistic is an integer sum, so
        windows give exactly the numbers of the whole masks."""
        n = self.shape[0]
        if not self.stacks:
            parts = [instance_geometry(p) for p in self.parts]
            return tuple(torch.cat(x) for x in zip(*parts))  # type: ignore[return-value]
        rows = _axis_stats(torch.cat([_row_sums(p) for p in self.parts]), extents=extents)
        device = rows.total.device
        # the column counts of all windows (every instance has one), zero-padded to one width,
        # in stack order; their statistics, put back in instance order
        width = max(s.windows.shape[2] for s in self.stacks)
        counts = torch.cat([F.pad(_col_sums(s.windows), (0, width - s.windows.shape[2])) for s in self.stacks])
        order = torch.tensor([i for s in self.stacks for i in s.ids], device=device)
        x0 = torch.tensor([x for s in self.stacks for x in s.x0], device=device)
        cols = [
            torch.empty(n, dtype=torch.long, device=device).index_copy_(0, order, v)
            for v in _axis_stats(counts, x0, extents) if v is not None
        ]
        missed = cols[0] != rows.total  # a window holds all pixels or not
        if bool(missed.any()):
            self.whole |= missed
            ids = missed.nonzero()[:, 0]
            for dst, src in zip(cols, _axis_stats(self._whole(_col_sums, ids.tolist()), extents=extents)):
                dst.index_copy_(0, ids, src)
        self._checked = True
        return _geometry(rows, _Axis(*cols) if extents else _Axis(cols[0], cols[1], None, None))

    def resized(self, ids: Tensor, size: Tuple[int, int], out: Optional[Tensor] = None) -> Tensor:
        """Masks ``ids`` (ascending) resized as :func:`resize_masks`, bool.

        Args:
            ids: [n] long, ascending instance indices.
            size: ``(h, w)``.
            out: optional [n, h, w] bool tensor of zeros to write into (saves a copy).

        Returns:
            [n, h, w] bool (``out`` when given).
        """
        if self.stacks and not self._checked:
            self.geometry(extents=False)  # finds the masks that windows do not hold
        size = (int(size[0]), int(size[1]))
        n, h, w = self.shape
        device = self.parts[0].device
        if out is not None and (
            out.shape != (ids.numel(),) + size or out.dtype != torch.bool or not out.is_contiguous()
        ):
            raise ValueError(
                f"InstanceMasks.resized: out must be a contiguous bool tensor of shape "
                f"{(ids.numel(),) + size}, got {out.dtype} {tuple(out.shape)}"
            )
        fy, fx = (h // size[0], w // size[1]) if min(size) > 0 else (0, 0)
        exact = (
            bool(self.stacks) and fy > 0 and fx > 0 and h == fy * size[0] and w == fx * size[1]
            and self.align[0] % fy == 0 and self.align[1] % fx == 0
        )
        wanted = ids.tolist()
        if not exact or not wanted:
            small = (
                self._whole(functools.partial(resize_masks, size=size, dtype=torch.bool), wanted) if wanted
                else torch.zeros((0,) + size, dtype=torch.bool, device=device)
            )
            return small if out is None else out.copy_(small)
        if out is None:
            out = torch.zeros((ids.numel(),) + size, dtype=torch.bool, device=device)
        row = [-1] * n  # row of each instance in `out` (-1: not requested)
        for r, i in enumerate(wanted):
            row[i] = r
        oh, ow = size
        base = out.storage_offset()
        for stack in self.stacks:
            win = stack.windows
            small = _integer_factor_resize(win, (win.shape[1] // fy, win.shape[2] // fx))
            sh, sw = small.shape[1:]
            for i, y0, x0, src in zip(stack.ids, stack.y0, stack.x0, small.unbind(0)):
                if row[i] >= 0:  # one copy per window, through a view of its place in `out`
                    out.as_strided((sh, sw), (ow, 1), base + (row[i] * oh + y0 // fy) * ow + x0 // fx).copy_(src)
        whole = [i for i in self.whole.nonzero()[:, 0].tolist() if row[i] >= 0]
        if whole:  # masks with pixels outside their window: resized whole
            rows = torch.tensor([row[i] for i in whole], device=device)
            out[rows] = self._whole(functools.partial(resize_masks, size=size, dtype=torch.bool), whole)
        return out
