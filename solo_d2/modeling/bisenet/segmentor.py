"""``BiSeNetSegmentor``: detectron2's ``SemanticSegmentor`` with test-time options at inference.

Training is exactly ``SemanticSegmentor``'s. Inference runs each image through
:func:`solo_d2.modeling.bisenet.tta.predict_tta` with ``TEST.SEM_SEG_TTA`` (scales,
flip, whole/sliding window), so the options apply both to the trainer's evaluation
and to ``DefaultPredictor``. The returned ``sem_seg`` are logits [K, height, width]
at the requested output resolution (the original image's with ``DefaultPredictor``).
"""

from typing import Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, SemanticSegmentor
from torch.nn import functional as F

from ...utils.inputs import check_model_image
from .tta import predict_tta

__all__ = ["BiSeNetSegmentor"]


@META_ARCH_REGISTRY.register()
class BiSeNetSegmentor(SemanticSegmentor):
    @configurable
    def __init__(
        self,
        *,
        tta_scales: Sequence[float] = (1.0,),
        tta_flip: bool = False,
        tta_mode: str = "whole",
        tta_crop_size: Tuple[int, int] = (1024, 1024),
        tta_stride: Tuple[int, int] = (683, 683),
        **kwargs,
    ):
        super().__init__(**kwargs)
        if tta_mode not in ("whole", "slide"):
            raise ValueError(f"TEST.SEM_SEG_TTA.MODE must be 'whole' or 'slide', got {tta_mode!r}")
        for key, v in (("CROP_SIZE", tta_crop_size), ("STRIDE", tta_stride)):
            if len(v) != 2 or min(v) <= 0:
                raise ValueError(
                    f"TEST.SEM_SEG_TTA.{key} must be two positive ints [h, w], got {list(v)}"
                )
        if len(tta_scales) == 0 or min(tta_scales) <= 0:
            raise ValueError(
                f"TEST.SEM_SEG_TTA.SCALES must be positive factors, got {list(tta_scales)}"
            )
        self.tta = dict(
            scales=tuple(float(s) for s in tta_scales),
            flip=bool(tta_flip),
            mode=tta_mode,
            crop_size=tuple(int(v) for v in tta_crop_size),
            stride=tuple(int(v) for v in tta_stride),
        )

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        t = cfg.TEST.SEM_SEG_TTA
        ret.update(
            tta_scales=list(t.SCALES),
            tta_flip=t.FLIP,
            tta_mode=t.MODE,
            tta_crop_size=list(t.CROP_SIZE),
            tta_stride=list(t.STRIDE),
        )
        return ret

    def _predict(self, images: torch.Tensor) -> torch.Tensor:
        """Normalized, padded images [N, 3, h, w] -> float32 logits [N, K, h, w] (also under
        autocast, so that the test-time sums and resizing run in float32)."""
        logits, _ = self.sem_seg_head(self.backbone(images), None)
        return logits.float()

    def forward(self, batched_inputs):
        for x in batched_inputs:
            check_model_image(x["image"], where="BiSeNetSegmentor")
        if self.training:
            return super().forward(batched_inputs)
        return self.inference(batched_inputs)

    def inference(self, batched_inputs):
        """Returns ``[{"sem_seg": [K, height, width] logits}]``, one per input dict."""
        results = []
        for x in batched_inputs:  # one image at a time: sizes and windows differ
            image = (x["image"].to(self.device) - self.pixel_mean) / self.pixel_std
            logits = predict_tta(
                self._predict,
                image[None],
                size_divisibility=self.backbone.size_divisibility,
                **self.tta,
            )
            height = x.get("height", image.shape[-2])
            width = x.get("width", image.shape[-1])
            if logits.shape[-2:] != (height, width):
                logits = F.interpolate(
                    logits, size=(height, width), mode="bilinear", align_corners=False
                )
            results.append({"sem_seg": logits[0]})
        return results
