"""Config adders. Each ``add_*_config`` only adds keys; none changes a Detectron2 default.

``add_solo_config`` lives in :mod:`solo_d2.modeling.solo.config` and
``add_bisenet_config`` in :mod:`solo_d2.modeling.bisenet.config`; both call
:func:`add_common_config` for the keys they share (data augmentation, solver,
distributed CPU training).
"""
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg as _d2_get_cfg


def _add(node, key, value):
    """Add ``key`` to ``node`` unless it exists (so adders can run in any order, twice)."""
    if key not in node:
        node[key] = value


def add_common_config(cfg):
    """Keys shared by every solo_d2 method.

    - ``INPUT.RANDOM_SCALE``: [min, max] factor for a random rescale of the whole
      image before cropping (BiSeNet's [0.75, 2]); empty list disables it.
    - ``INPUT.COLOR_JITTER``: brightness/contrast/saturation strength (0 = off).
    - ``SOLVER.POLY_LR_POWER``: power of ``WarmupPolyLR`` (fvcore's polynomial decay).
    - ``SOLVER.HEAD_LR_MULTIPLIER`` / ``SOLVER.HEAD_PARAM_PREFIXES``: learning-rate
      factor for parameters whose names start with one of the prefixes.
    - ``SOLVER.WEIGHT_DECAY_BIAS``: weight decay of biases (None = SOLVER.WEIGHT_DECAY).
    - ``MODEL.SYNC_BN``: wrap the model in SyncBatchNorm for multi-GPU training.
    - ``SOLVER.OPTIMIZER``: ``"SGD"`` (the published recipes) or ``"ADAMW"`` (used by the
      short CPU schedules, which converge much faster with it from scratch).
    """
    _add(cfg.INPUT, "RANDOM_SCALE", [])
    _add(cfg.INPUT, "COLOR_JITTER", 0.0)
    _add(cfg.SOLVER, "POLY_LR_POWER", 0.9)
    _add(cfg.SOLVER, "HEAD_LR_MULTIPLIER", 1.0)
    _add(cfg.SOLVER, "HEAD_PARAM_PREFIXES", [])
    _add(cfg.SOLVER, "WEIGHT_DECAY_BIAS", None)
    _add(cfg.MODEL, "SYNC_BN", False)
    _add(cfg.SOLVER, "OPTIMIZER", "SGD")
    return cfg


def add_solo_config(cfg):
    from .modeling.solo.config import add_solo_config as _add_solo

    return _add_solo(cfg)


def add_bisenet_config(cfg):
    from .modeling.bisenet.config import add_bisenet_config as _add_bisenet

    return _add_bisenet(cfg)


def get_cfg() -> CN:
    """Detectron2's default config with every solo_d2 key added."""
    cfg = _d2_get_cfg()
    add_common_config(cfg)
    add_solo_config(cfg)
    add_bisenet_config(cfg)
    return cfg
