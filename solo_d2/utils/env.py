"""Facts about the installed detectron2 that solo_d2 adapts to (v0.6 or current main)."""
import functools


@functools.lru_cache(maxsize=None)
def has_compiled_ops() -> bool:
    """True when ``detectron2._C`` is the real compiled extension (not the offline stand-in)."""
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return not getattr(_C, "SOLO_D2_STANDIN", False)
