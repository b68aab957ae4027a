"""Evaluators: ``build_evaluator``, Cityscapes evaluators that work on Detectron2 v0.6 and main,
Detectron2's SemSegEvaluator with v0.6's metrics on both, and the panoptic evaluators (COCO
panoptic quality and Cityscapes')."""

from .build import build_evaluator, coco_tasks_from_config
from .cityscapes import CityscapesInstanceEvaluator, CityscapesSemSegEvaluator
from .panoptic import CityscapesPanopticEvaluator, COCOPanopticEvaluator, panoptic_prediction
from .sem_seg import SemSegEvaluator, sem_seg_metrics

__all__ = [
    "build_evaluator",
    "coco_tasks_from_config",
    "CityscapesInstanceEvaluator",
    "CityscapesSemSegEvaluator",
    "CityscapesPanopticEvaluator",
    "COCOPanopticEvaluator",
    "panoptic_prediction",
    "SemSegEvaluator",
    "sem_seg_metrics",
]
