#!/usr/bin/env python
import os
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent


def version():
    for line in (ROOT / "solo_d2" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=")[1].strip().strip("\"'")
    raise RuntimeError("solo_d2/__init__.py has no __version__")


def model_zoo_configs():
    """Ship configs/ inside the package as solo_d2/model_zoo/configs (as detectron2 does)."""
    dst = ROOT / "solo_d2" / "model_zoo" / "configs"
    if not dst.exists():
        os.symlink(os.path.relpath(ROOT / "configs", dst.parent), dst)
    return [
        "configs/" + p.relative_to(ROOT / "configs").as_posix()
        for p in (ROOT / "configs").rglob("*.yaml")
    ]


setup(
    name="solo_d2",
    version=version(),
    description="SOLO, Decoupled SOLO, SOLOv2 and BiSeNet for Detectron2",
    packages=find_packages(
        exclude=("tests", "tests.*", "tools", "configs", "datasets", "benchmarks", "benchmarks.*")
    ),
    package_data={"solo_d2.model_zoo": model_zoo_configs()},
    python_requires=">=3.8",
    # detectron2 is deliberately not listed: it is not on the package index
    # (tools/bootstrap.sh installs it); torch/torchvision come first for the same reason.
    # panopticapi-lite (panoptic evaluation) is not listed either: its metadata requires
    # Pillow>=10.4 and numpy<2, which no detectron2 v0.6 (Pillow<10) or main (numpy 2) stack can
    # satisfy, so pip would refuse the install; tools/bootstrap.sh installs it with --no-deps.
    install_requires=[
        "fvcore>=0.1.5",
        "pycocotools>=2.0.2",
        "opencv-python-headless",
        "cityscapesscripts>=2.2",
        "scipy",
        "shapely",
        "tensorboard",
        "matplotlib",
    ],
    extras_require={
        "dev": ["pytest", "pytest-xdist", "hypothesis", "ruff"],
        # TorchScript/ONNX export and onnxruntime inference
        # (tools/export_model.py, tools/onnx_predict.py)
        "export": ["onnx>=1.14", "onnxruntime>=1.16"],
    },
)
