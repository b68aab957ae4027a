"""Registration of solo_d2's synthetic datasets and pre-training checks of real ones.

Registered names (generated on first use under ``$DETECTRON2_DATASETS``, default
``datasets/``, read once at import time like Detectron2's builtin datasets):

=================================================  ===========================  ====================
name                                               evaluator_type               content
=================================================  ===========================  ====================
``synthetic_coco_{train,val}``                     ``coco``                     3 shape classes
``synthetic_coco_panoptic_{train,val}``            ``coco_panoptic_seg``        3 things + 3 stuff,
                                                                                standard
``synthetic_coco_panoptic_{train,val}_separated``  ``coco_panoptic_seg``        same, separated
                                                                                (Panoptic FPN)
``synthetic_cityscapes_fine_instance_seg``         ``cityscapes_instance``      8 Cityscapes things
``synthetic_cityscapes_fine_sem_seg``              ``cityscapes_sem_seg``       19 train ids,
                                                                                255 void
``synthetic_cityscapes_fine_panoptic``             ``cityscapes_panoptic_seg``  8 things + 11 stuff
                                                                                (train ids)
=================================================  ===========================  ====================

(the Cityscapes names take a ``_train`` or ``_val`` suffix; the panoptic names and their metadata
conventions: :mod:`.panoptic_datasets`).

Importing this module also points Detectron2's builtin ``cityscapes_fine_*`` names at
solo_d2's Cityscapes loaders (:mod:`.cityscapes`; Detectron2 main's own cannot import
their Cityscapes API) and its ``cityscapes_fine_panoptic_*`` names at solo_d2's panoptic
loader (:func:`.panoptic_datasets.load_cityscapes_panoptic`:
Detectron2's, right for paths with dots).
"""

import glob
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, register_coco_instances
from PIL import Image
from tqdm import tqdm

from .cityscapes import (
    load_cityscapes_instances,
    load_cityscapes_semantic,
    register_builtin_cityscapes,
)
from .mapper import ImageReadError
from .panoptic_datasets import (
    SYNTHETIC_PANOPTIC_DATASETS,
    register_builtin_cityscapes_panoptic,
    register_synthetic_panoptic,
)
from .synthetic import COCO_CLASSES, generate_synthetic_cityscapes, generate_synthetic_coco
from .synthetic_panoptic import generate_synthetic_coco_panoptic
from .synthetic_panoptic_textured import generate_synthetic_textured_panoptic

__all__ = [
    "get_dataset_root",
    "register_synthetic_datasets",
    "check_dataset",
    "check_image_files",
    "ensure_dataset",
    "SYNTHETIC_DATASETS",
]

_ROOT = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))

# name -> (kind, split, task)
SYNTHETIC_DATASETS = {}
for _split in ("train", "val"):
    SYNTHETIC_DATASETS["synthetic_coco_" + _split] = ("coco", _split, "instance")
    SYNTHETIC_DATASETS["synthetic_cityscapes_fine_instance_seg_" + _split] = (
        "cityscapes",
        _split,
        "instance",
    )
    SYNTHETIC_DATASETS["synthetic_cityscapes_fine_sem_seg_" + _split] = (
        "cityscapes",
        _split,
        "sem_seg",
    )
SYNTHETIC_DATASETS.update(SYNTHETIC_PANOPTIC_DATASETS)  # (kind, split, panoptic variant)

_GENERATORS = {
    "coco": generate_synthetic_coco,
    "cityscapes": generate_synthetic_cityscapes,
    "coco_panoptic": generate_synthetic_coco_panoptic,
    "textured_panoptic": generate_synthetic_textured_panoptic,
}
_COCO_CMD = (
    "mkdir -p $DETECTRON2_DATASETS/coco && cd $DETECTRON2_DATASETS/coco && "
    "wget http://images.cocodataset.org/zips/{split}.zip "
    "http://images.cocodataset.org/annotations/annotations_trainval2017.zip && "
    "unzip -q {split}.zip && unzip -q annotations_trainval2017.zip  (see datasets/README.md)"
)
_CITYSCAPES_CMD = (
    "download gtFine_trainvaltest.zip and leftImg8bit_trainvaltest.zip from "
    "https://www.cityscapes-dataset.com/downloads/ into $DETECTRON2_DATASETS/cityscapes, unzip "
    "them, then run `python datasets/prepare_cityscapes.py`  (see datasets/README.md)"
)

_COCO_PANOPTIC_CMD = (
    "; then, in $DETECTRON2_DATASETS/coco, wget http://images.cocodataset.org/annotations/"
    "panoptic_annotations_trainval2017.zip, unzip it and the panoptic_{train,val}2017.zip inside "
    "annotations/ into coco/, and run detectron2's datasets/prepare_panoptic_fpn.py"
)
_CITYSCAPES_PANOPTIC_CMD = (
    "; then `python -m cityscapesscripts.preparation.createPanopticImgs --dataset-folder "
    "$DETECTRON2_DATASETS/cityscapes/gtFine`"
)


def get_dataset_root():
    """The dataset root: ``$DETECTRON2_DATASETS`` as read at import time (default ``datasets``)."""
    return _ROOT


def _coco_paths(root, split):
    base = os.path.join(root, "synthetic_coco")
    return os.path.join(base, "annotations", "instances_{}.json".format(split)), os.path.join(
        base, split
    )


def _cityscapes_paths(root, split):
    base = os.path.join(root, "synthetic_cityscapes")
    return os.path.join(base, "leftImg8bit", split), os.path.join(base, "gtFine", split)


def _load_synthetic(name, root):
    kind, split, task = SYNTHETIC_DATASETS[name]
    _GENERATORS[kind](root)
    if kind == "coco":
        json_file, image_root = _coco_paths(root, split)
        return load_coco_json(json_file, image_root, name)
    image_dir, gt_dir = _cityscapes_paths(root, split)
    if task == "instance":
        return load_cityscapes_instances(image_dir, gt_dir, from_json=True, to_polygons=True)
    return load_cityscapes_semantic(image_dir, gt_dir)


def _cityscapes_meta():
    """Class names and colors exactly as Detectron2's builtin Cityscapes metadata."""
    meta = MetadataCatalog.get("cityscapes_fine_sem_seg_train")
    keys = ("thing_classes", "thing_colors", "stuff_classes", "stuff_colors")
    return {k: list(getattr(meta, k)) for k in keys if hasattr(meta, k)}


def register_synthetic_datasets(root=None):
    """Register every synthetic dataset under ``root`` (default: :func:`get_dataset_root`)."""
    root = _ROOT if root is None else root
    register_synthetic_panoptic(root)
    for name, (kind, split, task) in SYNTHETIC_DATASETS.items():
        if name in DatasetCatalog.list():
            continue
        if kind == "coco":
            json_file, image_root = _coco_paths(root, split)
            # sets metadata json_file / image_root / evaluator_type="coco"
            register_coco_instances(name, {}, json_file, image_root)
            DatasetCatalog.remove(name)  # same loader, but generating the data first
            MetadataCatalog.get(name).set(
                synthetic_root=root,
                thing_classes=list(COCO_CLASSES),
                thing_colors=[(205, 45, 40), (45, 190, 70), (50, 70, 215)],
            )
        else:
            image_dir, gt_dir = _cityscapes_paths(root, split)
            evaluator_type = "cityscapes_instance" if task == "instance" else "cityscapes_sem_seg"
            MetadataCatalog.get(name).set(
                synthetic_root=root,
                image_dir=image_dir,
                gt_dir=gt_dir,
                evaluator_type=evaluator_type,
                ignore_label=255,
                **_cityscapes_meta(),
            )
        DatasetCatalog.register(name, lambda n=name, r=root: _load_synthetic(n, r))


def ensure_dataset(name):
    """Generate a synthetic dataset's files if they are missing; no-op for other names."""
    if name in SYNTHETIC_DATASETS:
        _GENERATORS[SYNTHETIC_DATASETS[name][0]](MetadataCatalog.get(name).synthetic_root)


def _prepare_command(name):
    if name.startswith("coco_") or name.startswith("keypoints_coco_"):
        split = "train2017" if "train" in name else "test2017" if "test" in name else "val2017"
        return _COCO_CMD.format(split=split) + (_COCO_PANOPTIC_CMD if "panoptic" in name else "")
    if name.startswith("cityscapes_"):
        return _CITYSCAPES_CMD + (_CITYSCAPES_PANOPTIC_CMD if "panoptic" in name else "")
    return _CUSTOM_HINT


_CUSTOM_HINT = (
    "your own dataset: check the paths it was registered with (docs/CUSTOM_DATA.md: "
    "tools/train_net.py --register-coco NAME JSON IMAGE_DIR, --register-sem-seg, "
    "--register-coco-panoptic); the builtin ones: datasets/README.md"
)


CHECK_IMAGES_MODES = ("none", "sample", "all")
IMAGE_SAMPLE_SIZE = 500


def check_image_files(name, mode="sample", sample_size=IMAGE_SAMPLE_SIZE, seed=0, progress=True):
    """Check the image files of dataset ``name`` (``file_name``, ``sem_seg_file_name`` and
    ``pan_seg_file_name`` of its dicts) before training.

    ``mode``: ``"sample"`` checks that a fixed random subset of ``sample_size`` items (all of a
    smaller dataset) exists; ``"all"`` *decodes* every file of every item (in threads, with a
    progress bar when ``progress``), so truncated or corrupt files are found before training,
    and checks that the label PNGs of ``sem_seg`` datasets hold only class indices
    (``< len(stuff_classes)``) or ``ignore_label``; ``"none"`` checks nothing. Loads the
    dataset dicts (``DatasetCatalog.get``).

    Raises ``FileNotFoundError`` when files are missing (with the number of missing files and the
    first of them; in ``"all"`` mode every one), or :class:`~solo_d2.data.ImageReadError` (an
    ``OSError``) naming each file that cannot be read and why. Returns the number of files checked.
    """
    if mode not in CHECK_IMAGES_MODES:
        raise ValueError(
            "check_images must be one of {}, got {!r}".format(CHECK_IMAGES_MODES, mode)
        )
    if mode == "none":
        return 0
    dicts = DatasetCatalog.get(name)
    index = np.arange(len(dicts))
    if mode == "sample" and len(dicts) > sample_size:
        index = np.sort(np.random.RandomState(seed).choice(len(dicts), sample_size, replace=False))
    keys = ("file_name", "sem_seg_file_name", "pan_seg_file_name")
    paths = [dicts[i][k] for i in index for k in keys if dicts[i].get(k)]
    checked = (
        "all {}".format(len(dicts))
        if len(index) == len(dicts)
        else "a sample of {} of {}".format(len(index), len(dicts))
    )
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        shown = missing if mode == "all" else missing[:5]
        raise FileNotFoundError(
            "Dataset '{}': {} of {} image files checked ({} items) are missing, e.g. {}. "
            "Prepare the dataset with: {}{}".format(
                name,
                len(missing),
                len(paths),
                checked,
                ", ".join("'{}'".format(m) for m in shown),
                _prepare_command(name),
                ""
                if mode == "all"
                else " (check_images='all' / --check-images all lists every missing file)",
            )
        )
    if mode == "all":
        _decode_all(name, dicts, paths, progress)
    logging.getLogger(__name__).info(
        "Dataset '%s': %d image files checked (%s)%s",
        name,
        len(paths),
        mode,
        ", all decoded" if mode == "all" else ", all present",
    )
    return len(paths)


def _label_range(name):
    """``(num_classes, ignore_label)`` that label PNGs of ``name`` must respect, or None."""
    meta = MetadataCatalog.get(name)
    if meta.get("evaluator_type") != "sem_seg" or not meta.get("stuff_classes"):
        return None
    return len(meta.stuff_classes), meta.get("ignore_label", 255)


def _decode(path, label_range):
    """None if ``path`` decodes (and, for a label PNG, holds valid labels), else the reason."""
    try:
        with Image.open(path) as img:
            img.load()
            if label_range is None:
                return None
            values = np.unique(np.asarray(img))
    except (OSError, SyntaxError, ValueError) as e:  # PIL: truncated, unidentified, broken PNG
        return "{}: {}".format(type(e).__name__, e)
    num_classes, ignore = label_range
    bad = [int(v) for v in values if v >= num_classes and v != ignore]
    if bad:
        return "label values {} are neither a class index (0..{}) nor the ignore label {}".format(
            bad[:10], num_classes - 1, ignore
        )
    return None


def _decode_all(name, dicts, paths, progress):
    labels = set(d["sem_seg_file_name"] for d in dicts if d.get("sem_seg_file_name"))
    label_range = _label_range(name)
    unique = list(dict.fromkeys(paths))
    problems = {}
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool, tqdm(
        total=len(unique),
        desc="Decoding the images of '{}'".format(name),
        unit="file",
        disable=not progress,
        mininterval=1.0,
    ) as bar:
        results = pool.map(lambda p: _decode(p, label_range if p in labels else None), unique)
        for path, reason in zip(unique, results):
            bar.update(1)
            if reason is not None:
                problems[path] = reason
    if problems:
        raise ImageReadError(
            "Dataset '{}': {} of {} files cannot be read; fix or remove them (or their dataset "
            "items) before training:\n{}".format(
                name,
                len(problems),
                len(unique),
                "\n".join("  '{}': {}".format(p, r) for p, r in problems.items()),
            )
        )


def check_dataset(name, check_images="sample", sample_size=IMAGE_SAMPLE_SIZE):
    """Check that the files of dataset ``name`` exist before training or evaluation.

    Synthetic datasets are generated when missing. For other registered names (e.g.
    Detectron2's builtin ``coco_2017_*`` and ``cityscapes_fine_*``) every path in the
    metadata must exist, else a ``FileNotFoundError`` names the path and the command
    that prepares it. Then the image files of the dataset's items are checked to exist
    (:func:`check_image_files`): a fixed sample of ``sample_size`` items with
    ``check_images="sample"`` (default), every item with ``"all"``, none with ``"none"``.
    An unregistered name raises a ``KeyError`` listing the registered names. Returns the
    list of metadata paths that were checked.
    """
    if check_images not in CHECK_IMAGES_MODES:
        raise ValueError(
            "check_images must be one of {}, got {!r}".format(CHECK_IMAGES_MODES, check_images)
        )
    registered = DatasetCatalog.list()
    if name not in registered:
        raise KeyError(
            "Dataset '{}' is not registered. Register your own data before the config is built: "
            "tools/train_net.py --register-coco {} JSON IMAGE_DIR (or --register-sem-seg / "
            "--register-coco-panoptic), or Detectron2's register_coco_instances in Python; see "
            "docs/CUSTOM_DATA.md. Registered datasets: {}".format(
                name, name, ", ".join(sorted(registered))
            )
        )
    ensure_dataset(name)
    meta = MetadataCatalog.get(name)
    checked = []
    for key in (
        "json_file",
        "image_root",
        "image_dir",
        "gt_dir",
        "sem_seg_root",
        "panoptic_root",
        "panoptic_json",
    ):
        path = getattr(meta, key, None) if hasattr(meta, key) else None
        if not isinstance(path, str):
            continue
        checked.append(path)
        if not os.path.exists(path):
            raise FileNotFoundError(
                "Dataset '{}': {} '{}' does not exist "
                "(DETECTRON2_DATASETS={}). Prepare it with: {}".format(
                    name, key, path, _ROOT, _prepare_command(name)
                )
            )
    if getattr(meta, "evaluator_type", None) == "cityscapes_sem_seg" and hasattr(meta, "gt_dir"):
        if not glob.glob(os.path.join(meta.gt_dir, "*", "*_gtFine_labelTrainIds.png")):
            raise FileNotFoundError(
                "Dataset '{}': no *_gtFine_labelTrainIds.png under '{}'. Create them with: "
                "python datasets/prepare_cityscapes.py".format(name, meta.gt_dir)
            )
    check_image_files(name, check_images, sample_size)
    return checked


register_synthetic_datasets()
register_builtin_cityscapes()
register_builtin_cityscapes_panoptic()
