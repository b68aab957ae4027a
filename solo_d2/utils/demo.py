"""Prediction + visualization used by ``tools/demo.py`` (any SOLO variant or BiSeNet)."""
from typing import Dict, Iterator, Tuple

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.utils.visualizer import ColorMode, Visualizer


class DemoPredictor:
    """Run ``DefaultPredictor`` and draw its output.

    Panoptic output (``SOLOPanoptic``) is drawn with ``Visualizer.draw_panoptic_seg`` (the
    model's ``MODEL.PANOPTIC_FPN.COMBINE`` thresholds chose its segments); instances (SOLO
    family) are filtered by ``confidence_threshold`` and drawn with masks, class names and
    scores; semantic logits (BiSeNet) are drawn as a label map.
    """

    def __init__(self, cfg, confidence_threshold: float = 0.3):
        self.cfg = cfg
        self.confidence_threshold = confidence_threshold
        names = list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN)
        self.metadata = MetadataCatalog.get(names[0] if names else "__unused")
        self.predictor = DefaultPredictor(cfg)
        self.input_format = cfg.INPUT.FORMAT

    def __call__(self, image_bgr: np.ndarray) -> Tuple[Dict, np.ndarray]:
        """image_bgr: HxWx3 uint8 (OpenCV order). Returns (predictions, visualization HxWx3 RGB uint8)."""
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
            raise KeyError(f"model output has neither 'instances' nor 'sem_seg': {sorted(predictions)}")
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
