"""``convert_checkpoint``: a checkpoint of a registered source converted, verified strictly
against the model its config builds, and written atomically (the converters register
themselves when :mod:`solo_d2.checkpoint` is imported)."""

import inspect
from typing import Optional, Sequence

import torch

from ..utils.io import atomic_write
from .core import (
    CONVERTERS,
    Conversion,
    ConversionError,
    _match_bn_counters,
    expected_state_shapes,
    load_checkpoint_with_meta,
    verify_state_dict,
)
from .torchvision_resnet import finish_backbone_conversion

__all__ = ["convert_checkpoint"]


def convert_checkpoint(
    source: str,
    in_path: str,
    out_path: str,
    *,
    config: Optional[str] = None,
    opts: Sequence[str] = (),
) -> Conversion:
    """Convert ``in_path`` from layout ``source``, verify it strictly, write ``out_path``.

    Args:
        source: a key of :data:`CONVERTERS`.
        config: the config to convert to instead of the one the converter names. A converter
            that takes ``config`` (``solo-official``, ``mmdet``) checks the checkpoint against
            it and ``opts``; for the others it replaces the named config (their ``opts`` still
            apply).
        opts: further config overrides (e.g. the shrinking keys of a test model).

    Returns:
        The :class:`Conversion` (with the config and opts actually verified).
    """
    if source not in CONVERTERS:
        raise ConversionError(
            f"unknown checkpoint source {source!r}; known: {', '.join(sorted(CONVERTERS))}"
        )
    state, meta = load_checkpoint_with_meta(in_path)
    fn = CONVERTERS[source].fn
    accepts = inspect.signature(fn).parameters
    kwargs = {
        k: v for k, v in (("config", config), ("opts", list(opts)), ("meta", meta)) if k in accepts
    }
    try:
        result = fn(state, **kwargs)
    except ConversionError as e:
        raise ConversionError(f"{in_path}: {e}") from None
    if config is not None:
        result.config = config
    result.opts = list(result.opts) + list(opts)
    if result.backbone_only:
        return finish_backbone_conversion(result, out_path, source=source)
    expected = expected_state_shapes(result.config, result.opts, result.prefix)
    result.state_dict = _match_bn_counters(result.state_dict, expected)
    verify_state_dict(
        result.state_dict,
        result.config,
        result.opts,
        source=source,
        prefix=result.prefix,
        expected=expected,
    )
    with atomic_write(out_path) as f:
        torch.save(
            {
                "model": {k: v.contiguous() for k, v in result.state_dict.items()},
                "__author__": f"solo_d2 convert_checkpoint --from {source}",
                "matching_heuristics": False,
            },
            f,
        )
    return result
