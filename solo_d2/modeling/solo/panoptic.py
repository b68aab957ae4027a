"""``SOLOPanoptic``: a SOLO-family instance head (things) and a semantic head (stuff) on one
backbone + FPN, as Panoptic FPN joins Mask R-CNN and a semantic branch.

``MODEL.META_ARCHITECTURE: "SOLOPanoptic"``. The instance part is :class:`~.meta_arch.SOLO`
(``MODEL.SOLO.*``, any SOLO head); the semantic part any head of Detectron2's
``SEM_SEG_HEADS_REGISTRY`` (``MODEL.SEM_SEG_HEAD.NAME``: ``SOLOv2StuffHead``, or Panoptic FPN's
``SemSegFPNHead``) predicting ``NUM_CLASSES`` = stuff classes + 1 ("things", label 0). Training
sums ``INSTANCE_LOSS_WEIGHT`` x the SOLO losses and the semantic loss (Panoptic FPN's keys
``MODEL.PANOPTIC_FPN.*``). Inference returns ``instances``, ``sem_seg`` ([C, H, W] logits) and
``panoptic_seg`` (:func:`~.panoptic_merge.combine_panoptic` with
``MODEL.PANOPTIC_FPN.COMBINE.*``), with category ids in the dataset's contiguous ids
(:func:`solo_d2.data.panoptic.panoptic_class_maps` of ``DATASETS.TEST[0]``, else ``TRAIN[0]``).
"""

from typing import Dict, List, Optional

from detectron2.config import configurable
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, build_sem_seg_head
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from torch import nn

from ...data.panoptic import panoptic_class_maps
from .meta_arch import SOLO
from .panoptic_merge import combine_panoptic

__all__ = ["SOLOPanoptic", "panoptic_class_counts_checked", "panoptic_dataset_maps"]


def panoptic_class_counts_checked(cfg, name: str):
    """``(thing_ids, stuff_ids)`` of dataset ``name`` (:func:`panoptic_class_maps`), raising
    ``ValueError`` naming the key and the dataset unless ``MODEL.SOLO.NUM_CLASSES`` and
    ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` (stuff + 1 "things") fit its thing and stuff counts."""
    thing_ids, stuff_ids = panoptic_class_maps(MetadataCatalog.get(name))
    if len(thing_ids) != cfg.MODEL.SOLO.NUM_CLASSES:
        raise ValueError(
            f"MODEL.SOLO.NUM_CLASSES = {cfg.MODEL.SOLO.NUM_CLASSES}, but dataset {name!r} has "
            f"{len(thing_ids)} thing classes"
        )
    if len(stuff_ids) != cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES:
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.NUM_CLASSES = {cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES}, but dataset "
            f"{name!r} has {len(stuff_ids) - 1} stuff classes: the semantic head needs "
            f"{len(stuff_ids)} (stuff + 1 'things')"
        )
    return thing_ids, stuff_ids


def panoptic_dataset_maps(cfg):
    """``(thing_ids, stuff_ids, dataset name)`` of the first registered dataset of
    ``DATASETS.TEST`` or ``DATASETS.TRAIN``, checked by :func:`panoptic_class_counts_checked`;
    ``(None, None, None)`` when no dataset is named (e.g. a predictor of a custom dataset: ids
    are the model's)."""
    registered = set(DatasetCatalog.list())
    for name in list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN):
        if name in registered:
            return (*panoptic_class_counts_checked(cfg, name), name)
    return None, None, None


@META_ARCH_REGISTRY.register()
class SOLOPanoptic(SOLO):
    """SOLO + a semantic head. Input: dataset dicts with ``image`` and, for training,
    ``instances`` and ``sem_seg`` ([H, W] long: 0 things, 1..S stuff, ``IGNORE_VALUE`` void), as
    :class:`solo_d2.data.panoptic.PanopticDatasetMapper` gives them."""

    @configurable
    def __init__(
        self,
        *,
        sem_seg_head: nn.Module,
        instance_loss_weight: float = 1.0,
        overlap_thresh: float = 0.5,
        stuff_area_thresh: int = 4096,
        instances_score_thresh: float = 0.5,
        thing_ids: Optional[List[int]] = None,
        stuff_ids: Optional[List[int]] = None,
        ignore_value: int = 255,
        **kwargs,
    ):
        """
        Args:
            sem_seg_head: a ``SEM_SEG_HEADS_REGISTRY`` head (``forward(features, targets)``).
            instance_loss_weight: factor of the SOLO losses.
            overlap_thresh, stuff_area_thresh, instances_score_thresh: merge rules.
            thing_ids, stuff_ids: output category ids (see :func:`combine_panoptic`).
            kwargs: :class:`SOLO`'s arguments.
        """
        super().__init__(**kwargs)
        self.sem_seg_head = sem_seg_head
        self.instance_loss_weight = instance_loss_weight
        self.combine_cfg = {
            "overlap_thresh": overlap_thresh,
            "stuff_area_thresh": stuff_area_thresh,
            "instances_score_thresh": instances_score_thresh,
            "thing_ids": thing_ids,
            "stuff_ids": stuff_ids,
        }
        self.ignore_value = ignore_value

    @classmethod
    def from_config(cls, cfg):
        ret = SOLO.from_config(cfg)
        ret["sem_seg_head"] = build_sem_seg_head(cfg, ret["backbone"].output_shape())
        thing_ids, stuff_ids, _ = panoptic_dataset_maps(cfg)
        p = cfg.MODEL.PANOPTIC_FPN
        ret.update(
            instance_loss_weight=p.INSTANCE_LOSS_WEIGHT,
            overlap_thresh=p.COMBINE.OVERLAP_THRESH,
            stuff_area_thresh=p.COMBINE.STUFF_AREA_LIMIT,
            instances_score_thresh=p.COMBINE.INSTANCES_CONFIDENCE_THRESH,
            thing_ids=thing_ids,
            stuff_ids=stuff_ids,
            ignore_value=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
        )
        return ret

    def forward(self, batched_inputs: List[Dict]):
        images = self.preprocess_image(batched_inputs)
        feats = self.backbone(images.tensor)
        cate_logits, mask_outputs = self._head_outputs(images, feats)
        if self.training:
            if any("sem_seg" not in x for x in batched_inputs):
                raise ValueError(
                    "SOLOPanoptic training needs 'sem_seg' in every input dict "
                    "(PanopticDatasetMapper)"
                )
            losses = self.losses(batched_inputs, images, cate_logits, mask_outputs)
            losses = {k: v * self.instance_loss_weight for k, v in losses.items()}
            targets = ImageList.from_tensors(
                [x["sem_seg"].to(self.device) for x in batched_inputs],
                self.backbone.size_divisibility,
                pad_value=self.ignore_value,
            ).tensor
            losses.update(self.sem_seg_head(feats, targets)[1])
            return losses
        results = self.inference(batched_inputs, images, cate_logits, mask_outputs)
        sem_logits = self.sem_seg_head(feats)[0]
        for res, inp, logits, size in zip(results, batched_inputs, sem_logits, images.image_sizes):
            h, w = inp.get("height", size[0]), inp.get("width", size[1])
            sem = sem_seg_postprocess(logits, size, h, w)
            res["sem_seg"] = sem
            ins = res["instances"]
            res["panoptic_seg"] = combine_panoptic(
                ins.pred_masks, ins.scores, ins.pred_classes, sem.argmax(dim=0), **self.combine_cfg
            )
        return results
