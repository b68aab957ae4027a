"""Evaluators: ``build_evaluator`` and Cityscapes evaluators that work on Detectron2 v0.6 and main."""
from .build import build_evaluator, coco_tasks_from_config
from .cityscapes import CityscapesInstanceEvaluator, CityscapesSemSegEvaluator

__all__ = ["build_evaluator", "coco_tasks_from_config", "CityscapesInstanceEvaluator", "CityscapesSemSegEvaluator"]
