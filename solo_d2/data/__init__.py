"""Datasets: synthetic COCO/Cityscapes generators, registration and checks.

Importing this package registers the synthetic datasets and points Detectron2's builtin
Cityscapes names at solo_d2's Cityscapes loaders (see :mod:`.datasets`, :mod:`.cityscapes`).
"""

from .cityscapes import (
    load_cityscapes_instances,
    load_cityscapes_semantic,
    register_builtin_cityscapes,
)
from .datasets import (
    SYNTHETIC_DATASETS,
    check_dataset,
    check_image_files,
    ensure_dataset,
    get_dataset_root,
    register_synthetic_datasets,
)
from .mapper import FileNamingDatasetMapper, ImageReadError
from .panoptic_datasets import check_panoptic_dataset, load_cityscapes_panoptic
from .synthetic import generate_synthetic_cityscapes, generate_synthetic_coco
from .synthetic_panoptic import generate_synthetic_coco_panoptic

__all__ = [
    "SYNTHETIC_DATASETS",
    "FileNamingDatasetMapper",
    "ImageReadError",
    "check_dataset",
    "check_image_files",
    "check_panoptic_dataset",
    "ensure_dataset",
    "get_dataset_root",
    "register_synthetic_datasets",
    "generate_synthetic_coco",
    "generate_synthetic_cityscapes",
    "generate_synthetic_coco_panoptic",
    "load_cityscapes_instances",
    "load_cityscapes_semantic",
    "load_cityscapes_panoptic",
    "register_builtin_cityscapes",
]
