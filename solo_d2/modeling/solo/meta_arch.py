"""``SOLO``: one Detectron2 meta-architecture for SOLO, Decoupled SOLO and SOLOv2.

Pipeline: normalize + pad images -> backbone (ResNet+FPN, P2..P6) -> resize the head
levels to ``MODEL.SOLO.FPN_STRIDES`` (P2 halved, P6 to P5's size) -> optional SOLOv2
mask branch -> head (``MODEL.SOLO.HEAD_NAME``). Training: :func:`solo_targets` +
:func:`solo_loss`. Inference, per image and the same on every device: point NMS and the
score threshold on the category grids -> the soft masks of the candidate cells
(:meth:`~.heads.SOLOHeadBase.inference_masks`: one gather and one matmul for SOLOv2) ->
area and maskness -> top ``NMS_PRE`` (:func:`rank_candidates`) -> Matrix NMS -> top
``MAX_PER_IMG`` -> one paste (:func:`select_and_paste`).
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.structures import BitMasks, ImageList, Instances, PolygonMasks
from torch import nn

from ...utils.inputs import check_model_image
from ..backbone.frozen_stats_bn import train_frozen_bn_affine
from .config import validate_solo_config
from .heads import SOLOHeadBase, build_solo_head
from .losses import solo_loss
from .mask_branch import SOLOv2MaskBranch
from .postprocess import (
    check_image_size,
    mask_area_maskness,
    point_nms,
    rank_candidates,
    select_and_paste,
)
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
    raise TypeError(
        f"gt_masks of type {type(masks).__name__} unsupported (use BitMasks or PolygonMasks)"
    )


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
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        sigma: float = 0.2,
        one_target_per_cell: Optional[bool] = None,
        grid_rounding: str = "floor",
        mask_target_resize: str = "padded",
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 2.0,
        cate_loss_weight: float = 1.0,
        dice_loss_weight: float = 3.0,
        dice_normalizer: str = "targets",
        score_thresh: float = 0.1,
        mask_thresh: float = 0.5,
        nms_pre: int = 500,
        update_thresh: float = 0.05,
        max_per_img: int = 100,
        nms_method: str = "matrix",
        nms_kernel: str = "gaussian",
        nms_sigma: float = 2.0,
    ):
        """
        Args:
            backbone: a Detectron2 backbone (e.g. ResNet+FPN) producing ``in_features``.
            head: a SOLO head; mask_branch: :class:`SOLOv2MaskBranch` if the head needs one.
            in_features, strides: backbone features of the head levels and the strides
                the head sees (features are resized to ``padded_size / stride``).
            scale_ranges, sigma: target assignment (see :func:`solo_targets`).
            pixel_mean, pixel_std: input normalization.
            one_target_per_cell: mask targets per positive cell (True) or per (cell,
                claimant) (False); None: the head's official rule (``MODEL.SOLO.MASK_TARGETS``).
            grid_rounding, mask_target_resize: see :func:`solo_targets` (``GRID_ROUNDING``,
                ``MASK_TARGET_RESIZE``).
            focal_loss_alpha, focal_loss_gamma, cate_loss_weight, dice_loss_weight,
                dice_normalizer: see :func:`solo_loss` (``MODEL.SOLO.LOSS.*``).
            score_thresh, mask_thresh, nms_pre, update_thresh, max_per_img, nms_method,
                nms_kernel, nms_sigma: inference (``SCORE_THR``, ``MASK_THR``, ``NMS_PRE``,
                ``UPDATE_THR``, ``MAX_PER_IMG``, ``NMS_METHOD``, ``NMS_KERNEL``, ``NMS_SIGMA``).
        """
        super().__init__()
        n = len(head.num_grids)
        for name, value in (
            ("IN_FEATURES", in_features),
            ("FPN_STRIDES", strides),
            ("SCALE_RANGES", scale_ranges),
        ):
            if len(value) != n:
                raise ValueError(
                    f"MODEL.SOLO.{name} has {len(value)} levels but MODEL.SOLO.NUM_GRIDS has {n}"
                )
        if head.needs_mask_features and mask_branch is None:
            raise ValueError(f"{type(head).__name__} needs a mask branch")
        if nms_method not in ("matrix", "mask"):
            raise ValueError(
                f"MODEL.SOLO.NMS_METHOD must be 'matrix' or 'mask', got {nms_method!r}"
            )
        if nms_kernel not in ("gaussian", "linear"):
            raise ValueError(
                f"MODEL.SOLO.NMS_KERNEL must be 'gaussian' or 'linear', got {nms_kernel!r}"
            )
        self.backbone = backbone
        self.ins_head = head
        self.mask_head = mask_branch
        self.in_features = list(in_features)
        self.strides = list(strides)
        self.scale_ranges = [tuple(r) for r in scale_ranges]
        self.sigma = sigma
        self.one_target_per_cell = (
            head.one_target_per_cell if one_target_per_cell is None else one_target_per_cell
        )
        self.grid_rounding = grid_rounding
        self.mask_target_resize = mask_target_resize
        self.focal_loss_alpha = focal_loss_alpha
        self.focal_loss_gamma = focal_loss_gamma
        self.cate_loss_weight = cate_loss_weight
        self.dice_loss_weight = dice_loss_weight
        self.dice_normalizer = dice_normalizer
        self.score_thresh = score_thresh
        self.mask_thresh = mask_thresh
        self.nms_pre = nms_pre
        self.update_thresh = update_thresh
        self.max_per_img = max_per_img
        self.nms_method = nms_method
        self.nms_kernel = nms_kernel
        self.nms_sigma = nms_sigma
        level_of_cell = torch.cat(
            [torch.full((g * g,), l, dtype=torch.long) for l, g in enumerate(head.num_grids)]
        )
        self.register_buffer(
            "_level_of_cell", level_of_cell, False
        )  # [sum S^2] level of a global cell
        self.register_buffer(
            "_cell_offsets", torch.tensor([0] + [g * g for g in head.num_grids]).cumsum(0), False
        )
        self.register_buffer("_stride_of_level", torch.tensor(strides, dtype=torch.float32), False)
        self.register_buffer(
            "_stride_of_cell", self._stride_of_level[level_of_cell], False
        )  # [sum S^2]
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
            raise ValueError(
                f"MODEL.SOLO.IN_FEATURES {missing} not produced by the backbone ({sorted(shapes)})"
            )
        head = build_solo_head(cfg, [shapes[f] for f in c.IN_FEATURES])
        mask_branch = SOLOv2MaskBranch(cfg, shapes) if head.needs_mask_features else None
        return {
            "backbone": backbone,
            "head": head,
            "mask_branch": mask_branch,
            "in_features": c.IN_FEATURES,
            "strides": c.FPN_STRIDES,
            "scale_ranges": c.SCALE_RANGES,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "sigma": c.SIGMA,
            "one_target_per_cell": None
            if c.MASK_TARGETS == "auto"
            else c.MASK_TARGETS == "per_cell",
            "grid_rounding": c.GRID_ROUNDING,
            "mask_target_resize": c.MASK_TARGET_RESIZE,
            "focal_loss_alpha": c.LOSS.FOCAL_ALPHA,
            "focal_loss_gamma": c.LOSS.FOCAL_GAMMA,
            "cate_loss_weight": c.LOSS.CATE_WEIGHT,
            "dice_loss_weight": c.LOSS.DICE_WEIGHT,
            "dice_normalizer": c.LOSS.DICE_NORMALIZER,
            "score_thresh": c.SCORE_THR,
            "mask_thresh": c.MASK_THR,
            "nms_pre": c.NMS_PRE,
            "update_thresh": c.UPDATE_THR,
            "max_per_img": c.MAX_PER_IMG,
            "nms_method": c.NMS_METHOD,
            "nms_kernel": c.NMS_KERNEL,
            "nms_sigma": c.NMS_SIGMA,
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
        images = [
            (x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs
        ]
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
        gt_boxes = (
            [g.gt_boxes.tensor.to(self.device) for g in gt]
            if all(g.has("gt_boxes") for g in gt)
            else None
        )
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
            one_target_per_cell=self.one_target_per_cell,
            grid_rounding=self.grid_rounding,
            mask_resize=self.mask_target_resize,
        )

    def losses(
        self, batched_inputs, images: ImageList, cate_logits, mask_outputs
    ) -> Dict[str, torch.Tensor]:
        targets = self.targets(batched_inputs, images, mask_outputs)
        mask_probs = [
            self.ins_head.soft_masks(
                out, level, t.target_img, t.target_cell, image_counts=t.image_counts
            )
            for level, (t, out) in enumerate(zip(targets, mask_outputs))
        ]
        losses = solo_loss(
            cate_logits,
            targets,
            mask_probs,
            num_classes=self.num_classes,
            focal_alpha=self.focal_loss_alpha,
            focal_gamma=self.focal_loss_gamma,
            cate_weight=self.cate_loss_weight,
            mask_weight=self.dice_loss_weight,
            dice_normalizer=self.dice_normalizer,
        )
        # Keep every mask output in the graph (zero gradient), also on levels or batches without
        # positives, so that DDP sees all head parameters used on every worker.
        outs = [
            t for out in mask_outputs for t in (out if isinstance(out, (tuple, list)) else (out,))
        ]
        losses["loss_mask"] = losses["loss_mask"] + 0.0 * sum(t.sum() for t in outs)
        return losses

    # ------------------------------------------------------------------ inference
    # Soft masks of all candidate cells of an image are held at once up to this many elements
    # (float32: 512 MiB; 800x1216 inputs: about 2200 cells). Crowded images beyond it (say,
    # random weights with 80 classes above the threshold) compute area and maskness in chunks
    # of cells and then only the masks of the top ``nms_pre`` candidates.
    _MAX_MASK_ELEMENTS = 1 << 27

    @torch.no_grad()
    def inference(self, batched_inputs, images: ImageList, cate_logits, mask_outputs) -> List[Dict]:
        """Per image, ``{"instances": Instances}`` at its ``height x width`` (see
        :meth:`inference_single_image`). Runs in float32, also under autocast (AMP): the head
        outputs are cast, so thresholds, maskness and Matrix NMS run at the precision of the
        references."""
        with torch.autocast(cate_logits[0].device.type, enabled=False):
            cate_logits, mask_outputs = _to_float32(cate_logits), _to_float32(mask_outputs)
            scores = torch.cat(
                [point_nms(c.sigmoid()).flatten(2) for c in cate_logits], dim=2
            ).transpose(1, 2)  # [B, sum S^2, C]
            results = []
            for b, (inp, image_size) in enumerate(zip(batched_inputs, images.image_sizes)):
                out_size = (inp.get("height", image_size[0]), inp.get("width", image_size[1]))
                instances = self.inference_single_image(
                    scores[b],
                    mask_outputs,
                    b,
                    tuple(images.tensor.shape[-2:]),
                    tuple(image_size),
                    tuple(out_size),
                )
                results.append({"instances": instances})
            return results

    def inference_single_image(
        self, scores, mask_outputs, b: int, padded_size, image_size, output_size
    ) -> Instances:
        """Detections of image ``b`` from its category scores after point NMS ``[sum S^2, C]``
        (global cells, level after level) and the head's mask outputs, as the references
        compute them: every (cell, class) above ``score_thresh`` is a candidate, ordered
        cell-major; its soft mask is its cell's (computed once per cell, at 1/4 of the
        padded input). Host read-backs: the candidate cells, the candidates, the number of
        detections (and, for heads with per-level masks, the cells per level)."""
        size = (-(-padded_size[0] // 4), -(-padded_size[1] // 4))
        check_image_size(size, image_size)
        keep = scores > self.score_thresh  # [sum S^2, C]
        cells = keep.any(dim=1).nonzero()[:, 0]  # [U] candidate cells, ascending
        row, labels = keep[cells].nonzero(as_tuple=True)  # [K] candidate -> its cell's row, class
        cand_cells = cells[row]
        cand_scores, strides = scores[cand_cells, labels], self._stride_of_cell[cand_cells]
        soft = None  # [U, h, w] soft masks of the candidate cells, unless too many for memory
        if cells.numel() * size[0] * size[1] <= self._MAX_MASK_ELEMENTS:
            soft = self.ins_head.inference_masks(mask_outputs, b, cells, size)
            area, maskness = mask_area_maskness(soft, self.mask_thresh)
        else:
            area, maskness = self._chunked_area_maskness(mask_outputs, b, cells, size)
        top, ranked, valid = rank_candidates(
            area, maskness, row, cand_scores, strides, self.nms_pre
        )
        top_rows = row[top]
        if soft is None:  # recompute the kept candidates' masks (the heads take ascending cells)
            cell_order, perm = torch.sort(cells[top_rows])
            top_soft = torch.empty((top.numel(), *size), device=scores.device)
            top_soft[perm] = self.ins_head.inference_masks(mask_outputs, b, cell_order, size)
        else:
            top_soft = soft[top_rows]
        return select_and_paste(
            top_soft,
            labels[top],
            ranked,
            valid,
            area[top_rows],
            image_size=image_size,
            output_size=output_size,
            mask_thr=self.mask_thresh,
            update_thr=self.update_thresh,
            max_per_img=self.max_per_img,
            nms_method=self.nms_method,
            kernel=self.nms_kernel,
            sigma=self.nms_sigma,
        )

    def _chunked_area_maskness(self, mask_outputs, b, cells, size):
        """:func:`mask_area_maskness` of the soft masks of ``cells``, computed in chunks of
        ``_MAX_MASK_ELEMENTS`` (crowded images only)."""
        chunk = max(1, self._MAX_MASK_ELEMENTS // (size[0] * size[1]))
        parts = [
            mask_area_maskness(
                self.ins_head.inference_masks(mask_outputs, b, cells[i : i + chunk], size),
                self.mask_thresh,
            )
            for i in range(0, cells.numel(), chunk)
        ]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
