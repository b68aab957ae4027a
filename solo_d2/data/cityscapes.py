"""Cityscapes loaders that work on Detectron2 v0.6 and main.

Detectron2 main's ``detectron2/data/datasets/cityscapes.py`` imports
``deeplearning.projects.cityscapesApi.cityscapesscripts``, a module that exists
nowhere public, so on main its builtin ``cityscapes_fine_{instance_seg,sem_seg}_*``
datasets cannot load their files (the same import broke its Cityscapes evaluators,
see :mod:`solo_d2.evaluation.cityscapes`). This module is Detectron2 v0.6's loader
(``load_cityscapes_instances``, ``load_cityscapes_semantic``: same algorithm, same
dicts, in the same order) over the public ``cityscapesscripts`` package, and
:func:`register_builtin_cityscapes` points the builtin names at it (importing
solo_d2 calls it), keeping their metadata.

Differences from v0.6 that leave the dicts unchanged: the instance loader parses the
files of a small split (at most :data:`SERIAL_MAX_FILES`) in this process instead of a
process pool, and it closes its pool (``Pool.map`` keeps the order of the files); the
polygon dilation passes Shapely's ``quad_segs`` (the name of v0.6's ``resolution``
since Shapely 2.0, which Shapely 2.1 warns about).
"""

import functools
import inspect
import json
import logging
import multiprocessing as mp
import os
from itertools import chain

import numpy as np
import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from detectron2.utils.comm import get_world_size
from detectron2.utils.file_io import PathManager
from PIL import Image
from shapely.geometry import Polygon as _ShapelyPolygon

__all__ = [
    "BUILTIN_CITYSCAPES_DATASETS",
    "SERIAL_MAX_FILES",
    "load_cityscapes_instances",
    "load_cityscapes_semantic",
    "register_builtin_cityscapes",
]

logger = logging.getLogger(__name__)

# Shapely >= 2.0 names buffer()'s segments per quarter circle `quad_segs`, 1.x `resolution`
_BUFFER_QUAD_SEGS = (
    "quad_segs"
    if "quad_segs" in inspect.signature(_ShapelyPolygon.buffer).parameters
    else "resolution"
)

# a split of at most this many images is parsed without a process pool
SERIAL_MAX_FILES = 64

# Detectron2's builtin raw Cityscapes names (detectron2/data/datasets/builtin.py)
BUILTIN_CITYSCAPES_DATASETS = tuple(
    "cityscapes_fine_{}_{}".format(task, split)
    for split in ("train", "val", "test")
    for task in ("instance_seg", "sem_seg")
)


def _get_cityscapes_files(image_dir, gt_dir):
    files = []
    # scan through the directory (in PathManager.ls order, as Detectron2)
    cities = PathManager.ls(image_dir)
    logger.info(f"{len(cities)} cities found in '{image_dir}'.")
    for city in cities:
        city_img_dir = os.path.join(image_dir, city)
        city_gt_dir = os.path.join(gt_dir, city)
        for basename in PathManager.ls(city_img_dir):
            image_file = os.path.join(city_img_dir, basename)

            suffix = "leftImg8bit.png"
            assert basename.endswith(suffix), basename
            basename = basename[: -len(suffix)]

            instance_file = os.path.join(city_gt_dir, basename + "gtFine_instanceIds.png")
            label_file = os.path.join(city_gt_dir, basename + "gtFine_labelIds.png")
            json_file = os.path.join(city_gt_dir, basename + "gtFine_polygons.json")

            files.append((image_file, instance_file, label_file, json_file))
    assert len(files), "No images found in {}".format(image_dir)
    for f in files[0]:
        assert PathManager.isfile(f), f
    return files


def load_cityscapes_instances(image_dir, gt_dir, from_json=True, to_polygons=True):
    """
    Args:
        image_dir (str): path to the raw dataset. e.g., "~/cityscapes/leftImg8bit/train".
        gt_dir (str): path to the raw annotations. e.g., "~/cityscapes/gtFine/train".
        from_json (bool): whether to read annotations from the raw json file or the png files.
        to_polygons (bool): whether to represent the segmentation as polygons
            (COCO's format) instead of masks (cityscapes's format).

    Returns:
        list[dict]: a list of dicts in Detectron2 standard format, equal to Detectron2
        v0.6's ``load_cityscapes_instances`` of the same arguments.
    """
    if from_json:
        assert to_polygons, (
            "Cityscapes's json annotations are in polygon format. "
            "Converting to mask format is not supported now."
        )
    files = _get_cityscapes_files(image_dir, gt_dir)

    logger.info("Preprocessing cityscapes annotations ...")
    to_dict = functools.partial(
        _cityscapes_files_to_dict, from_json=from_json, to_polygons=to_polygons
    )
    if len(files) <= SERIAL_MAX_FILES:
        ret = [to_dict(f) for f in files]
    else:
        # as Detectron2: every rank parses all files (up to 10 min on an 8-GPU server)
        with mp.Pool(processes=max(mp.cpu_count() // get_world_size() // 2, 4)) as pool:
            ret = pool.map(to_dict, files)
    logger.info("Loaded {} images from {}".format(len(ret), image_dir))

    # Map cityscape ids to contiguous ids
    from cityscapesscripts.helpers.labels import labels

    labels = [l for l in labels if l.hasInstances and not l.ignoreInEval]  # noqa: E741
    dataset_id_to_contiguous_id = {l.id: idx for idx, l in enumerate(labels)}
    for dict_per_image in ret:
        for anno in dict_per_image["annotations"]:
            anno["category_id"] = dataset_id_to_contiguous_id[anno["category_id"]]
    return ret


def load_cityscapes_semantic(image_dir, gt_dir):
    """
    Args:
        image_dir (str): path to the raw dataset. e.g., "~/cityscapes/leftImg8bit/train".
        gt_dir (str): path to the raw annotations. e.g., "~/cityscapes/gtFine/train".

    Returns:
        list[dict]: a list of dict, each has "file_name", "sem_seg_file_name"
        (the ``*_gtFine_labelTrainIds.png``), "height" and "width".
    """
    ret = []
    # gt_dir is small and contain many small files. make sense to fetch to local first
    gt_dir = PathManager.get_local_path(gt_dir)
    for image_file, _, label_file, json_file in _get_cityscapes_files(image_dir, gt_dir):
        label_file = label_file.replace("labelIds", "labelTrainIds")

        with PathManager.open(json_file, "r") as f:
            jsonobj = json.load(f)
        ret.append(
            {
                "file_name": image_file,
                "sem_seg_file_name": label_file,
                "height": jsonobj["imgHeight"],
                "width": jsonobj["imgWidth"],
            }
        )
    assert len(ret), f"No images found in {image_dir}!"
    assert PathManager.isfile(ret[0]["sem_seg_file_name"]), (
        "Please generate labelTrainIds.png with "
        "cityscapesscripts/preparation/createTrainIdLabelImgs.py"
    )  # noqa
    return ret


def _cityscapes_files_to_dict(files, from_json, to_polygons):
    """
    Parse cityscapes annotation files to a instance segmentation dataset dict.

    Args:
        files (tuple): consists of (image_file, instance_id_file, label_id_file, json_file)
        from_json (bool): whether to read annotations from the raw json file or the png files.
        to_polygons (bool): whether to represent the segmentation as polygons
            (COCO's format) instead of masks (cityscapes's format).

    Returns:
        A dict in Detectron2 Dataset format.
    """
    from cityscapesscripts.helpers.labels import id2label, name2label

    image_file, instance_id_file, _, json_file = files

    annos = []

    if from_json:
        from shapely.geometry import MultiPolygon, Polygon

        with PathManager.open(json_file, "r") as f:
            jsonobj = json.load(f)
        ret = {
            "file_name": image_file,
            "image_id": os.path.basename(image_file),
            "height": jsonobj["imgHeight"],
            "width": jsonobj["imgWidth"],
        }

        # `polygons_union` contains the union of all valid polygons.
        polygons_union = Polygon()

        # CityscapesScripts draw the polygons in sequential order and each polygon
        # *overwrites* existing ones (cityscapesscripts/preparation/json2instanceImg.py).
        # We use reverse order, and each polygon *avoids* early ones.
        # This resolves the polygon overlaps in the same way as CityscapesScripts.
        for obj in jsonobj["objects"][::-1]:
            if "deleted" in obj:  # cityscapes data format specific
                continue
            label_name = obj["label"]

            try:
                label = name2label[label_name]
            except KeyError:
                if label_name.endswith("group"):  # crowd area
                    label = name2label[label_name[: -len("group")]]
                else:
                    raise
            if label.id < 0:  # cityscapes data format
                continue

            # Cityscapes's raw annotations uses integer coordinates
            # Therefore +0.5 here
            poly_coord = np.asarray(obj["polygon"], dtype="f4") + 0.5
            # CityscapesScript uses PIL.ImageDraw.polygon to rasterize
            # polygons for evaluation. This function operates in integer space
            # and draws each pixel whose center falls into the polygon.
            # Therefore it draws a polygon which is 0.5 "fatter" in expectation.
            # We therefore dilate the input polygon by 0.5 as our input.
            # (Detectron2's `resolution=4`, the name Shapely 2.1 deprecates for `quad_segs`)
            poly = Polygon(poly_coord).buffer(0.5, **{_BUFFER_QUAD_SEGS: 4})

            if not label.hasInstances or label.ignoreInEval:
                # even if we won't store the polygon it still contributes to overlaps resolution
                polygons_union = polygons_union.union(poly)
                continue

            # Take non-overlapping part of the polygon
            poly_wo_overlaps = poly.difference(polygons_union)
            if poly_wo_overlaps.is_empty:
                continue
            polygons_union = polygons_union.union(poly)

            anno = {}
            anno["iscrowd"] = label_name.endswith("group")
            anno["category_id"] = label.id

            if isinstance(poly_wo_overlaps, Polygon):
                poly_list = [poly_wo_overlaps]
            elif isinstance(poly_wo_overlaps, MultiPolygon):
                poly_list = poly_wo_overlaps.geoms
            else:
                raise NotImplementedError("Unknown geometric structure {}".format(poly_wo_overlaps))

            poly_coord = []
            for poly_el in poly_list:
                # COCO API can work only with exterior boundaries now, hence we store only them.
                poly_coord.append(list(chain(*poly_el.exterior.coords)))
            anno["segmentation"] = poly_coord
            (xmin, ymin, xmax, ymax) = poly_wo_overlaps.bounds

            anno["bbox"] = (xmin, ymin, xmax, ymax)
            anno["bbox_mode"] = BoxMode.XYXY_ABS

            annos.append(anno)
    else:
        # See also the official annotation parsing scripts at
        # cityscapesscripts/evaluation/instances2dict.py
        with PathManager.open(instance_id_file, "rb") as f:
            inst_image = np.asarray(Image.open(f), order="F")
        # ids < 24 are stuff labels (filtering them first is about 5% faster)
        flattened_ids = np.unique(inst_image[inst_image >= 24])

        ret = {
            "file_name": image_file,
            "image_id": os.path.basename(image_file),
            "height": inst_image.shape[0],
            "width": inst_image.shape[1],
        }

        for instance_id in flattened_ids:
            # For non-crowd annotations, instance_id // 1000 is the label_id
            # Crowd annotations have <1000 instance ids
            label_id = instance_id // 1000 if instance_id >= 1000 else instance_id
            label = id2label[label_id]
            if not label.hasInstances or label.ignoreInEval:
                continue

            anno = {}
            anno["iscrowd"] = instance_id < 1000
            anno["category_id"] = label.id

            mask = np.asarray(inst_image == instance_id, dtype=np.uint8, order="F")

            inds = np.nonzero(mask)
            ymin, ymax = inds[0].min(), inds[0].max()
            xmin, xmax = inds[1].min(), inds[1].max()
            anno["bbox"] = (xmin, ymin, xmax, ymax)
            if xmax <= xmin or ymax <= ymin:
                continue
            anno["bbox_mode"] = BoxMode.XYXY_ABS
            if to_polygons:
                # This conversion comes from D4809743 and D5171122,
                # when Mask-RCNN was first developed.
                import cv2

                contours = cv2.findContours(mask.copy(), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[
                    -2
                ]
                polygons = [c.reshape(-1).tolist() for c in contours if len(c) >= 3]
                # opencv's can produce invalid polygons
                if len(polygons) == 0:
                    continue
                anno["segmentation"] = polygons
            else:
                anno["segmentation"] = mask_util.encode(mask[:, :, None])[0]
            annos.append(anno)
    ret["annotations"] = annos
    return ret


def register_builtin_cityscapes():
    """Point Detectron2's builtin ``cityscapes_fine_{instance_seg,sem_seg}_{train,val,test}``
    at this module's loaders, on the ``image_dir`` / ``gt_dir`` of their metadata (which is
    left as Detectron2 set it). Names that are not registered are skipped. Idempotent.
    Returns the names re-registered."""
    done = []
    registered = set(DatasetCatalog.list())
    for name in BUILTIN_CITYSCAPES_DATASETS:
        if name not in registered:
            continue
        meta = MetadataCatalog.get(name)
        if not (hasattr(meta, "image_dir") and hasattr(meta, "gt_dir")):
            continue
        if name.startswith("cityscapes_fine_instance_seg_"):
            loader = functools.partial(
                load_cityscapes_instances,
                meta.image_dir,
                meta.gt_dir,
                from_json=True,
                to_polygons=True,
            )
        else:
            loader = functools.partial(load_cityscapes_semantic, meta.image_dir, meta.gt_dir)
        DatasetCatalog.remove(name)
        DatasetCatalog.register(name, loader)
        done.append(name)
    return done
