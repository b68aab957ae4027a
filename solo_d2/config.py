"""Config adders. Each ``add_*_config`` only adds keys; none changes a Detectron2 default.

``add_solo_config`` lives in :mod:`solo_d2.modeling.solo.config` and
``add_bisenet_config`` in :mod:`solo_d2.modeling.bisenet.config`; both call
:func:`~solo_d2.common_config.add_common_config` for the keys they share (data augmentation,
solver, distributed CPU training). :func:`get_cfg` composes them (imports run one way: this
module -> the method adders -> the common adder).
"""

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg as _d2_get_cfg

from .common_config import add_common_config
from .modeling.bisenet.config import add_bisenet_config
from .modeling.solo.config import add_solo_config

__all__ = ["add_common_config", "add_solo_config", "add_bisenet_config", "get_cfg"]


def get_cfg() -> CN:
    """Detectron2's default config with every solo_d2 key added."""
    cfg = _d2_get_cfg()
    add_common_config(cfg)
    add_solo_config(cfg)
    add_bisenet_config(cfg)
    return cfg
