"""Config keys of BiSeNet V1/V2 and of the semantic-segmentation test-time options.

:func:`add_bisenet_config` only adds keys (it never changes a value that exists),
so it can run after, before or twice with the other solo_d2 adders.
"""

from detectron2.config import CfgNode as CN

from ...common_config import add_common_config
from ...common_config import add_key as _add


def add_bisenet_config(cfg):
    """Add ``MODEL.BISENET``, ``MODEL.BISENET_V2`` and ``TEST.SEM_SEG_TTA``.

    MODEL.BISENET (V1 structure, shared loss options):
      - ``SPATIAL_SOURCE``: "spatial_path" (the 3-conv spatial path at 1/8, the
        paper) or "res2" (the backbone's res2 stage at 1/4 replaces it).
      - ``SPATIAL_CHANNELS`` (128), ``CONTEXT_CHANNELS`` (128), ``FFM_CHANNELS``
        (256), ``AUX_CHANNELS`` (64): widths of the V1 blocks.
      - ``NORM``: norm of every new BiSeNet layer ("BN", "SyncBN", "GN", ...).
      - ``LOSS_TYPE``: "ohem" or "ce"; ``OHEM_THRESH`` is a probability (0.7:
        pixels with loss > -log(0.7) are hard); ``OHEM_MIN_KEPT_DIVISOR`` (16):
        at least valid_pixels // 16 pixels are kept.
      - ``AUX_LOSS_WEIGHT``: weight of every auxiliary/booster output (1.0).
    MODEL.BISENET_V2 (CoinCheung/BiSeNet's BiSeNetV2 with the defaults):
      - ``DETAIL_CHANNELS`` ([64, 64, 128]), ``SEMANTIC_CHANNELS`` ([16, 32, 64, 128]: stem,
        S3, S4, S5), ``EXPANSION`` (6): branch widths and the GE layers' expansion.
      - ``HEAD_CHANNELS`` (1024): width of the main head's 3x3 conv.
      - ``BOOSTER_CHANNELS`` (128): width of each booster's first 3x3 conv; its second conv,
        after the nearest x2 upsampling, has stride**2 channels (16, 64, 256, 1024).
      - ``DROPOUT`` (0.1): dropout in the main head and the boosters (training only).
    TEST.SEM_SEG_TTA (used by ``BiSeNetSegmentor`` at inference):
      - ``SCALES``: image scale factors ([1.0] = single scale).
      - ``FLIP``: also run the horizontally flipped image.
      - ``MODE``: "whole" (the padded full image) or "slide" (crop windows).
      - ``CROP_SIZE`` / ``STRIDE``: [h, w] of the sliding window and its step.
    """
    add_common_config(cfg)

    _add(cfg.MODEL, "BISENET", CN())
    b = cfg.MODEL.BISENET
    _add(b, "SPATIAL_SOURCE", "spatial_path")
    _add(b, "SPATIAL_CHANNELS", 128)
    _add(b, "CONTEXT_CHANNELS", 128)
    _add(b, "FFM_CHANNELS", 256)
    _add(b, "AUX_CHANNELS", 64)
    _add(b, "NORM", "BN")
    _add(b, "LOSS_TYPE", "ohem")
    _add(b, "OHEM_THRESH", 0.7)
    _add(b, "OHEM_MIN_KEPT_DIVISOR", 16)
    _add(b, "AUX_LOSS_WEIGHT", 1.0)

    _add(cfg.MODEL, "BISENET_V2", CN())
    v2 = cfg.MODEL.BISENET_V2
    _add(v2, "DETAIL_CHANNELS", [64, 64, 128])
    _add(v2, "SEMANTIC_CHANNELS", [16, 32, 64, 128])
    _add(v2, "EXPANSION", 6)
    _add(v2, "HEAD_CHANNELS", 1024)
    _add(v2, "BOOSTER_CHANNELS", 128)
    _add(v2, "DROPOUT", 0.1)

    _add(cfg.TEST, "SEM_SEG_TTA", CN())
    t = cfg.TEST.SEM_SEG_TTA
    _add(t, "SCALES", [1.0])
    _add(t, "FLIP", False)
    _add(t, "MODE", "whole")
    _add(t, "CROP_SIZE", [1024, 1024])
    _add(t, "STRIDE", [683, 683])
    return cfg
