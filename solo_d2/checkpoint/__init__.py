"""Checkpoint converters from the public SOLO / SOLOv2 / BiSeNet implementations to solo_d2.

``tools/convert_checkpoint.py --from SOURCE IN OUT`` is the command-line front end;
:func:`convert_checkpoint` does the work, :data:`CONVERTERS` lists the sources (each converter
module registers its sources when imported here).
"""

from . import adelaidet as _adelaidet  # noqa: F401  (registers the sources)
from . import bisenet as _bisenet  # noqa: F401
from . import solo_mmdet as _solo_mmdet  # noqa: F401
from . import torchvision_resnet as _torchvision_resnet  # noqa: F401
from .convert import convert_checkpoint
from .core import (
    CONVERTERS,
    Conversion,
    ConversionError,
    load_checkpoint_file,
    register_converter,
    rename_keys,
    verify_state_dict,
)

__all__ = [
    "CONVERTERS",
    "Conversion",
    "ConversionError",
    "convert_checkpoint",
    "load_checkpoint_file",
    "register_converter",
    "rename_keys",
    "verify_state_dict",
]
