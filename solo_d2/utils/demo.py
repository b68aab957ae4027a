"""Prediction + visualization used by ``tools/demo.py`` (any SOLO variant or BiSeNet)."""

from typing import Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.utils.visualizer import ColorMode, Visualizer

from ..engine.model_metadata import Predictor


class DemoPredictor:
    """Run :class:`solo_d2.engine.Predictor` (Detectron2's ``DefaultPredictor`` that refuses
    weights of another class count) and draw its output with the class names saved with the
    weights (or ``class_names``; see :func:`solo_d2.engine.model_metadata`).

    Panoptic output (``SOLOPanoptic``) is drawn with ``Visualizer.draw_panoptic_seg`` (the
    model's ``MODEL.PANOPTIC_FPN.COMBINE`` thresholds chose its segments); instances (SOLO
    family) are filtered by ``confidence_threshold`` and drawn with masks, class names and
    scores; semantic logits (BiSeNet) are drawn as a label map.
    """

    def __init__(
        self, cfg, confidence_threshold: float = 0.3, class_names: Optional[Sequence[str]] = None
    ):
        self.cfg = cfg
        self.confidence_threshold = confidence_threshold
        self.predictor = Predictor(cfg, class_names)
        self.metadata = self.predictor.metadata
        self.input_format = cfg.INPUT.FORMAT

    def label(self, class_id: int, kind: str = "thing") -> str:
        names = self.metadata.get(kind + "_classes")
        return names[class_id] if names and 0 <= class_id < len(names) else str(class_id)

    def describe(self, predictions: Dict) -> str:
        """A one-line summary of what was drawn: ``3 instances: ring 0.91, star 0.52, ...``."""
        if "panoptic_seg" in predictions:
            segments = predictions["panoptic_seg"][1]
            labels = [
                self.label(int(s["category_id"]), "thing" if s.get("isthing") else "stuff")
                for s in segments
            ]
            return "{} panoptic segments{}".format(
                len(segments), ": " + ", ".join(labels[:10]) if labels else ""
            )
        if "instances" in predictions:
            inst = predictions["instances"]
            labels = [
                "{} {:.2f}".format(self.label(int(c)), float(s))
                for c, s in zip(inst.pred_classes[:10], inst.scores[:10])
            ]
            more = ", ..." if len(inst) > 10 else ""
            return "{} instances{}".format(
                len(inst), ": " + ", ".join(labels) + more if labels else ""
            )
        return "semantic map"

    def __call__(self, image_bgr: np.ndarray) -> Tuple[Dict, np.ndarray]:
        """image_bgr: HxWx3 uint8 (OpenCV order). Returns (predictions, visualization HxWx3 RGB
        uint8)."""
        predictions = self.predictor(image_bgr)
        vis = Visualizer(image_bgr[:, :, ::-1], self.metadata, instance_mode=ColorMode.IMAGE)
        if "panoptic_seg" in predictions:
            seg, segments_info = predictions["panoptic_seg"]
            out = vis.draw_panoptic_seg(seg.to("cpu"), segments_info)
        elif "instances" in predictions:
            inst = predictions["instances"].to("cpu")
            inst = inst[inst.scores >= self.confidence_threshold]
            predictions["instances"] = inst
            out = vis.draw_instance_predictions(inst)
        elif "sem_seg" in predictions:
            out = vis.draw_sem_seg(predictions["sem_seg"].argmax(dim=0).to("cpu"))
        else:
            raise KeyError(
                f"model output has neither 'instances' nor 'sem_seg': {sorted(predictions)}"
            )
        return predictions, out.get_image()

    @torch.no_grad()
    def run_on_video(self, capture) -> Iterator[np.ndarray]:
        """Yield visualized frames (BGR uint8) of an ``cv2.VideoCapture``."""
        while capture.isOpened():
            ok, frame = capture.read()
            if not ok:
                break
            _, vis = self(frame)
            yield np.ascontiguousarray(vis[:, :, ::-1])
