"""solo_d2: SOLO, Decoupled SOLO, SOLOv2 and BiSeNet for Detectron2.

Importing the package registers its meta-architectures, heads and backbones in
Detectron2's registries and its synthetic datasets in Detectron2's catalogs.
"""

__version__ = "0.1.0"

from . import data, evaluation, modeling  # noqa: E402,F401  (registration side effects)
from .config import add_bisenet_config, add_common_config, add_solo_config, get_cfg  # noqa: E402

__all__ = ["add_solo_config", "add_bisenet_config", "add_common_config", "get_cfg", "__version__"]
