"""Registering your own datasets: COCO instances, semantic PNG folders and COCO panoptic.

Used by ``tools/train_net.py --register-coco / --register-sem-seg / --register-coco-panoptic``
(see docs/CUSTOM_DATA.md) and callable from Python. Each function registers ``name`` with
Detectron2's ``DatasetCatalog`` / ``MetadataCatalog`` through Detectron2's own loaders, and sets
the class metadata right away (``thing_classes`` / ``stuff_classes`` and the id maps), so the
class-count checks before training and evaluation see them without loading the dataset.

Registering a name again with the same files is a no-op (the launching process and a worker
that runs in the same process both register); with other files it is an error naming both.
"""

import collections
import json
import logging
import os
from typing import List, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import (
    load_sem_seg,
    register_coco_instances,
    register_coco_panoptic,
)

from .panoptic_datasets import coco_panoptic_standard_metadata

__all__ = [
    "CUSTOM_DATA_DOC",
    "register_coco",
    "register_sem_seg",
    "register_coco_panoptic_dataset",
    "parse_class_names",
    "add_register_arguments",
    "register_from_args",
]

logger = logging.getLogger(__name__)

#: the page that explains registering and training on your own data
CUSTOM_DATA_DOC = "docs/CUSTOM_DATA.md"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _exists(path, what, flag):
    if not os.path.exists(path):
        raise FileNotFoundError(
            "{}: {} '{}' does not exist (see {})".format(flag, what, path, CUSTOM_DATA_DOC)
        )


def _registered_same(name, flag, **paths) -> bool:
    """True if ``name`` is registered with these metadata ``paths``; ``ValueError`` if it is
    registered otherwise (a builtin name, or the same name for other files)."""
    if name not in DatasetCatalog.list():
        return False
    meta = MetadataCatalog.get(name)
    if all(meta.get(k) == v for k, v in paths.items()):
        return True
    have = ", ".join("{}={}".format(k, meta.get(k)) for k in paths)
    raise ValueError(
        "{}: dataset name '{}' is already registered ({}); pick another NAME for {}".format(
            flag, name, have, ", ".join(str(v) for v in paths.values())
        )
    )


def _read_json(path, flag):
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as e:
        raise ValueError("{}: '{}' is not valid json: {}".format(flag, path, e)) from e


def register_coco(name: str, json_file: str, image_root: str, flag: str = "--register-coco"):
    """Register a COCO-format instance dataset (Detectron2's ``register_coco_instances``;
    ``segmentation`` as polygons or RLE, with ``INPUT.MASK_FORMAT bitmask`` for RLE), with its
    ``thing_classes`` (category names in id order) and ``thing_dataset_id_to_contiguous_id`` set
    now, as ``load_coco_json`` sets them when it loads the file."""
    json_file, image_root = os.path.abspath(json_file), os.path.abspath(image_root)
    _exists(json_file, "annotation json", flag)
    _exists(image_root, "image folder", flag)
    if _registered_same(name, flag, json_file=json_file, image_root=image_root):
        return
    data = _read_json(json_file, flag)
    if not isinstance(data, dict) or not data.get("categories") or "images" not in data:
        raise ValueError(
            "{}: '{}' is not a COCO instances json: it needs 'images', 'annotations' and a "
            "non-empty "
            "'categories' list (see {})".format(flag, json_file, CUSTOM_DATA_DOC)
        )
    anns = data.get("annotations") or []
    if anns and "segments_info" in anns[0]:
        raise ValueError(
            "{}: '{}' is a COCO *panoptic* json (annotations with segments_info); register it with "
            "--register-coco-panoptic NAME IMAGE_DIR PANOPTIC_DIR PANOPTIC_JSON".format(
                flag, json_file
            )
        )
    no_mask = [a for a in anns if not a.get("segmentation")]
    if no_mask:
        first = no_mask[0]
        raise ValueError(
            "{}: {} of the {} annotations of '{}' have no 'segmentation' (e.g. id {}, "
            "image_id {}): SOLO models learn instance masks (polygons or RLE), boxes alone are "
            "not enough, and Detectron2's mapper fails on an image whose annotations mix both. "
            "Add the masks or remove those annotations.".format(
                flag,
                len(no_mask),
                len(anns),
                json_file,
                first.get("id"),
                first.get("image_id"),
            )
        )
    cats = sorted(data["categories"], key=lambda c: c["id"])
    register_coco_instances(name, {}, json_file, image_root)
    MetadataCatalog.get(name).set(
        thing_classes=[c["name"] for c in cats],
        thing_dataset_id_to_contiguous_id={c["id"]: i for i, c in enumerate(cats)},
    )
    logger.info(
        "Registered COCO instances '%s': %d images, %d annotations, classes %s",
        name,
        len(data["images"]),
        len(anns),
        [c["name"] for c in cats],
    )


def parse_class_names(spec: str, flag: str = "--class-names") -> List[str]:
    """Class names from ``spec``: a file (``.json``: a list of names; otherwise one name per
    line) or comma-separated names (``"road,car,sky"``)."""
    if os.path.isfile(spec):
        if spec.endswith(".json"):
            names = _read_json(spec, flag)
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ValueError("{}: '{}' must hold a json list of class names".format(flag, spec))
        else:
            with open(spec) as f:
                names = [line.strip() for line in f if line.strip()]
    else:
        names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise ValueError(
            "{}: no class names in {!r} (give 'a,b,c' or a file with one name per line)".format(
                flag, spec
            )
        )
    return names


def _image_extension(image_dir, flag):
    counts = collections.Counter(
        os.path.splitext(f)[1]
        for f in os.listdir(image_dir)
        if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
    )
    if not counts:
        raise FileNotFoundError(
            "{}: no image files ({}) in '{}'".format(flag, ", ".join(IMAGE_EXTENSIONS), image_dir)
        )
    if len(counts) > 1:
        raise ValueError(
            "{}: '{}' mixes image extensions {}; give the images one extension".format(
                flag, image_dir, dict(counts)
            )
        )
    return next(iter(counts))


def _load_sem_seg(label_dir, image_dir, image_ext, name):
    dicts = load_sem_seg(label_dir, image_dir, gt_ext="png", image_ext=image_ext)
    if not dicts:
        raise FileNotFoundError(
            "Dataset '{}': no image in '{}' has a label PNG of the same name in '{}' (see "
            "{})".format(name, image_dir, label_dir, CUSTOM_DATA_DOC)
        )
    return dicts


def register_sem_seg(
    name: str,
    image_dir: str,
    label_dir: str,
    class_names: Sequence[str],
    ignore_label: int = 255,
    flag: str = "--register-sem-seg",
):
    """Register a semantic-segmentation dataset of two flat folders: images and label PNGs of the
    same names (``a.jpg`` <-> ``a.png``), each label pixel the index of its class in
    ``class_names`` (0..K-1) or ``ignore_label`` (255). Loaded by Detectron2's ``load_sem_seg``;
    evaluated by ``SemSegEvaluator`` (``evaluator_type`` ``sem_seg``)."""
    image_dir, label_dir = os.path.abspath(image_dir), os.path.abspath(label_dir)
    _exists(image_dir, "image folder", flag)
    _exists(label_dir, "label folder", flag)
    class_names = list(class_names)
    if _registered_same(name, flag, image_root=image_dir, sem_seg_root=label_dir):
        if list(MetadataCatalog.get(name).stuff_classes) != class_names:
            raise ValueError(
                "{}: dataset '{}' is already registered with classes {}, not {}".format(
                    flag,
                    name,
                    list(MetadataCatalog.get(name).stuff_classes),
                    class_names,
                )
            )
        return
    ext = _image_extension(image_dir, flag)
    DatasetCatalog.register(name, lambda: _load_sem_seg(label_dir, image_dir, ext, name))
    MetadataCatalog.get(name).set(
        image_root=image_dir,
        sem_seg_root=label_dir,
        stuff_classes=class_names,
        ignore_label=ignore_label,
        evaluator_type="sem_seg",
    )
    logger.info(
        "Registered semantic segmentation '%s': images %s (*%s), labels %s, classes %s",
        name,
        image_dir,
        ext,
        label_dir,
        class_names,
    )


def _load_coco_panoptic(json_file, image_dir, panoptic_dir, meta):
    """The dicts of Detectron2's ``load_coco_panoptic_json`` (``file_name``, ``image_id``,
    ``pan_seg_file_name``, ``segments_info`` with contiguous ``category_id`` and ``isthing``), with
    each image's ``file_name`` (and size) from the json's ``images``: Detectron2 assumes
    ``<PNG name>.jpg``."""
    with open(json_file) as f:
        data = json.load(f)
    images = {int(im["id"]): im for im in data["images"]}
    things, stuff = (
        meta["thing_dataset_id_to_contiguous_id"],
        meta["stuff_dataset_id_to_contiguous_id"],
    )
    dicts = []
    for ann in data["annotations"]:
        image_id = int(ann["image_id"])
        im = images.get(image_id)
        if im is None:
            raise ValueError(
                "'{}': annotation of image_id {} ({}) has no entry in 'images'".format(
                    json_file, image_id, ann["file_name"]
                )
            )
        segments = []
        for seg in ann["segments_info"]:
            seg = dict(seg)
            cid = seg["category_id"]
            seg["isthing"] = cid in things
            seg["category_id"] = things[cid] if cid in things else stuff[cid]
            segments.append(seg)
        d = {
            "file_name": os.path.join(image_dir, im["file_name"]),
            "image_id": image_id,
            "pan_seg_file_name": os.path.join(panoptic_dir, ann["file_name"]),
            "segments_info": segments,
        }
        if "height" in im and "width" in im:
            d["height"], d["width"] = im["height"], im["width"]
        dicts.append(d)
    if not dicts:
        raise ValueError("'{}' has no annotations".format(json_file))
    return dicts


def register_coco_panoptic_dataset(
    name: str,
    image_dir: str,
    panoptic_dir: str,
    panoptic_json: str,
    flag: str = "--register-coco-panoptic",
):
    """Register a COCO panoptic dataset in Detectron2's *standard* format (as
    ``coco_2017_*_panoptic``): ``register_coco_panoptic`` with the metadata of the json's
    ``categories`` (``thing_classes`` = ``stuff_classes`` = every category name, one contiguous id
    space in category order, ``isthing`` deciding things from stuff), loaded as Detectron2's
    ``load_coco_panoptic_json`` loads it but with the image names of the json's ``images``."""
    image_dir, panoptic_dir, panoptic_json = map(
        os.path.abspath, (image_dir, panoptic_dir, panoptic_json)
    )
    _exists(image_dir, "image folder", flag)
    _exists(panoptic_dir, "panoptic PNG folder", flag)
    _exists(panoptic_json, "panoptic json", flag)
    if _registered_same(
        name,
        flag,
        image_root=image_dir,
        panoptic_root=panoptic_dir,
        panoptic_json=panoptic_json,
    ):
        return
    data = _read_json(panoptic_json, flag)
    cats = data.get("categories") if isinstance(data, dict) else None
    anns = data.get("annotations") if isinstance(data, dict) else None
    if not cats or anns is None or (anns and "segments_info" not in anns[0]):
        raise ValueError(
            "{}: '{}' is not a COCO panoptic json: it needs 'images', 'annotations' with "
            "'segments_info' "
            "and 'categories' with 'isthing' (see {})".format(flag, panoptic_json, CUSTOM_DATA_DOC)
        )
    cats = sorted(cats, key=lambda c: c["id"])
    for c in cats:
        c.setdefault("color", [0, 0, 0])
    if not any(c.get("isthing") for c in cats) or all(c.get("isthing") for c in cats):
        raise ValueError(
            "{}: '{}' needs both thing (isthing 1) and stuff (isthing 0) categories".format(
                flag, panoptic_json
            )
        )
    meta = coco_panoptic_standard_metadata(cats)
    register_coco_panoptic(name, meta, image_dir, panoptic_dir, panoptic_json)
    DatasetCatalog.remove(name)
    DatasetCatalog.register(
        name, lambda: _load_coco_panoptic(panoptic_json, image_dir, panoptic_dir, meta)
    )
    logger.info(
        "Registered COCO panoptic '%s': %d images, things %s, stuff %s",
        name,
        len(data.get("images", [])),
        [c["name"] for c in cats if c.get("isthing")],
        [c["name"] for c in cats if not c.get("isthing")],
    )


def add_register_arguments(parser):
    """Add ``--register-coco``, ``--register-sem-seg``, ``--register-coco-panoptic`` (each
    repeatable) to ``parser``."""
    g = parser.add_argument_group(
        "register your own datasets (before the config is built, in every worker; see {})".format(
            CUSTOM_DATA_DOC
        )
    )
    g.add_argument(
        "--register-coco",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "JSON", "IMAGE_DIR"),
        help="register a COCO instances json (polygon or RLE masks) and its image folder as NAME; "
        "class names come from the json's categories",
    )
    g.add_argument(
        "--register-sem-seg",
        nargs=4,
        action="append",
        default=[],
        metavar=("NAME", "IMAGE_DIR", "LABEL_DIR", "CLASSES"),
        help="register images and label PNGs of the same names (pixel = class index, 255 = ignore) "
        "as NAME; CLASSES: 'a,b,c' or a file with one class name per line (or a json list)",
    )
    g.add_argument(
        "--register-coco-panoptic",
        nargs=4,
        action="append",
        default=[],
        metavar=("NAME", "IMAGE_DIR", "PANOPTIC_DIR", "PANOPTIC_JSON"),
        help="register a COCO panoptic dataset (PNGs + json with segments_info and categories "
        "with isthing) as NAME, Detectron2's standard format",
    )
    return parser


def register_from_args(args) -> List[str]:
    """Register the datasets of :func:`add_register_arguments`' options. Returns their names."""
    names = []
    for name, json_file, image_dir in getattr(args, "register_coco", None) or []:
        register_coco(name, json_file, image_dir)
        names.append(name)
    for name, image_dir, label_dir, classes in getattr(args, "register_sem_seg", None) or []:
        register_sem_seg(
            name,
            image_dir,
            label_dir,
            parse_class_names(classes, "--register-sem-seg CLASSES"),
        )
        names.append(name)
    for name, image_dir, panoptic_dir, panoptic_json in (
        getattr(args, "register_coco_panoptic", None) or []
    ):
        register_coco_panoptic_dataset(name, image_dir, panoptic_dir, panoptic_json)
        names.append(name)
    return names
