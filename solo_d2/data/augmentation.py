"""Training/test augmentations shared by the SOLO and BiSeNet recipes.

``build_augmentation(cfg, is_train)`` returns a list of detectron2 ``Augmentation``:

train: [RandomScale (INPUT.RANDOM_SCALE) | ResizeShortestEdge (INPUT.MIN_SIZE_TRAIN...)],
       [crop (INPUT.CROP; category-area constrained for semantic segmentation)],
       [flip (INPUT.RANDOM_FLIP)], [color jitter (INPUT.COLOR_JITTER)]
test:  [ResizeShortestEdge (INPUT.MIN_SIZE_TEST, MAX_SIZE_TEST)] (none when MIN_SIZE_TEST is 0)
"""

from typing import List

import numpy as np
from detectron2.data import transforms as T
from fvcore.transforms.transform import NoOpTransform
from PIL import Image


class RandomScale(T.Augmentation):
    """Rescale the whole image by a factor drawn uniformly from [min_scale, max_scale]."""

    def __init__(self, min_scale: float, max_scale: float, interp=None):
        super().__init__()
        if not 0 < min_scale <= max_scale:
            raise ValueError(
                "INPUT.RANDOM_SCALE must be [min, max] with 0 < min <= max, got "
                f"{[min_scale, max_scale]}"
            )
        self.min_scale, self.max_scale = min_scale, max_scale

        self.interp = Image.BILINEAR if interp is None else interp

    def get_transform(self, image):
        h, w = image.shape[:2]
        s = np.random.uniform(self.min_scale, self.max_scale)
        new_h, new_w = max(1, int(round(h * s))), max(1, int(round(w * s)))
        if (new_h, new_w) == (h, w):
            return NoOpTransform()
        return T.ResizeTransform(h, w, new_h, new_w, self.interp)


def _flip(cfg) -> List[T.Augmentation]:
    mode = cfg.INPUT.RANDOM_FLIP
    if mode == "none":
        return []
    if mode not in ("horizontal", "vertical"):
        raise ValueError(
            f"INPUT.RANDOM_FLIP must be 'horizontal', 'vertical' or 'none', got {mode!r}"
        )
    return [T.RandomFlip(horizontal=mode == "horizontal", vertical=mode == "vertical")]


def _crop(cfg) -> List[T.Augmentation]:
    if not cfg.INPUT.CROP.ENABLED:
        return []
    c = cfg.INPUT.CROP
    max_area = c.get("SINGLE_CATEGORY_MAX_AREA", 1.0)
    if max_area < 1.0:
        ignore = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        return [T.RandomCrop_CategoryAreaConstraint(c.TYPE, tuple(c.SIZE), max_area, ignore)]
    return [T.RandomCrop(c.TYPE, tuple(c.SIZE))]


def _color_jitter(strength: float) -> List[T.Augmentation]:
    if strength <= 0:
        return []
    lo, hi = max(0.0, 1.0 - strength), 1.0 + strength
    return [T.RandomBrightness(lo, hi), T.RandomContrast(lo, hi), T.RandomSaturation(lo, hi)]


def build_augmentation(cfg, is_train: bool) -> List[T.Augmentation]:
    if not is_train:
        if cfg.INPUT.MIN_SIZE_TEST == 0:
            return []
        return [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]
    scale = list(cfg.INPUT.RANDOM_SCALE)
    if scale:
        if len(scale) != 2:
            raise ValueError(f"INPUT.RANDOM_SCALE must have 2 values [min, max], got {scale}")
        augs: List[T.Augmentation] = [RandomScale(*scale)]
    else:
        augs = [
            T.ResizeShortestEdge(
                cfg.INPUT.MIN_SIZE_TRAIN,
                cfg.INPUT.MAX_SIZE_TRAIN,
                cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING,
            )
        ]
    return augs + _crop(cfg) + _flip(cfg) + _color_jitter(cfg.INPUT.COLOR_JITTER)
