from . import backbone, solo, bisenet  # noqa: F401  (registers meta-archs, heads, backbones)
