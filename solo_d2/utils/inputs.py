"""Validation of model inputs: a clear error instead of a silent wrong result.

solo_d2's models (SOLO family, BiSeNet) take detectron2's standard input: each
``batched_inputs[i]["image"]`` is a ``torch.Tensor`` of shape ``[3, H, W]`` in
``cfg.INPUT.FORMAT`` channel order ("BGR" by default) with values in 0..255 (uint8, or
float holding 0..255). The model normalizes it with ``MODEL.PIXEL_MEAN``/``PIXEL_STD``,
which are in 0..255 units, so an image scaled to [0, 1] is silently mis-normalized.

What ``detectron2.engine.DefaultPredictor`` does with its argument
--------------------------------------------------------------------
``DefaultPredictor(cfg)(original_image)`` expects an ``np.ndarray`` of shape ``(H, W, 3)``,
``uint8``, in **BGR** order (as ``cv2.imread`` returns it), and

1. if ``cfg.INPUT.FORMAT == "RGB"`` reverses the channels (``original_image[:, :, ::-1]``);
2. resizes it with ``ResizeShortestEdge(INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST)``
   (``apply_image``: PIL resize for uint8 input);
3. converts it with ``torch.as_tensor(image.astype("float32").transpose(2, 0, 1))`` to a
   float ``[3, h, w]`` tensor holding 0..255, and calls the model with
   ``[{"image": tensor, "height": H, "width": W}]``; outputs are at the original ``H x W``.

It checks nothing: an RGB array gives swapped colors; a float image in [0, 1] becomes a
nearly black image; a 2-D grayscale ``(H, W)`` or ``(H, W, 4)`` array, a ``(3, H, W)``
(CHW) array or a torch tensor either crash somewhere inside with an unrelated message or,
for CHW, are transposed into a wrong image. :func:`check_model_image` (called by the
models' ``preprocess_image``) turns all of those except the channel order, which cannot
be detected, into a ``ValueError`` that says what is expected and how to convert.
Convert before calling the predictor:

- PIL image: ``np.asarray(pil.convert("RGB"))[:, :, ::-1]`` (RGB -> BGR);
- grayscale ``(H, W)``: ``cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)``;
- RGBA / BGRA ``(H, W, 4)``: ``cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)``;
- float in [0, 1]: ``(img * 255).round().clip(0, 255).astype(np.uint8)``;
- CHW tensor: ``t.permute(1, 2, 0).cpu().numpy()``.
"""

import math

import torch

__all__ = ["check_model_image"]

_HOW = (
    "solo_d2 models take batched_inputs[i]['image'] as a torch.Tensor [3, H, W] in INPUT.FORMAT "
    "channel order ({fmt}) with values in 0..255 (uint8, or float holding 0..255); "
    "DefaultPredictor takes an np.ndarray (H, W, 3) uint8 BGR image and builds that tensor."
)


def _fail(where, problem, fix, input_format):
    raise ValueError("{}: {}. {} {}".format(where, problem, fix, _HOW.format(fmt=input_format)))


def check_model_image(image, input_format: str = "BGR", where: str = "model input") -> None:
    """Raise ``ValueError`` unless ``image`` is a valid model input image.

    Valid: a ``torch.Tensor`` of shape ``[3, H, W]`` (H, W >= 1), uint8 or floating point,
    whose values are in 0..255. Refused, each with a message saying what is expected and
    how to convert:

    - not a tensor (e.g. an ``np.ndarray``): ``torch.as_tensor(img.transpose(2, 0, 1))``;
    - 2-D (grayscale) ``[H, W]``: replicate to 3 channels;
    - ``[1, H, W]`` or ``[4, H, W]``: 3 channels expected (drop alpha / replicate gray);
    - HWC layout ``[H, W, 3]``: ``image.permute(2, 0, 1)``;
    - 4-D batch ``[N, 3, H, W]``: one dict per image;
    - floating point with all values within [0, 1], not all integers (an image scaled to
      [0, 1]): multiply by 255. Integer-valued floats are accepted, so a (nearly) black
      uint8 frame that ``DefaultPredictor`` converted to float (values 0 and 1) passes;
    - non-finite values, values below 0 or above 255.

    Args:
        image: the ``"image"`` entry of one input dict.
        input_format: ``cfg.INPUT.FORMAT`` (used in the messages only).
        where: who checks (e.g. ``"SOLO.preprocess_image"``), the start of the message.
    """
    if not isinstance(image, torch.Tensor):
        _fail(
            where,
            "the image is a {}, not a torch.Tensor".format(type(image).__name__),
            "Convert an (H, W, 3) array with torch.as_tensor(img.transpose(2, 0, 1).copy()).",
            input_format,
        )
    shape = tuple(image.shape)
    if image.dim() == 2:
        _fail(
            where,
            "the image has shape {} (2-D, grayscale?)".format(list(shape)),
            "Replicate it to 3 channels: image[None].expand(3, -1, -1), or "
            "cv2.COLOR_GRAY2BGR before DefaultPredictor.",
            input_format,
        )
    if image.dim() == 4:
        _fail(
            where,
            "the image has shape {} (a batch?)".format(list(shape)),
            "Pass one dict per image, each with a [3, H, W] tensor.",
            input_format,
        )
    if image.dim() != 3:
        _fail(
            where, "the image has shape {}".format(list(shape)), "Expected [3, H, W].", input_format
        )
    if shape[0] != 3:
        if shape[-1] in (3, 4) and shape[0] > 4:
            _fail(
                where,
                "the image has shape {} (HWC layout?)".format(list(shape)),
                "Use channels first: image.permute(2, 0, 1){}.".format(
                    "[:3] (dropping alpha)" if shape[-1] == 4 else ""
                ),
                input_format,
            )
        if shape[0] == 4:
            _fail(
                where,
                "the image has 4 channels {} (RGBA/BGRA?)".format(list(shape)),
                "Drop the alpha channel: image[:3] (cv2.COLOR_BGRA2BGR before DefaultPredictor).",
                input_format,
            )
        if shape[0] == 1:
            _fail(
                where,
                "the image has 1 channel {} (grayscale?)".format(list(shape)),
                "Replicate it to 3 channels: image.expand(3, -1, -1).",
                input_format,
            )
        _fail(
            where, "the image has shape {}".format(list(shape)), "Expected [3, H, W].", input_format
        )
    if shape[1] < 1 or shape[2] < 1:
        _fail(
            where, "the image is empty {}".format(list(shape)), "Expected H, W >= 1.", input_format
        )
    if image.dtype == torch.uint8:
        return
    if not (image.is_floating_point() or image.dtype in (torch.int16, torch.int32, torch.int64)):
        _fail(
            where,
            "the image has dtype {}".format(image.dtype),
            "Use uint8 or float32.",
            input_format,
        )
    x = image.detach()
    lo, hi = float(x.min()), float(x.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        _fail(
            where,
            "the image has non-finite values (min {}, max {})".format(lo, hi),
            "Check the image source.",
            input_format,
        )
    if lo < 0 or hi > 255:
        _fail(
            where,
            "the image values span [{:.4g}, {:.4g}], outside 0..255 (already normalized?)".format(
                lo, hi
            ),
            "Pass raw pixel values; the model subtracts MODEL.PIXEL_MEAN and divides "
            "by MODEL.PIXEL_STD itself.",
            input_format,
        )
    if image.is_floating_point() and 0 < hi <= 1.0 and bool((x != x.round()).any()):
        _fail(
            where,
            "the image values span [{:.4g}, {:.4g}]: a float image scaled to [0, 1]?".format(
                lo, hi
            ),
            "Multiply by 255 (MODEL.PIXEL_MEAN/PIXEL_STD are in 0..255 units).",
            input_format,
        )
