"""Evaluators: ``build_evaluator``, Cityscapes evaluators that work on Detectron2 v0.6 and main, and
the panoptic evaluators (COCO panoptic quality and Cityscapes')."""
from .build import build_evaluator, coco_tasks_from_config
from .cityscapes import CityscapesInstanceEvaluator, CityscapesSemSegEvaluator
from .panoptic import CityscapesPanopticEvaluator, COCOPanopticEvaluator, panoptic_prediction

__all__ = [
    "build_evaluator",
    "coco_tasks_from_config",
    "CityscapesInstanceEvaluator",
    "CityscapesSemSegEvaluator",
    "CityscapesPanopticEvaluator",
    "COCOPanopticEvaluator",
    "panoptic_prediction",
]
