"""Config keys of the SOLO family (``MODEL.SOLO.*``).

:func:`add_solo_config` only *adds* keys; it never changes a Detectron2 default.
Defaults follow the published SOLOv2 R50 model (see ``REFERENCE.md`` section 2);
the SOLO / Decoupled SOLO / light variants change them in their YAML files.

Keys
----
Architecture
    - ``HEAD_NAME``: head in ``SOLO_HEAD_REGISTRY``: ``"SOLOHead"``,
      ``"DecoupledSOLOHead"``, ``"DecoupledSOLOLightHead"`` or ``"SOLOv2Head"``.
    - ``NUM_CLASSES``: thing classes, no background class (COCO: 80).
    - ``IN_FEATURES``: backbone features of the five head levels (P2..P6).
    - ``FPN_STRIDES``: strides the heads see: P2 is resized by 0.5 and P6 to P5's size,
      hence ``[8, 8, 16, 32, 32]``.
    - ``NUM_GRIDS``: grid size S per level.
    - ``SCALE_RANGES``: ``[lo, hi]`` on sqrt(box area) per level (ranges overlap).
    - ``SIGMA``: center-region scale for positive cells.
    - ``INS_CHANNELS``: channels of the head towers (SOLOv2: 512, light/SOLO: 256).
    - ``NUM_CONVS``: convs per tower (SOLO: 7, SOLOv2: 4, light: 2 or 4).
    - ``NORM``: norm of the tower convs (``"GN"`` = GroupNorm(32); ``""`` = none).
    - ``USE_DCN_IN_TOWER``: modulated deformable convs in every tower conv (SOLOv2 DCN).
    - ``PRIOR_PROB``: initial foreground probability of the category output.
SOLOv2 mask-feature branch
    - ``MASK_IN_FEATURES``: features fused at 1/4 scale (P2..P5).
    - ``MASK_MID_CHANNELS``: channels of the per-level convs (128).
    - ``MASK_FEAT_CHANNELS``: unified mask-feature channels = dynamic kernel size (256; light 128).
    - ``MASK_USE_DCN``: modulated deformable 3x3 convs in the mask branch.
Loss (``LOSS.*``)
    - ``FOCAL_ALPHA``, ``FOCAL_GAMMA``, ``CATE_WEIGHT``: sigmoid focal loss on categories.
    - ``DICE_WEIGHT``: weight of the dice mask loss (3.0).
Inference
    - ``SCORE_THR``: category score threshold (after point NMS).
    - ``MASK_THR``: soft-mask binarization threshold.
    - ``NMS_PRE``: candidates kept (by score) before mask computation and NMS.
    - ``UPDATE_THR``: score threshold after Matrix NMS.
    - ``MAX_PER_IMG``: detections per image.
    - ``NMS_METHOD``: ``"matrix"`` (Matrix NMS) or ``"mask"`` (sequential mask NMS).
    - ``NMS_KERNEL``: ``"gaussian"`` or ``"linear"`` Matrix NMS decay.
    - ``NMS_SIGMA``: gaussian kernel sigma (2.0).
"""
from detectron2.config import CfgNode as CN


def add_solo_config(cfg):
    """Add ``MODEL.SOLO.*`` (and the keys shared by all solo_d2 methods) to ``cfg``."""
    from ...config import add_common_config

    add_common_config(cfg)
    if "SOLO" in cfg.MODEL:
        return cfg
    _C = CN()
    _C.HEAD_NAME = "SOLOv2Head"
    _C.NUM_CLASSES = 80
    _C.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    _C.FPN_STRIDES = [8, 8, 16, 32, 32]
    _C.NUM_GRIDS = [40, 36, 24, 16, 12]
    _C.SCALE_RANGES = [[1, 96], [48, 192], [96, 384], [192, 768], [384, 2048]]
    _C.SIGMA = 0.2
    _C.INS_CHANNELS = 512
    _C.NUM_CONVS = 4
    _C.NORM = "GN"
    _C.USE_DCN_IN_TOWER = False
    _C.PRIOR_PROB = 0.01

    _C.MASK_IN_FEATURES = ["p2", "p3", "p4", "p5"]
    _C.MASK_MID_CHANNELS = 128
    _C.MASK_FEAT_CHANNELS = 256
    _C.MASK_USE_DCN = False

    _C.LOSS = CN()
    _C.LOSS.FOCAL_ALPHA = 0.25
    _C.LOSS.FOCAL_GAMMA = 2.0
    _C.LOSS.CATE_WEIGHT = 1.0
    _C.LOSS.DICE_WEIGHT = 3.0

    _C.SCORE_THR = 0.1
    _C.MASK_THR = 0.5
    _C.NMS_PRE = 500
    _C.UPDATE_THR = 0.05
    _C.MAX_PER_IMG = 100
    _C.NMS_METHOD = "matrix"
    _C.NMS_KERNEL = "gaussian"
    _C.NMS_SIGMA = 2.0
    cfg.MODEL.SOLO = _C
    return cfg
