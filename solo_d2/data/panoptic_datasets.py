"""Panoptic dataset registration: the synthetic panoptic sets, Cityscapes panoptic, and checks.

Registered names (generated on first use under the dataset root, see :mod:`.datasets`):

- ``synthetic_coco_panoptic_{train,val}``: *standard* COCO panoptic (Detectron2's
  ``register_coco_panoptic``), metadata as ``_get_builtin_metadata("coco_panoptic_standard")``:
  ``thing_classes`` = ``stuff_classes`` = all 6 names in category order, one contiguous id
  space ``0..5``: ``thing_dataset_id_to_contiguous_id`` ``{1: 0, 2: 1, 3: 2}``,
  ``stuff_dataset_id_to_contiguous_id`` ``{5: 3, 7: 4, 8: 5}``. Dicts: ``file_name``,
  ``image_id``, ``pan_seg_file_name``, ``segments_info`` (contiguous ``category_id``,
  ``isthing``).
- ``synthetic_coco_panoptic_{train,val}_separated``: *separated* (Panoptic FPN's,
  ``register_coco_panoptic_separated``), metadata as ``_get_coco_panoptic_separated_meta``:
  things ``{1: 0, 2: 1, 3: 2}`` (``thing_classes`` the 3 shapes), ``stuff_classes`` =
  ``["things", "sky", "ground", "wall"]``, ``stuff_dataset_id_to_contiguous_id``
  ``{5: 1, 7: 2, 8: 3, 0: 0}`` (0 = things). Dicts: COCO instance ``annotations`` and
  ``sem_seg_file_name``. Also ``synthetic_coco_panoptic_{train,val}_stuffonly`` (sem_seg).
- ``synthetic_cityscapes_fine_panoptic_{train,val}``: registered as Detectron2's
  ``register_all_cityscapes_panoptic`` registers ``cityscapes_fine_panoptic_*`` (same metadata:
  contiguous id = Cityscapes train id, things 11..18, stuff 0..10; ``gt_dir``, ``panoptic_root``,
  ``panoptic_json``, ``label_divisor`` 1000, ``evaluator_type`` ``cityscapes_panoptic_seg``).

Every ``coco_panoptic`` name has ``evaluator_type`` ``coco_panoptic_seg``.

:func:`load_cityscapes_panoptic` is Detectron2's loader (same dicts) except that it finds the
``_labelTrainIds.png`` of an image with ``os.path.splitext`` instead of cutting the path at its
first dot (Detectron2 v0.6 and main give a wrong ``sem_seg_file_name``, and fail, for any
dataset root with a dot in it, e.g. ``./datasets``); :func:`register_builtin_cityscapes_panoptic`
points the builtin ``cityscapes_fine_panoptic_*`` names at it, keeping their metadata.
"""

import functools
import json
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_panoptic, register_coco_panoptic_separated
from detectron2.data.datasets.cityscapes_panoptic import get_cityscapes_panoptic_files
from detectron2.utils.file_io import PathManager

from .synthetic import generate_synthetic_cityscapes
from .synthetic_panoptic import (
    PANOPTIC_CATEGORIES,
    coco_panoptic_paths,
    generate_synthetic_coco_panoptic,
)
from .synthetic_panoptic_textured import (
    TEXTURED_PANOPTIC_CATEGORIES,
    TEXTURED_PANOPTIC_DERIVED_SPLITS,
    TEXTURED_PANOPTIC_NAME,
    generate_synthetic_textured_panoptic,
)

__all__ = [
    "SYNTHETIC_PANOPTIC_DATASETS",
    "coco_panoptic_standard_metadata",
    "coco_panoptic_separated_metadata",
    "cityscapes_panoptic_metadata",
    "load_cityscapes_panoptic",
    "register_synthetic_panoptic",
    "register_builtin_cityscapes_panoptic",
    "check_panoptic_dataset",
]

PANOPTIC_EVALUATOR_TYPES = ("coco_panoptic_seg", "cityscapes_panoptic_seg")
# name -> (kind of generator, split, variant)
SYNTHETIC_PANOPTIC_DATASETS = {}
for _split in ("train", "val"):
    SYNTHETIC_PANOPTIC_DATASETS["synthetic_coco_panoptic_" + _split] = (
        "coco_panoptic",
        _split,
        "standard",
    )
    SYNTHETIC_PANOPTIC_DATASETS["synthetic_coco_panoptic_{}_separated".format(_split)] = (
        "coco_panoptic",
        _split,
        "separated",
    )
    SYNTHETIC_PANOPTIC_DATASETS["synthetic_coco_panoptic_{}_stuffonly".format(_split)] = (
        "coco_panoptic",
        _split,
        "stuffonly",
    )
    SYNTHETIC_PANOPTIC_DATASETS["synthetic_cityscapes_fine_panoptic_" + _split] = (
        "cityscapes",
        _split,
        "cityscapes",
    )
for _split in ("train", "val", *TEXTURED_PANOPTIC_DERIVED_SPLITS):
    SYNTHETIC_PANOPTIC_DATASETS["synthetic_textured_panoptic_" + _split] = (
        "textured_panoptic",
        _split,
        "standard",
    )
    SYNTHETIC_PANOPTIC_DATASETS["synthetic_textured_panoptic_{}_separated".format(_split)] = (
        "textured_panoptic",
        _split,
        "separated",
    )
BUILTIN_CITYSCAPES_PANOPTIC_DATASETS = (
    "cityscapes_fine_panoptic_train",
    "cityscapes_fine_panoptic_val",
)


def coco_panoptic_standard_metadata(categories):
    """Metadata of a *standard* COCO panoptic dataset of ``categories`` (COCO panoptic json
    ``categories``), built as Detectron2's ``_get_builtin_metadata("coco_panoptic_standard")``:
    thing_* and stuff_* both list every category; contiguous id = index in ``categories``."""
    meta = {
        "thing_classes": [c["name"] for c in categories],
        "thing_colors": [c["color"] for c in categories],
        "stuff_classes": [c["name"] for c in categories],
        "stuff_colors": [c["color"] for c in categories],
    }
    meta["thing_dataset_id_to_contiguous_id"] = {
        c["id"]: i for i, c in enumerate(categories) if c["isthing"]
    }
    meta["stuff_dataset_id_to_contiguous_id"] = {
        c["id"]: i for i, c in enumerate(categories) if not c["isthing"]
    }
    return meta


def coco_panoptic_separated_metadata(categories, things_color=(82, 18, 128)):
    """Metadata of a *separated* dataset, as Detectron2's ``_get_coco_panoptic_separated_meta``:
    thing contiguous ids ``0..K-1`` (``_get_coco_instances_meta``), stuff contiguous ids
    ``1..S`` in category order and stuff id 0 -> 0, the extra class ``"things"``."""
    things = [c for c in categories if c["isthing"]]
    stuff = [c for c in categories if not c["isthing"]]
    stuff_map = {c["id"]: i + 1 for i, c in enumerate(stuff)}
    stuff_map[0] = 0
    return {
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(things)},
        "thing_classes": [c["name"] for c in things],
        "thing_colors": [c["color"] for c in things],
        "stuff_dataset_id_to_contiguous_id": stuff_map,
        "stuff_classes": ["things"]
        + [c["name"].replace("-other", "").replace("-merged", "") for c in stuff],
        "stuff_colors": [list(things_color)] + [c["color"] for c in stuff],
    }


def cityscapes_panoptic_metadata():
    """Class and id metadata of Detectron2's ``cityscapes_fine_panoptic_*`` (copied from its
    ``register_all_cityscapes_panoptic`` registration: contiguous id = Cityscapes train id)."""
    meta = MetadataCatalog.get("cityscapes_fine_panoptic_train")
    keys = (
        "thing_classes",
        "thing_colors",
        "stuff_classes",
        "stuff_colors",
        "thing_dataset_id_to_contiguous_id",
        "stuff_dataset_id_to_contiguous_id",
    )
    return {k: getattr(meta, k) for k in keys}


def load_cityscapes_panoptic(image_dir, gt_dir, gt_json, meta):
    """Detectron2's ``load_cityscapes_panoptic`` (same arguments, same dicts: ``file_name``,
    ``image_id`` ``<city>_<seq>_<frame>``, ``sem_seg_file_name`` (``_labelTrainIds.png``),
    ``pan_seg_file_name``, ``segments_info`` with contiguous ``category_id`` and no ``isthing``),
    with a ``sem_seg_file_name`` that is right for paths with dots."""
    if not os.path.exists(gt_json):
        raise FileNotFoundError(
            "Cityscapes panoptic json '{}' does not exist: create it with "
            "`python -m cityscapesscripts.preparation.createPanopticImgs` "
            "(see datasets/README.md)".format(gt_json)
        )
    with open(gt_json) as f:
        json_info = json.load(f)
    ret = []
    for image_file, label_file, segments_info in get_cityscapes_panoptic_files(
        image_dir, gt_dir, json_info
    ):
        for seg in segments_info:
            cid = seg["category_id"]
            things = meta["thing_dataset_id_to_contiguous_id"]
            seg["category_id"] = (
                things[cid] if cid in things else meta["stuff_dataset_id_to_contiguous_id"][cid]
            )
        ret.append(
            {
                "file_name": image_file,
                "image_id": "_".join(
                    os.path.splitext(os.path.basename(image_file))[0].split("_")[:3]
                ),
                "sem_seg_file_name": os.path.splitext(image_file)[0].replace(
                    "leftImg8bit", "gtFine"
                )
                + "_labelTrainIds.png",
                "pan_seg_file_name": label_file,
                "segments_info": segments_info,
            }
        )
    assert len(ret), f"No images found in {image_dir}!"
    assert PathManager.isfile(ret[0]["sem_seg_file_name"]), (
        "Please generate labelTrainIds.png with `python datasets/prepare_cityscapes.py`: "
        + ret[0]["sem_seg_file_name"]
    )
    assert PathManager.isfile(ret[0]["pan_seg_file_name"]), (
        "Please generate panoptic annotation with cityscapesscripts' createPanopticImgs: "
        + ret[0]["pan_seg_file_name"]
    )
    return ret


def _generating(generate, root, loader):
    """``loader()`` after ``generate(root)`` (a synthetic dataset is written on first use)."""
    generate(root)
    return loader()


def _rewrap(name, generate, root):
    loader = DatasetCatalog[name]  # Detectron2's own loader function of this name
    DatasetCatalog.remove(name)
    DatasetCatalog.register(name, functools.partial(_generating, generate, root, loader))
    MetadataCatalog.get(name).set(synthetic_root=root)


def register_synthetic_panoptic(root):
    """Register the synthetic panoptic datasets (module docstring) under dataset root ``root``
    with Detectron2's own registration functions; their loaders generate the files first.
    Names already registered are skipped. Returns the names registered."""
    done = []
    registered = set(DatasetCatalog.list())
    for split in ("train", "val"):
        name = "synthetic_coco_panoptic_" + split
        if name not in registered:
            p = coco_panoptic_paths(root, split)
            register_coco_panoptic(
                name,
                coco_panoptic_standard_metadata(PANOPTIC_CATEGORIES),
                p["image_root"],
                p["panoptic_root"],
                p["panoptic_json"],
                p["instances_json"],
            )
            register_coco_panoptic_separated(
                name,
                coco_panoptic_separated_metadata(PANOPTIC_CATEGORIES),
                p["image_root"],
                p["panoptic_root"],
                p["panoptic_json"],
                p["sem_seg_root"],
                p["instances_json"],
            )
            for n in (name, name + "_separated", name + "_stuffonly"):
                _rewrap(n, generate_synthetic_coco_panoptic, root)
                done.append(n)
        name = "synthetic_cityscapes_fine_panoptic_" + split
        if name not in registered:
            base = os.path.join(root, "synthetic_cityscapes")
            image_dir = os.path.join(base, "leftImg8bit", split)
            gt_dir = os.path.join(base, "gtFine", "cityscapes_panoptic_" + split)
            gt_json = gt_dir + ".json"
            meta = cityscapes_panoptic_metadata()
            DatasetCatalog.register(
                name, functools.partial(load_cityscapes_panoptic, image_dir, gt_dir, gt_json, meta)
            )
            MetadataCatalog.get(name).set(
                panoptic_root=gt_dir,
                image_root=image_dir,
                panoptic_json=gt_json,
                gt_dir=gt_dir.replace("cityscapes_panoptic_", ""),
                evaluator_type="cityscapes_panoptic_seg",
                ignore_label=255,
                label_divisor=1000,
                **meta,
            )
            _rewrap(name, generate_synthetic_cityscapes, root)
            done.append(name)
    return done + _register_textured(root, registered)


def _register_textured(root, registered):
    """``synthetic_textured_panoptic_{train,val,fit,holdout}`` and their ``_separated`` names."""
    done = []
    for split in ("train", "val", *TEXTURED_PANOPTIC_DERIVED_SPLITS):
        name = "synthetic_textured_panoptic_" + split
        if name in registered:
            continue
        files = TEXTURED_PANOPTIC_DERIVED_SPLITS.get(split, (split,))[0]
        p = coco_panoptic_paths(root, split, TEXTURED_PANOPTIC_NAME, files)
        cats = TEXTURED_PANOPTIC_CATEGORIES
        register_coco_panoptic(
            name,
            coco_panoptic_standard_metadata(cats),
            p["image_root"],
            p["panoptic_root"],
            p["panoptic_json"],
            p["instances_json"],
        )
        register_coco_panoptic_separated(
            name,
            coco_panoptic_separated_metadata(cats),
            p["image_root"],
            p["panoptic_root"],
            p["panoptic_json"],
            p["sem_seg_root"],
            p["instances_json"],
        )
        for n in (name, name + "_separated"):
            _rewrap(n, generate_synthetic_textured_panoptic, root)
            done.append(n)
    return done


def register_builtin_cityscapes_panoptic():
    """Point Detectron2's builtin ``cityscapes_fine_panoptic_{train,val}`` at
    :func:`load_cityscapes_panoptic` (their metadata stays as Detectron2 set it). Idempotent;
    names that are not registered are skipped. Returns the names re-registered."""
    done = []
    registered = set(DatasetCatalog.list())
    for name in BUILTIN_CITYSCAPES_PANOPTIC_DATASETS:
        if name not in registered:
            continue
        m = MetadataCatalog.get(name)
        meta = {
            k: getattr(m, k)
            for k in ("thing_dataset_id_to_contiguous_id", "stuff_dataset_id_to_contiguous_id")
        }
        DatasetCatalog.remove(name)
        DatasetCatalog.register(
            name,
            functools.partial(
                load_cityscapes_panoptic, m.image_root, m.panoptic_root, m.panoptic_json, meta
            ),
        )
        done.append(name)
    return done


def check_panoptic_dataset(name):
    """Check that dataset ``name`` is a panoptic one and return its metadata.

    A panoptic dataset has ``evaluator_type`` ``coco_panoptic_seg`` or ``cityscapes_panoptic_seg``
    and the metadata ``panoptic_root``, ``panoptic_json``, ``thing_dataset_id_to_contiguous_id``,
    ``stuff_dataset_id_to_contiguous_id``, ``thing_classes``, ``stuff_classes``. Raises
    ``KeyError`` for an unregistered name and ``ValueError`` naming the dataset and the missing
    key otherwise (e.g. ``synthetic_coco_val``, an instance-only dataset)."""
    if name not in DatasetCatalog.list():
        raise KeyError("Dataset '{}' is not registered".format(name))
    meta = MetadataCatalog.get(name)
    evaluator_type = getattr(meta, "evaluator_type", None)
    if evaluator_type not in PANOPTIC_EVALUATOR_TYPES:
        raise ValueError(
            "Dataset '{}' has no panoptic annotations: its metadata evaluator_type is {!r}, not "
            "one of {} (use a panoptic dataset, e.g. synthetic_coco_panoptic_val, "
            "coco_2017_val_panoptic(_separated), cityscapes_fine_panoptic_val)".format(
                name, evaluator_type, ", ".join(PANOPTIC_EVALUATOR_TYPES)
            )
        )
    keys = (
        "panoptic_root",
        "panoptic_json",
        "thing_dataset_id_to_contiguous_id",
        "stuff_dataset_id_to_contiguous_id",
        "thing_classes",
        "stuff_classes",
    )
    missing = [k for k in keys if not hasattr(meta, k)]
    if missing:
        raise ValueError(
            "Dataset '{}' (evaluator_type {!r}) has no panoptic annotations: "
            "metadata key(s) {} missing".format(
                name, evaluator_type, ", ".join(repr(k) for k in missing)
            )
        )
    return meta
