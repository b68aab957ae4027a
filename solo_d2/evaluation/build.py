"""``build_evaluator``: the evaluator of a dataset, chosen by its metadata ``evaluator_type``."""

import os

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators

from ..compat import has_compiled_ops
from ..data.datasets import ensure_dataset
from .cityscapes import CityscapesInstanceEvaluator, CityscapesSemSegEvaluator
from .panoptic import CityscapesPanopticEvaluator, COCOPanopticEvaluator
from .sem_seg import SemSegEvaluator

__all__ = ["build_evaluator", "coco_tasks_from_config"]

_EVALUATOR_TYPES = (
    "coco",
    "cityscapes_instance",
    "cityscapes_sem_seg",
    "sem_seg",
    "coco_panoptic_seg",
    "cityscapes_panoptic_seg",
)


def coco_tasks_from_config(cfg):
    """COCO tasks a model of ``cfg`` produces: ``("segm", "bbox")`` for mask models.

    SOLO-family meta-architectures (and any config with ``MODEL.MASK_ON``) predict
    masks and mask-derived boxes; other detectors are evaluated on boxes only.
    """
    has_masks = cfg.MODEL.MASK_ON or "SOLO" in cfg.MODEL.META_ARCHITECTURE.upper()
    tasks = ("segm", "bbox") if has_masks else ("bbox",)
    if cfg.MODEL.KEYPOINT_ON:
        tasks = tasks + ("keypoints",)
    return tasks


def build_evaluator(cfg, dataset_name, output_folder=None, distributed=True):
    """
    Args:
        cfg (CfgNode): the model config (selects COCO tasks).
        dataset_name (str): a registered dataset; its metadata ``evaluator_type`` is one of
            "coco", "cityscapes_instance", "cityscapes_sem_seg", "sem_seg", "coco_panoptic_seg"
            (:class:`COCOPanopticEvaluator`), "cityscapes_panoptic_seg" (COCO panoptic PQ on
            its COCO-format json/PNGs and cityscapesscripts' panoptic PQ).
        output_folder (str): where evaluators write results (default ``OUTPUT_DIR/inference``).
        distributed (bool): gather results of all ranks before evaluating.

    Returns:
        DatasetEvaluator: one evaluator, or ``DatasetEvaluators`` when several apply.
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
    meta = MetadataCatalog.get(dataset_name)
    evaluator_type = getattr(meta, "evaluator_type", None)
    if evaluator_type not in _EVALUATOR_TYPES:
        raise ValueError(
            "Dataset '{}' has metadata evaluator_type={!r}; solo_d2 supports {}".format(
                dataset_name, evaluator_type, ", ".join(_EVALUATOR_TYPES)
            )
        )
    ensure_dataset(dataset_name)  # COCOEvaluator reads the json file right away
    if evaluator_type == "coco":
        return COCOEvaluator(
            dataset_name,
            tasks=coco_tasks_from_config(cfg),
            distributed=distributed,
            output_dir=output_folder,
            use_fast_impl=has_compiled_ops(),
        )
    if evaluator_type == "cityscapes_instance":
        return CityscapesInstanceEvaluator(dataset_name)
    if evaluator_type == "coco_panoptic_seg":
        return COCOPanopticEvaluator(dataset_name, output_dir=output_folder)
    if evaluator_type == "cityscapes_panoptic_seg":
        return DatasetEvaluators(
            [
                COCOPanopticEvaluator(dataset_name, output_dir=output_folder),
                CityscapesPanopticEvaluator(dataset_name),
            ]
        )
    # solo_d2's SemSegEvaluator: Detectron2's,
    # with v0.6's metrics on v0.6 and main (main changed mIoU)
    sem_seg = SemSegEvaluator(dataset_name, distributed=distributed, output_dir=output_folder)
    if evaluator_type == "cityscapes_sem_seg":
        return DatasetEvaluators([CityscapesSemSegEvaluator(dataset_name), sem_seg])
    return sem_seg
