"""Export wrapper of the SOLO family (SOLO, Decoupled SOLO (+light), SOLOv2 (+light)).

:class:`SOLOExportWrapper` maps one image ``[3, H, W]`` (float, 0-255, in the config's
``INPUT.FORMAT``; any H, W) to fixed-size outputs, with everything after the network in
the graph, as :meth:`SOLO.inference` computes it:

1. normalization, zero padding to a multiple of the backbone's size divisibility;
2. backbone, head levels (P2 halved, P6 to P5's size), mask branch (SOLOv2), head;
3. point NMS on the category grids; every ``(cell, class)`` above ``SCORE_THR`` is a
   candidate (``nonzero``: a dynamic count, never read back into Python);
4. the candidates' soft masks at 1/4 of the padded input; candidates whose binary mask
   (``> MASK_THR``) is not larger than their level's stride are invalid; the valid ones
   are ranked by category score x maskness and the top ``NMS_PRE`` kept (the eager model
   ranks them the same way, in :func:`~solo_d2.modeling.solo.postprocess.rank_candidates`);
5. Matrix NMS (gaussian or linear kernel, same-class decay), ``UPDATE_THR``, top
   ``MAX_PER_IMG`` by decayed score;
6. the survivors' masks upsampled x4 (bilinear), cropped to the image, ``> MASK_THR``;
   boxes from the masks.

Outputs (first ``num_detections`` rows valid, sorted by score; the rest zero, class -1):
``masks [M, H, W]`` bool, ``scores [M]`` float32, ``classes [M]`` int64,
``boxes [M, 4]`` float32 (x0, y0, x1, y1; x1/y1 exclusive), ``num_detections []`` int64,
with ``M = MAX_PER_IMG``.

No Python branch depends on a tensor value: an always-invalid dummy candidate is appended
so the candidate set is never empty (reductions stay defined), counts are clamped with
``torch.minimum`` and the fixed-size outputs are produced by concatenating zeros and
masking, never with ``.item()``. Only ``NMS_METHOD: matrix`` is exported (hard mask NMS
is a sequential loop).
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modeling.solo.heads import SOLOv2Head
from ..modeling.solo.heads_solo import SOLOHead, _DecoupledBase
from ..modeling.solo.matrix_nms import matrix_nms_decay, same_class_iou_matrix
from ..modeling.solo.postprocess import masks_to_boxes, point_nms
from .common import pad_to_multiple

__all__ = ["SOLOExportWrapper", "SOLO_OUTPUT_NAMES"]

SOLO_OUTPUT_NAMES = ("masks", "scores", "classes", "boxes", "num_detections")


def matrix_nms_traceable(
    binary: Tensor, labels: Tensor, scores: Tensor, areas: Tensor, kernel: str, sigma: float
) -> Tensor:
    """Matrix NMS of ``N >= 1`` candidates sorted by score, as
    :func:`~solo_d2.modeling.solo.matrix_nms.matrix_nms` computes it, without size checks."""
    decay_iou = same_class_iou_matrix(binary, labels, areas).triu(diagonal=1)
    return scores * matrix_nms_decay(decay_iou, kernel, sigma)


class SOLOExportWrapper(nn.Module):
    """Traceable single-image inference of a :class:`~solo_d2.modeling.solo.meta_arch.SOLO`
    model (its own backbone, mask branch and head modules, in eval mode)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if model.nms_method != "matrix":
            raise ValueError(
                "export supports MODEL.SOLO.NMS_METHOD 'matrix' only (mask "
                "NMS is a sequential loop)"
            )
        head = model.ins_head
        if isinstance(head, SOLOv2Head):
            self.kind = "solov2"
        elif isinstance(head, SOLOHead):
            self.kind = "solo"
        elif isinstance(head, _DecoupledBase):
            self.kind = "decoupled"
        else:
            raise TypeError(f"no export path for SOLO head {type(head).__name__}")
        self.backbone = model.backbone
        self.ins_head = head
        self.mask_head = model.mask_head
        self.in_features = list(model.in_features)
        self.strides = [int(s) for s in model.strides]
        shapes = self.backbone.output_shape()
        self.feature_strides = [int(shapes[f].stride) for f in self.in_features]
        self.size_divisibility = max(int(self.backbone.size_divisibility), 1)
        for s in self.strides + [4]:
            if self.size_divisibility % s:
                raise ValueError(
                    f"head stride {s} does not divide the size divisibility "
                    f"{self.size_divisibility}"
                )
        self.num_classes = int(head.num_classes)
        self.num_grids = [int(g) for g in head.num_grids]
        self.score_thr = float(model.score_thresh)
        self.mask_thr = float(model.mask_thresh)
        self.update_thr = float(model.update_thresh)
        self.nms_pre = int(model.nms_pre)
        self.max_per_img = int(model.max_per_img)
        self.kernel = model.nms_kernel
        self.sigma = float(model.nms_sigma)
        self.register_buffer("pixel_mean", model.pixel_mean.clone(), False)
        self.register_buffer("pixel_std", model.pixel_std.clone(), False)
        self.register_buffer("max_det", torch.tensor(self.max_per_img, dtype=torch.long), False)
        self.register_buffer("level_of_cell", model._level_of_cell.clone(), False)
        self.register_buffer("cell_offsets", model._cell_offsets.clone(), False)
        self.register_buffer("stride_of_level", model._stride_of_level.clone(), False)

    # ------------------------------------------------------------------ network
    def _network(self, image: Tensor):
        x = (image - self.pixel_mean) / self.pixel_std
        x = pad_to_multiple(x, self.size_divisibility)[None]
        ph, pw = x.shape[-2], x.shape[-1]
        feats = self.backbone(x)
        level_feats = []
        for name, stride, fstride in zip(self.in_features, self.strides, self.feature_strides):
            f = feats[name]
            if fstride != stride:  # static: P2 -> 1/8, P6 -> 1/32
                f = F.interpolate(
                    f, size=(ph // stride, pw // stride), mode="bilinear", align_corners=False
                )
            level_feats.append(f)
        mask_feats = self.mask_head(feats) if self.mask_head is not None else None
        cate_logits, mask_outputs = self.ins_head(level_feats, mask_feats)
        return cate_logits, mask_outputs, ph, pw

    def _soft_masks(self, mask_outputs, cells: Tensor, qh, qw) -> Tensor:
        """Soft masks ``[K, qh, qw]`` of global cells ``cells [K]`` (1/4 of the padded input)."""
        if self.kind == "solov2":
            kernels = torch.cat([k.flatten(2) for k, _ in mask_outputs], dim=2)[0]  # [D, sum S^2]
            feats = mask_outputs[0][1][0]  # [D, qh, qw]
            d = feats.shape[0]
            k = kernels.index_select(1, cells).t()  # [K, D]
            return (k @ feats.reshape(d, -1)).reshape(-1, qh, qw).sigmoid()
        levels = self.level_of_cell.index_select(0, cells)
        out = None
        for level, (s, stride) in enumerate(zip(self.num_grids, self.strides)):
            local = (cells - self.cell_offsets[level]).clamp(min=0, max=s * s - 1)
            if self.kind == "solo":
                m = mask_outputs[level][0].index_select(0, local).sigmoid()
                m = self._resize(m, stride, qh, qw)
            else:
                x_logits, y_logits = mask_outputs[level]
                rows, cols = local // s, local % s
                mx = self._resize(x_logits[0].index_select(0, cols).sigmoid(), stride, qh, qw)
                my = self._resize(y_logits[0].index_select(0, rows).sigmoid(), stride, qh, qw)
                m = mx * my
            m = m * (levels == level).to(m.dtype)[:, None, None]
            out = m if out is None else out + m
        return out

    @staticmethod
    def _resize(m: Tensor, stride: int, qh, qw) -> Tensor:
        """Masks of a level (2x its feature resolution, i.e. 1/(stride/2)) to 1/4."""
        if stride == 8:  # static: already at 1/4 (resizing to the same size is the identity)
            return m
        return F.interpolate(m[None], size=(qh, qw), mode="bilinear", align_corners=False)[0]

    # ------------------------------------------------------------------ forward
    def forward(self, image: Tensor):
        h, w = image.shape[-2], image.shape[-1]
        cate_logits, mask_outputs, ph, pw = self._network(image)
        qh, qw = ph // 4, pw // 4
        scores = torch.cat(
            [point_nms(c.sigmoid()).flatten(2).transpose(1, 2) for c in cate_logits], dim=1
        )[0]
        flat = scores.reshape(-1)  # [sum S^2 * C], cell-major like keep.nonzero() in eager
        idx = torch.nonzero(flat > self.score_thr)[:, 0]
        # one always-invalid dummy candidate: the candidate set is never empty
        idx = torch.cat([idx, idx.new_zeros(1)])
        real = torch.ones_like(idx, dtype=torch.bool)
        real = torch.cat([real[:-1], real.new_zeros(1)])
        cand_scores = flat.index_select(0, idx)
        cells = torch.div(idx, self.num_classes, rounding_mode="floor")
        labels = idx - cells * self.num_classes

        soft = self._soft_masks(mask_outputs, cells, qh, qw)  # [K, qh, qw]
        binary = soft > self.mask_thr
        areas = binary.flatten(1).sum(dim=1).to(torch.float32)
        maskness = (soft * binary.to(soft.dtype)).flatten(1).sum(dim=1) / areas.clamp(min=1.0)
        valid = real & (
            areas > self.stride_of_level.index_select(0, self.level_of_cell.index_select(0, cells))
        )
        ranked = torch.where(valid, cand_scores * maskness, torch.full_like(cand_scores, -1.0))
        order = torch.argsort(ranked, descending=True)[: self.nms_pre]
        soft, binary, areas = (
            soft.index_select(0, order),
            binary.index_select(0, order),
            areas.index_select(0, order),
        )
        labels, ranked, valid = (
            labels.index_select(0, order),
            ranked.index_select(0, order),
            valid.index_select(0, order),
        )

        # invalid candidates are ranked last, so they never decay a valid one
        decayed = matrix_nms_traceable(binary, labels, ranked, areas, self.kernel, self.sigma)
        keep = valid & (decayed >= self.update_thr)
        final = torch.where(keep, decayed, torch.full_like(decayed, -1.0))
        order = torch.argsort(final, descending=True)[: self.max_per_img]
        count = torch.minimum(keep.sum(), self.max_det)
        soft, labels, final = (
            soft.index_select(0, order),
            labels.index_select(0, order),
            final.index_select(0, order),
        )

        up = F.interpolate(soft[:, None], size=(ph, pw), mode="bilinear", align_corners=False)
        masks = up[:, 0, :h, :w] > self.mask_thr  # [L, H, W], L = min(K, MAX_PER_IMG)
        m = self.max_per_img
        ok = torch.arange(m, device=image.device) < count
        masks = (
            torch.cat([masks, masks.new_zeros((m,) + tuple(masks.shape[1:]))])[:m]
            & ok[:, None, None]
        )
        out_scores = torch.cat([final, final.new_zeros(m)])[:m] * ok.to(final.dtype)
        classes = torch.where(
            ok,
            torch.cat([labels, labels.new_zeros(m)])[:m],
            torch.full_like(ok, -1, dtype=torch.long),
        )
        boxes = masks_to_boxes(masks)
        return masks, out_scores, classes, boxes, count
