"""Test-time inference of a semantic-segmentation network:
whole image, sliding window, flip, scales.

Pure functions of a ``predict`` callable mapping normalized images [N, 3, h, w]
(h, w multiples of 32) to logits [N, K, h, w]. Every function accepts any image
size: inputs are padded (bottom/right, with 0 = the normalized mean, as
``ImageList`` pads) to a multiple of 32 and the logits are cropped back.
"""

import math
from typing import Callable, Sequence

import torch
from torch.nn import functional as F

__all__ = ["predict_padded", "predict_sliding", "predict_tta"]

Predict = Callable[[torch.Tensor], torch.Tensor]


def predict_padded(
    predict: Predict, image: torch.Tensor, size_divisibility: int = 32
) -> torch.Tensor:
    """image [N, 3, H, W] -> logits [N, K, H, W] (padded to a multiple of ``size_divisibility``)."""
    h, w = image.shape[-2:]
    d = max(int(size_divisibility), 1)
    ph, pw = math.ceil(h / d) * d - h, math.ceil(w / d) * d - w
    if ph or pw:
        image = F.pad(image, (0, pw, 0, ph), value=0.0)
    return predict(image)[..., :h, :w]


def _window_starts(length: int, crop: int, stride: int):
    """Start offsets covering [0, length) with windows of ``crop`` (last one flush with the end)."""
    if length <= crop:
        return [0]
    n = math.ceil((length - crop) / stride) + 1
    return sorted({min(i * stride, length - crop) for i in range(n)})


def predict_sliding(
    predict: Predict,
    image: torch.Tensor,
    crop_size: Sequence[int],
    stride: Sequence[int],
    size_divisibility=32,
) -> torch.Tensor:
    """Crop evaluation: image [1, 3, H, W] -> logits [1, K, H, W], averaged where windows overlap.

    All windows (each min(crop, image) large) are stacked into one batch. A crop at
    least as large as the image gives exactly :func:`predict_padded` of the image.
    """
    if image.shape[0] != 1:
        raise ValueError(
            f"predict_sliding takes one image at a time, got a batch of {image.shape[0]}"
        )
    (ch, cw), (sh, sw) = [int(v) for v in crop_size], [int(v) for v in stride]
    if min(ch, cw, sh, sw) <= 0:
        raise ValueError(
            f"TEST.SEM_SEG_TTA.CROP_SIZE {list(crop_size)} and STRIDE "
            f"{list(stride)} must be positive"
        )
    h, w = image.shape[-2:]
    ch, cw = min(ch, h), min(cw, w)
    boxes = [(y, x) for y in _window_starts(h, ch, sh) for x in _window_starts(w, cw, sw)]
    crops = torch.cat([image[..., y : y + ch, x : x + cw] for y, x in boxes], dim=0)
    logits = predict_padded(predict, crops, size_divisibility)
    out = logits.new_zeros((1, logits.shape[1], h, w))
    count = logits.new_zeros((1, 1, h, w))
    for i, (y, x) in enumerate(boxes):  # a handful of windows
        out[..., y : y + ch, x : x + cw] += logits[i]
        count[..., y : y + ch, x : x + cw] += 1
    return out / count


def predict_tta(
    predict: Predict,
    image: torch.Tensor,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    mode: str = "whole",
    crop_size: Sequence[int] = (1024, 1024),
    stride: Sequence[int] = (683, 683),
    size_divisibility: int = 32,
) -> torch.Tensor:
    """image [1, 3, H, W] -> logits [1, K, H, W] averaged over scales x flips.

    Each scaled view is bilinearly resized, run whole or by sliding window, and its
    logits resized back to (H, W). With ``scales == [1.0]`` and no flip the result is
    the network's logits on the (padded) image itself.
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"TEST.SEM_SEG_TTA.MODE must be 'whole' or 'slide', got {mode!r}")
    if len(scales) == 0 or min(scales) <= 0:
        raise ValueError(f"TEST.SEM_SEG_TTA.SCALES must be positive factors, got {list(scales)}")
    h, w = image.shape[-2:]

    def run(x):
        if mode == "slide":
            return predict_sliding(predict, x, crop_size, stride, size_divisibility)
        return predict_padded(predict, x, size_divisibility)

    total, views = None, 0
    for s in scales:  # a few scales
        size = (max(int(h * s + 0.5), 1), max(int(w * s + 0.5), 1))
        x = (
            image
            if size == (h, w)
            else F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        )
        for flipped in (False, True) if flip else (False,):
            logits = run(x.flip(-1)).flip(-1) if flipped else run(x)
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            total = logits if total is None else total + logits
            views += 1
    return total / views
