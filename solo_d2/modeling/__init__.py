from . import backbone, bisenet, solo  # noqa: F401  (registers meta-archs, heads, backbones)
