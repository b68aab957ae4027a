"""Checkpoint converters from the public SOLO / SOLOv2 / BiSeNet implementations to solo_d2.

``tools/convert_checkpoint.py --from SOURCE IN OUT`` is the command-line front end;
:func:`convert_checkpoint` does the work, :data:`CONVERTERS` lists the sources.
"""
from .core import (
    CONVERTERS,
    Conversion,
    ConversionError,
    convert_checkpoint,
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
