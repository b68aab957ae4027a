"""Imports every converter module so that their sources are registered."""
from . import adelaidet, bisenet, solo_mmdet, torchvision_resnet  # noqa: F401
