"""Datasets: synthetic COCO/Cityscapes generators, registration and checks.

Importing this package registers the synthetic datasets (see :mod:`.datasets`).
"""
from .datasets import SYNTHETIC_DATASETS, check_dataset, check_image_files, ensure_dataset, get_dataset_root, register_synthetic_datasets
from .mapper import FileNamingDatasetMapper, ImageReadError
from .synthetic import generate_synthetic_cityscapes, generate_synthetic_coco

__all__ = [
    "SYNTHETIC_DATASETS",
    "FileNamingDatasetMapper",
    "ImageReadError",
    "check_dataset",
    "check_image_files",
    "ensure_dataset",
    "get_dataset_root",
    "register_synthetic_datasets",
    "generate_synthetic_coco",
    "generate_synthetic_cityscapes",
]
