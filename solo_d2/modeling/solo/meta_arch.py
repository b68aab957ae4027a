"""``SOLO``: one Detectron2 meta-architecture for SOLO, Decoupled SOLO and SOLOv2.

Pipeline: normalize + pad images -> backbone (ResNet+FPN, P2..P6) -> resize the head
levels to ``MODEL.SOLO.FPN_STRIDES`` (P2 halved, P6 to P5's size) -> optional SOLOv2
mask branch -> head (``MODEL.SOLO.HEAD_NAME``). Training: :func:`solo_targets` +
:func:`solo_loss`. Inference: point NMS, score threshold, top ``NMS_PRE``, soft masks of
the candidates only, :func:`solo_postprocess` (Matrix/mask NMS, resize to the input size).
The variant only shows up in the head's :meth:`~.heads.SOLOHeadBase.soft_masks`.
"""
import inspect
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.structures import BitMasks, ImageList, Instances, PolygonMasks
from torch import nn

from ...utils.inputs import check_model_image
from .config import validate_solo_config
from .heads import SOLOHeadBase, build_solo_head
from .losses import solo_loss
from ..backbone.frozen_stats_bn import train_frozen_bn_affine
from .mask_branch import SOLOv2MaskBranch
from .postprocess import mask_area_maskness, point_nms, solo_postprocess_cells
from .targets import LevelTargets, solo_targets

__all__ = ["SOLO", "gt_bitmasks"]


def gt_bitmasks(instances: Instances, padded_hw: Tuple[int, int], device) -> torch.Tensor:
    """Ground-truth masks of one image as a bool tensor ``[N, H_pad, W_pad]`` on ``device``.

    Accepts ``BitMasks`` (``INPUT.MASK_FORMAT bitmask``) and ``PolygonMasks`` (``polygon``,
    rasterized at the padded size); images without instances give ``[0, H_pad, W_pad]``.
    """
    h, w = padded_hw
    if len(instances) == 0:
        return torch.zeros((0, h, w), dtype=torch.bool, device=device)
    if not instances.has("gt_masks"):
        raise ValueError("SOLO needs instance masks: the dataset dicts have no 'segmentation'")
    masks = instances.gt_masks
    if isinstance(masks, PolygonMasks):
        return BitMasks.from_polygon_masks(masks, h, w).tensor.to(device=device, dtype=torch.bool)
    if isinstance(masks, BitMasks):
        t = masks.tensor.to(device=device, dtype=torch.bool)
        return F.pad(t, (0, w - t.shape[-1], 0, h - t.shape[-2]))
    raise TypeError(f"gt_masks of type {type(masks).__name__} unsupported (use BitMasks or PolygonMasks)")


def _to_float32(x):
    """``x`` (a tensor, or lists/tuples of them) with floating-point tensors made float32."""
    if isinstance(x, (list, tuple)):
        return type(x)(_to_float32(t) for t in x)
    return x.float() if x.is_floating_point() else x


@META_ARCH_REGISTRY.register()
class SOLO(nn.Module):
    """SOLO-family instance segmentation (``MODEL.META_ARCHITECTURE: "SOLO"``).

    Input: Detectron2 dataset dicts after ``DatasetMapper`` (``image [3, H, W]``, optional
    ``instances`` with ``gt_classes`` and ``gt_masks``, optional ``height``/``width``).
    Output (eval): ``[{"instances": Instances}]`` at ``height x width`` with ``pred_masks``
    (bool), ``scores``, ``pred_classes``, ``pred_boxes``.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: SOLOHeadBase,
        mask_branch: Optional[nn.Module],
        in_features: List[str],
        strides: List[int],
        scale_ranges: List[Tuple[float, float]],
        sigma: float,
        target_cfg: Optional[Dict] = None,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        loss_cfg: Dict[str, float],
        test_cfg: Dict,
    ):
        """
        Args:
            backbone: a Detectron2 backbone (e.g. ResNet+FPN) producing ``in_features``.
            head: a SOLO head; mask_branch: :class:`SOLOv2MaskBranch` if the head needs one.
            in_features, strides: backbone features of the head levels and the strides
                the head sees (features are resized to ``padded_size / stride``).
            scale_ranges, sigma: target assignment (see :func:`solo_targets`).
            target_cfg: further keyword arguments of :func:`solo_targets`
                (``one_target_per_cell``, ``grid_rounding``, ``mask_resize``); default: the
                head's official mask-target rule, floor rounding, padded resize.
            pixel_mean, pixel_std: input normalization.
            loss_cfg: ``focal_alpha``, ``focal_gamma``, ``cate_weight``, ``mask_weight``,
                optionally ``dice_normalizer``.
            test_cfg: ``score_thr``, ``nms_pre`` and the keyword arguments of
                :func:`solo_postprocess` (``mask_thr``, ``update_thr``, ``max_per_img``,
                ``nms_method``, ``kernel``, ``sigma``).
        """
        super().__init__()
        n = len(head.num_grids)
        for name, value in (("IN_FEATURES", in_features), ("FPN_STRIDES", strides), ("SCALE_RANGES", scale_ranges)):
            if len(value) != n:
                raise ValueError(f"MODEL.SOLO.{name} has {len(value)} levels but MODEL.SOLO.NUM_GRIDS has {n}")
        if head.needs_mask_features and mask_branch is None:
            raise ValueError(f"{type(head).__name__} needs a mask branch")
        self.backbone = backbone
        self.ins_head = head
        # heads whose soft_masks take ``out=`` (SOLOv2) write each level's run in place
        self._soft_masks_write_out = "out" in inspect.signature(head.soft_masks).parameters
        self.mask_head = mask_branch
        self.in_features = list(in_features)
        self.strides = list(strides)
        self.scale_ranges = [tuple(r) for r in scale_ranges]
        self.sigma = sigma
        self.target_cfg = {"one_target_per_cell": head.one_target_per_cell, **(target_cfg or {})}
        self.loss_cfg = dict(loss_cfg)
        self.test_cfg = dict(test_cfg)
        num_grids = head.num_grids
        level_of_cell = torch.cat([torch.full((g * g,), l, dtype=torch.long) for l, g in enumerate(num_grids)])
        self.register_buffer("_level_of_cell", level_of_cell, False)  # [sum S^2] level of a global cell
        self.register_buffer("_cell_offsets", torch.tensor([0] + [g * g for g in num_grids]).cumsum(0), False)
        self.register_buffer("_stride_of_level", torch.tensor(strides, dtype=torch.float32), False)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.SOLO
        validate_solo_config(c)
        backbone = build_backbone(cfg)
        if cfg.MODEL.RESNETS.FROZEN_BN_TRAIN_AFFINE:  # no-op for a backbone without FrozenBN
            train_frozen_bn_affine(backbone)
        shapes = backbone.output_shape()
        missing = [f for f in c.IN_FEATURES if f not in shapes]
        if missing:
            raise ValueError(f"MODEL.SOLO.IN_FEATURES {missing} not produced by the backbone ({sorted(shapes)})")
        head = build_solo_head(cfg, [shapes[f] for f in c.IN_FEATURES])
        mask_branch = SOLOv2MaskBranch(cfg, shapes) if head.needs_mask_features else None
        if c.NMS_METHOD not in ("matrix", "mask"):
            raise ValueError(f"MODEL.SOLO.NMS_METHOD must be 'matrix' or 'mask', got {c.NMS_METHOD!r}")
        if c.NMS_KERNEL not in ("gaussian", "linear"):
            raise ValueError(f"MODEL.SOLO.NMS_KERNEL must be 'gaussian' or 'linear', got {c.NMS_KERNEL!r}")
        return {
            "backbone": backbone,
            "head": head,
            "mask_branch": mask_branch,
            "in_features": c.IN_FEATURES,
            "strides": c.FPN_STRIDES,
            "scale_ranges": c.SCALE_RANGES,
            "sigma": c.SIGMA,
            "target_cfg": {
                "grid_rounding": c.GRID_ROUNDING,
                "mask_resize": c.MASK_TARGET_RESIZE,
                **({} if c.MASK_TARGETS == "auto" else {"one_target_per_cell": c.MASK_TARGETS == "per_cell"}),
            },
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "loss_cfg": {
                "focal_alpha": c.LOSS.FOCAL_ALPHA,
                "focal_gamma": c.LOSS.FOCAL_GAMMA,
                "cate_weight": c.LOSS.CATE_WEIGHT,
                "mask_weight": c.LOSS.DICE_WEIGHT,
                "dice_normalizer": c.LOSS.DICE_NORMALIZER,
            },
            "test_cfg": {
                "score_thr": c.SCORE_THR,
                "nms_pre": c.NMS_PRE,
                "mask_thr": c.MASK_THR,
                "update_thr": c.UPDATE_THR,
                "max_per_img": c.MAX_PER_IMG,
                "nms_method": c.NMS_METHOD,
                "kernel": c.NMS_KERNEL,
                "sigma": c.NMS_SIGMA,
            },
        }

    @property
    def device(self):
        return self.pixel_mean.device

    @property
    def num_classes(self) -> int:
        return self.ins_head.num_classes

    # ------------------------------------------------------------------ shared
    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        for x in batched_inputs:
            check_model_image(x["image"], where="SOLO.preprocess_image")
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images, self.backbone.size_divisibility)

    def _head_outputs(self, images: ImageList, feats: Optional[Dict[str, torch.Tensor]] = None):
        """Category logits and mask outputs per level (see :class:`~.heads.SOLOHeadBase`);
        ``feats``: the backbone's features of ``images`` when already computed."""
        if feats is None:
            feats = self.backbone(images.tensor)
        h, w = images.tensor.shape[-2:]
        level_feats = []
        for name, stride in zip(self.in_features, self.strides):
            x = feats[name]
            size = (-(-h // stride), -(-w // stride))
            if tuple(x.shape[-2:]) != size:  # P2 -> 1/8, P6 -> 1/32
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            level_feats.append(x)
        mask_feats = self.mask_head(feats) if self.mask_head is not None else None
        return self.ins_head(level_feats, mask_feats)

    def forward(self, batched_inputs: List[Dict]):
        images = self.preprocess_image(batched_inputs)
        cate_logits, mask_outputs = self._head_outputs(images)
        if self.training:
            return self.losses(batched_inputs, images, cate_logits, mask_outputs)
        return self.inference(batched_inputs, images, cate_logits, mask_outputs)

    # ------------------------------------------------------------------ training
    def targets(self, batched_inputs, images: ImageList, mask_outputs) -> List[LevelTargets]:
        """The :class:`~.targets.LevelTargets` of each level for the ground truth of
        ``batched_inputs`` (their ``instances``), as :meth:`losses` uses them."""
        if any("instances" not in x for x in batched_inputs):
            raise ValueError("SOLO training needs 'instances' in every input dict")
        padded = tuple(images.tensor.shape[-2:])
        gt = [x["instances"] for x in batched_inputs]
        gt_boxes = [g.gt_boxes.tensor.to(self.device) for g in gt] if all(g.has("gt_boxes") for g in gt) else None
        return solo_targets(
            [gt_bitmasks(g, padded, self.device) for g in gt],
            [g.gt_classes.to(self.device) for g in gt],
            num_grids=self.ins_head.num_grids,
            scale_ranges=self.scale_ranges,
            mask_sizes=[self.ins_head.mask_size(m) for m in mask_outputs],
            sigma=self.sigma,
            num_classes=self.num_classes,
            gt_boxes=gt_boxes,
            image_sizes=[tuple(s) for s in images.image_sizes],
            **self.target_cfg,
        )

    def losses(self, batched_inputs, images: ImageList, cate_logits, mask_outputs) -> Dict[str, torch.Tensor]:
        targets = self.targets(batched_inputs, images, mask_outputs)
        mask_probs = [
            self.ins_head.soft_masks(out, level, t.target_img, t.target_cell)
            for level, (t, out) in enumerate(zip(targets, mask_outputs))
        ]
        losses = solo_loss(cate_logits, targets, mask_probs, num_classes=self.num_classes, **self.loss_cfg)
        # Keep every mask output in the graph (zero gradient), also on levels or batches without
        # positives, so that DDP sees all head parameters used on every worker.
        outs = [t for out in mask_outputs for t in (out if isinstance(out, (tuple, list)) else (out,))]
        losses["loss_mask"] = losses["loss_mask"] + 0.0 * sum(t.sum() for t in outs)
        return losses

    # ------------------------------------------------------------------ inference
    # Masks of all distinct candidate cells are kept in memory up to this many elements
    # (float32: 512 MiB); beyond it they are ranked in chunks and only the top ``nms_pre``
    # candidates' masks are computed again.
    _MAX_CELL_MASK_ELEMENTS = 1 << 27

    def _cell_masks(self, mask_outputs, b: int, cells: torch.Tensor, size) -> torch.Tensor:
        """Soft masks ``[U, h, w]`` (``size`` = 1/4 of the padded input) of image ``b``'s
        global cell indices ``cells [U]``, sorted ascending (so each level is one run)."""
        if cells.numel() == 0:
            return torch.zeros((0, *size), device=cells.device)
        levels = self._level_of_cell[cells]
        bounds = torch.searchsorted(levels, torch.arange(len(self.strides) + 1, device=cells.device)).tolist()
        out, parts = None, []
        for level in range(len(self.strides)):
            lo, hi = bounds[level], bounds[level + 1]
            if hi == lo:
                continue
            local = cells[lo:hi] - self._cell_offsets[level]
            img_idx = torch.full_like(local, b)
            if self._soft_masks_write_out and (lo, hi) != (0, cells.numel()):
                if out is None:
                    out = torch.empty((cells.numel(), *size), device=cells.device)
                self.ins_head.soft_masks(mask_outputs[level], level, img_idx, local, size=size, out=out[lo:hi])
            else:
                parts.append(self.ins_head.soft_masks(mask_outputs[level], level, img_idx, local, size=size))
        if out is not None:
            return out
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _rank_candidates(self, mask_outputs, b, cells, labels, cand_scores, size) -> torch.Tensor:
        """Indices of the top ``nms_pre`` candidates by category score x maskness among those
        whose mask is larger than their level's stride, as both references rank them (they
        compute the masks of every candidate above the score threshold). Masks are computed
        once per distinct cell, in chunks, and not kept."""
        uniq, inverse = torch.unique(cells, return_inverse=True)
        chunk = max(1, (1 << 24) // max(1, size[0] * size[1]))
        area = cand_scores.new_empty(uniq.numel())
        maskness = cand_scores.new_empty(uniq.numel())
        for start in range(0, uniq.numel(), chunk):
            soft = self._cell_masks(mask_outputs, b, uniq[start : start + chunk], size)
            area[start : start + chunk], maskness[start : start + chunk] = mask_area_maskness(
                soft, self.test_cfg["mask_thr"]
            )
        area, maskness = area[inverse], maskness[inverse]
        valid = area > self._stride_of_level[self._level_of_cell[cells]]
        ranked = torch.where(valid, cand_scores * maskness, torch.full_like(cand_scores, -1.0))
        order = torch.argsort(ranked, descending=True)[: self.test_cfg["nms_pre"]]
        return order[valid[order]]

    @torch.no_grad()
    def inference(self, batched_inputs, images: ImageList, cate_logits, mask_outputs) -> List[Dict]:
        """:meth:`_inference` in float32, also under autocast (AMP): the head outputs are cast,
        so thresholds, maskness and Matrix NMS run at the precision of the references and the
        in-place writes of the masks keep one dtype."""
        with torch.autocast(cate_logits[0].device.type, enabled=False):
            return self._inference(batched_inputs, images, _to_float32(cate_logits), _to_float32(mask_outputs))

    def _inference(self, batched_inputs, images: ImageList, cate_logits, mask_outputs) -> List[Dict]:
        """Per image: candidates = (cell, class) pairs above ``score_thr`` after point NMS;
        the soft mask of each distinct candidate cell at 1/4 of the padded input, computed
        once; then :func:`solo_postprocess_cells` (area filter, score x maskness, top
        ``nms_pre``, NMS, paste). When the masks of all distinct cells would not fit in
        ``_MAX_CELL_MASK_ELEMENTS``, the top ``nms_pre`` by score x maskness are chosen first
        (:meth:`_rank_candidates`, masks in chunks) and only their masks are kept."""
        scores = torch.cat(
            [point_nms(c.sigmoid()).flatten(2).transpose(1, 2) for c in cate_logits], dim=1
        )  # [B, sum S^2, C]
        quarter = tuple(-(-d // 4) for d in images.tensor.shape[-2:])
        results = []
        for b, (inp, image_size) in enumerate(zip(batched_inputs, images.image_sizes)):
            keep = scores[b] > self.test_cfg["score_thr"]
            cand_scores = scores[b][keep]
            cells, labels = keep.nonzero(as_tuple=True)  # cell-major, as the references order them
            uniq, inverse = torch.unique(cells, return_inverse=True)
            too_many = uniq.numel() * quarter[0] * quarter[1] > self._MAX_CELL_MASK_ELEMENTS
            if cand_scores.numel() > self.test_cfg["nms_pre"] and too_many:
                sel = self._rank_candidates(mask_outputs, b, cells, labels, cand_scores, quarter)
                cells, labels, cand_scores = cells[sel], labels[sel], cand_scores[sel]
                uniq, inverse = torch.unique(cells, return_inverse=True)
            soft = self._cell_masks(mask_outputs, b, uniq, quarter)  # each distinct cell once
            out_size = (inp.get("height", image_size[0]), inp.get("width", image_size[1]))
            instances = solo_postprocess_cells(
                soft,
                inverse,
                labels,
                cand_scores,
                self._stride_of_level[self._level_of_cell[cells]],
                image_size=tuple(image_size),
                output_size=tuple(out_size),
                mask_thr=self.test_cfg["mask_thr"],
                update_thr=self.test_cfg["update_thr"],
                max_per_img=self.test_cfg["max_per_img"],
                nms_pre=self.test_cfg["nms_pre"],
                nms_method=self.test_cfg["nms_method"],
                kernel=self.test_cfg["kernel"],
                sigma=self.test_cfg["sigma"],
            )
            results.append({"instances": instances})
        return results
