"""Config keys of the SOLO family (``MODEL.SOLO.*``).

:func:`add_solo_config` only *adds* keys; it never changes a Detectron2 default.
Defaults follow the published SOLOv2 R50 model (official SOLO code, AdelaiDet port);
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
    - ``MASK_TARGETS``: ``"auto"`` (the head's official rule), ``"per_cell"`` (one mask target
      per positive cell, the last claimant's: official SOLO / Decoupled SOLO, mmdetection) or
      ``"per_instance"`` (one per (cell, claiming instance): official SOLOv2, AdelaiDet,
      mmdetection's SOLOv2).
    - ``GRID_ROUNDING``: ``"floor"`` (official SOLO, AdelaiDet: float32 floor division) or
      ``"trunc"`` (mmdetection's ``floordiv``); they differ for a centre exactly on a grid line.
    - ``MASK_TARGET_RESIZE``: ``"padded"`` (official SOLO, mmdetection: the masks padded to the
      batch, resized by the exact stride factor) or ``"unpadded"`` (AdelaiDet: the unpadded mask
      resized by ``cv2.resize`` to ``int(side / f + 0.5)`` and pasted top-left).
    - ``INS_CHANNELS``: channels of the head towers (SOLOv2: 512, light/SOLO: 256).
    - ``NUM_CONVS``: convs per tower (SOLO: 7, SOLOv2: 4, SOLOv2-light: 2 (448) or 3
      (512-DCN), Decoupled-SOLO-light: 4).
    - ``NORM``: norm of the tower convs (``"GN"`` = GroupNorm(32); ``""`` = none).
    - ``USE_DCN_IN_TOWER``: deformable convs in every tower of the head (category, kernel and
      mask towers); which of their convs, and which DCN version: the next two keys.
    - ``TOWER_DCN_CONVS``: with ``USE_DCN_IN_TOWER``, ``"all"`` convs of every tower are
      deformable (official SOLOv2 R101-DCN) or only the ``"last"`` one (official
      SOLOv2-light-512-DCN and Decoupled-SOLO-light-DCN).
    - ``TOWER_DCN_MODULATED``: DCNv2 (True: offsets + modulation, 27 offset-conv channels) or
      DCNv1 (False: offsets only, 18 channels; the official light-DCN models) tower convs.
    - ``PRIOR_PROB``: initial foreground probability of the category output.
    - ``MASK_PRIOR_PROB``: initial probability of the SOLO / Decoupled SOLO mask outputs
      (official: 0.01, bias -4.595; 0.5 gives bias 0). SOLOv2's kernels have no such prior.
SOLOv2 mask-feature branch
    - ``MASK_IN_FEATURES``: features fused at 1/4 scale (P2..P5).
    - ``MASK_MID_CHANNELS``: channels of the per-level convs (128).
    - ``MASK_FEAT_CHANNELS``: unified mask-feature channels = dynamic kernel size (256; light 128).
    - ``MASK_USE_DCN``: modulated deformable 3x3 convs in the mask branch.
Loss (``LOSS.*``)
    - ``FOCAL_ALPHA``, ``FOCAL_GAMMA``, ``CATE_WEIGHT``: sigmoid focal loss on categories.
    - ``DICE_WEIGHT``: weight of the dice mask loss (3.0).
    - ``DICE_NORMALIZER``: ``"targets"`` (sum / mask targets: official SOLO, AdelaiDet) or
      ``"cells"`` (sum / positive cells: mmdetection 3.x); equal unless a cell has two targets.
Backbone
    - ``MODEL.RESNETS.FROZEN_BN_TRAIN_AFFINE``: with ``MODEL.RESNETS.NORM "FrozenBN"``, the BN
      weights and biases of the stages after ``FREEZE_AT`` train while the statistics stay
      frozen (:class:`~solo_d2.modeling.backbone.FrozenStatsBatchNorm2d`), as the official SOLO code
      and mmdetection train them (``norm_eval=True``, ``frozen_stages=1``). False: Detectron2's
      FrozenBN, never trained (AdelaiDet). No effect on a backbone without FrozenBN layers.
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

from ...common_config import add_common_config
from .losses import DICE_NORMALIZERS
from .targets import GRID_ROUNDINGS, MASK_RESIZES


def add_solo_config(cfg):
    """Add ``MODEL.SOLO.*`` (and the keys shared by all solo_d2 methods) to ``cfg``."""
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
    _C.MASK_TARGETS = "auto"
    _C.GRID_ROUNDING = "floor"
    _C.MASK_TARGET_RESIZE = "padded"
    _C.INS_CHANNELS = 512
    _C.NUM_CONVS = 4
    _C.NORM = "GN"
    _C.USE_DCN_IN_TOWER = False
    _C.TOWER_DCN_CONVS = "all"
    _C.TOWER_DCN_MODULATED = True
    _C.PRIOR_PROB = 0.01
    _C.MASK_PRIOR_PROB = 0.01

    _C.MASK_IN_FEATURES = ["p2", "p3", "p4", "p5"]
    _C.MASK_MID_CHANNELS = 128
    _C.MASK_FEAT_CHANNELS = 256
    _C.MASK_USE_DCN = False

    _C.LOSS = CN()
    _C.LOSS.FOCAL_ALPHA = 0.25
    _C.LOSS.FOCAL_GAMMA = 2.0
    _C.LOSS.CATE_WEIGHT = 1.0
    _C.LOSS.DICE_WEIGHT = 3.0
    _C.LOSS.DICE_NORMALIZER = "targets"

    _C.SCORE_THR = 0.1
    _C.MASK_THR = 0.5
    _C.NMS_PRE = 500
    _C.UPDATE_THR = 0.05
    _C.MAX_PER_IMG = 100
    _C.NMS_METHOD = "matrix"
    _C.NMS_KERNEL = "gaussian"
    _C.NMS_SIGMA = 2.0
    cfg.MODEL.SOLO = _C
    if "FROZEN_BN_TRAIN_AFFINE" not in cfg.MODEL.RESNETS:
        cfg.MODEL.RESNETS.FROZEN_BN_TRAIN_AFFINE = False
    return cfg


def validate_solo_config(c) -> None:
    """Raise ValueError naming the key for ``MODEL.SOLO`` values no model can use."""

    def bad(key, value, why):
        raise ValueError(f"MODEL.SOLO.{key} = {value!r}: {why}")

    if int(c.NUM_CLASSES) <= 0:
        bad(
            "NUM_CLASSES",
            c.NUM_CLASSES,
            "must be a positive number of thing classes (no background class)",
        )
    if not c.SIGMA > 0:
        bad(
            "SIGMA",
            c.SIGMA,
            "must be > 0 (fraction of the box used for center sampling, 0.2 in SOLO)",
        )
    if not c.NUM_GRIDS or any(int(g) <= 0 for g in c.NUM_GRIDS):
        bad("NUM_GRIDS", list(c.NUM_GRIDS), "needs one positive grid size per level")
    for lo_hi in c.SCALE_RANGES:
        if len(lo_hi) != 2 or not lo_hi[0] < lo_hi[1]:
            bad(
                "SCALE_RANGES",
                [list(r) for r in c.SCALE_RANGES],
                f"each level needs [lo, hi] with lo < hi, got {list(lo_hi)}",
            )
    los = [r[0] for r in c.SCALE_RANGES]
    his = [r[1] for r in c.SCALE_RANGES]
    if any(b <= a for a, b in zip(los, los[1:])) or any(b <= a for a, b in zip(his, his[1:])):
        bad(
            "SCALE_RANGES",
            [list(r) for r in c.SCALE_RANGES],
            "lower and upper bounds must increase from level to level",
        )
    if any(int(s) <= 0 for s in c.FPN_STRIDES):
        bad("FPN_STRIDES", list(c.FPN_STRIDES), "strides must be positive")
    for key in ("SCORE_THR", "MASK_THR", "UPDATE_THR"):
        if not 0.0 <= float(c[key]) < 1.0:
            bad(key, c[key], "must lie in [0, 1)")
    for key in ("NMS_PRE", "MAX_PER_IMG"):
        if int(c[key]) <= 0:
            bad(key, c[key], "must be positive")
    for key, allowed in (
        ("MASK_TARGETS", ("auto", "per_cell", "per_instance")),
        ("GRID_ROUNDING", GRID_ROUNDINGS),
        ("MASK_TARGET_RESIZE", MASK_RESIZES),
        ("LOSS.DICE_NORMALIZER", DICE_NORMALIZERS),
    ):
        value = c
        for part in key.split("."):
            value = value[part]
        if value not in allowed:
            bad(key, value, f"must be one of {', '.join(map(repr, allowed))}")
    for key in ("PRIOR_PROB", "MASK_PRIOR_PROB"):
        if not 0.0 < float(c[key]) < 1.0:
            bad(key, c[key], "must lie in (0, 1)")
