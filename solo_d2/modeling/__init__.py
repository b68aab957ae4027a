from . import solo, bisenet  # noqa: F401  (registers meta-archs, heads, backbones)
