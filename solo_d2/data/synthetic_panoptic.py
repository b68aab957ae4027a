"""Deterministic synthetic panoptic dataset in COCO panoptic format (standard and separated).

``synthetic_coco_panoptic``: images of about 256x320 (sizes vary by +-32 px) whose pixels are
*stuff* (``sky``, ``ground``, ``wall``), *things* (the shapes ``square``, ``circle``,
``triangle`` of ``synthetic_coco``, overlapping, some ``iscrowd`` clusters) or *void* (a thin
band along the horizon and, in some images, a void blob). Image 1 of each split has only stuff
(no thing, no void pixel); every eighth image (3, 11, 19) has no thing. ``wall`` is sometimes
two disconnected blocks (one segment, as COCO stuff). Category ids are not contiguous (things
1..3, stuff 5, 7, 8), as in COCO, so every id mapping is exercised.

Files, as COCO's (``panoptic_{split}2017`` etc.) with ``{split}`` = ``train`` / ``val``::

    synthetic_coco_panoptic/
      {split}/000000.jpg ...                    images (JPEG: Detectron2's panoptic loader
                                                assumes ".jpg")
      panoptic_{split}/000000.png ...           COCO panoptic PNGs, id = R + 256 G + 256^2 B
      panoptic_stuff_{split}/000000.png ...     "separated" semantic PNGs, as Detectron2's
                                                datasets/prepare_panoptic_fpn.py makes them:
                                                0 = things, 1..S = stuff in category order,
                                                255 = void
      annotations/panoptic_{split}.json         images, annotations (file_name, image_id,
                                                segments_info: id, category_id, iscrowd, area,
                                                bbox [x, y, w, h]), categories (id, name,
                                                isthing, color, supercategory)
      annotations/instances_{split}.json        COCO instances of the thing segments (the same
                                                visible masks; polygons or RLE)

Segment ids are colors as panopticapi's ``IdGenerator`` makes them: a stuff segment has its
category color, the first instance of a thing class its category color, further instances that
color jittered (so the R, G and B bytes of an id all vary). Generation is seeded and atomic
(temporary directory + rename + stamp), like :mod:`.synthetic`.
"""

import json
import os

import numpy as np
from PIL import Image

from .panoptic import rgb2id
from .synthetic import (
    COCO_CLASSES,
    _coco_annotations,
    _coco_scene,
    _ensure,
    _save_png,
    _texture,
    _visible_masks,
)

__all__ = [
    "PANOPTIC_CATEGORIES",
    "PANOPTIC_SPLITS",
    "ONLY_STUFF_INDEX",
    "generate_synthetic_coco_panoptic",
    "coco_panoptic_paths",
    "rgb2id",
    "id2rgb",
    "semantic_from_panoptic",
]

PANOPTIC_SPLITS = {"train": 24, "val": 8}
ONLY_STUFF_INDEX = 1  # this image of each split is all stuff: no thing, no void pixel
_THING_COLORS = [(205, 45, 40), (45, 190, 70), (50, 70, 215)]
PANOPTIC_CATEGORIES = [
    {
        "id": i + 1,
        "name": c,
        "isthing": 1,
        "color": list(_THING_COLORS[i]),
        "supercategory": "shape",
    }
    for i, c in enumerate(COCO_CLASSES)
] + [
    {"id": 5, "name": "sky", "isthing": 0, "color": [135, 200, 235], "supercategory": "stuff"},
    {"id": 7, "name": "ground", "isthing": 0, "color": [140, 105, 20], "supercategory": "stuff"},
    {"id": 8, "name": "wall", "isthing": 0, "color": [120, 120, 125], "supercategory": "stuff"},
]
_STUFF = [c for c in PANOPTIC_CATEGORIES if not c["isthing"]]
_SKY, _GROUND, _WALL = 1, 2, 3  # stuff layout labels (index into _STUFF plus one); 0 = void


def id2rgb(ids):
    """``[H, W, 3]`` uint8 RGB encoding of an ``[H, W]`` id map (inverse of :func:`rgb2id`)."""
    ids = np.asarray(ids).astype(np.int64)
    if ids.min(initial=0) < 0 or ids.max(initial=0) >= 256**3:
        raise ValueError("panoptic ids must be in 0..256^3-1")
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def semantic_from_panoptic(pan_ids, segments_info, categories):
    """Separated semantic label map of one image, as Detectron2's ``prepare_panoptic_fpn.py``:
    thing categories -> 0, stuff categories -> 1..S in the order of ``categories``, unlabeled
    pixels (and ids not in ``segments_info``) -> 255.

    Args:
        pan_ids: ``[H, W]`` int panoptic ids. segments_info: the image's segments (dataset
            category ids). categories: list of dicts with ``id`` and ``isthing``.
    Returns:
        ``[H, W]`` uint8.
    """
    stuff_ids = [c["id"] for c in categories if not c["isthing"]]
    id_map = {c["id"]: 0 for c in categories if c["isthing"]}
    id_map.update({cid: i + 1 for i, cid in enumerate(stuff_ids)})
    out = np.full(pan_ids.shape, 255, dtype=np.uint8)
    for seg in segments_info:
        out[pan_ids == seg["id"]] = id_map[seg["category_id"]]
    return out


def coco_panoptic_paths(root, split, name="synthetic_coco_panoptic", image_split=None):
    """Paths of split ``split`` of ``<root>/<name>``: dict with ``image_root``,
    ``panoptic_root``, ``panoptic_json``, ``sem_seg_root``, ``instances_json``. The files
    (images, PNGs) are those of ``image_split`` (default ``split``); the jsons are ``split``'s."""
    base = os.path.join(root, name)
    files = split if image_split is None else image_split
    return {
        "image_root": os.path.join(base, files),
        "panoptic_root": os.path.join(base, "panoptic_" + files),
        "panoptic_json": os.path.join(base, "annotations", "panoptic_{}.json".format(split)),
        "sem_seg_root": os.path.join(base, "panoptic_stuff_" + files),
        "instances_json": os.path.join(base, "annotations", "instances_{}.json".format(split)),
    }


# ---------------------------------------------------------------- scenes


def _stuff_layout(rng, index, h, w):
    """``[H, W]`` uint8: 1 sky, 2 ground, 3 wall, 0 void."""
    yy, xx = np.mgrid[0:h, 0:w]
    horizon = rng.uniform(0.3, 0.6) * h + rng.uniform(2, 12) * np.sin(
        2 * np.pi * xx / rng.uniform(80, 240) + rng.uniform(0, 6.3)
    )
    layout = np.where(yy < horizon, _SKY, _GROUND).astype(np.uint8)
    if index % 3 == 0:  # indoors: wall instead of sky
        layout[yy < horizon] = _WALL
    else:  # one or two wall blocks standing on the ground (two blocks: one disconnected segment)
        for _ in range(1 + index % 2):
            x0 = rng.uniform(0, 0.7 * w)
            x1 = x0 + rng.uniform(0.15, 0.3) * w
            top = rng.uniform(0.1, 0.25) * h
            bottom = horizon + rng.uniform(5, 25)
            layout[(xx >= x0) & (xx < x1) & (yy >= top) & (yy < bottom)] = _WALL
    if index != ONLY_STUFF_INDEX:
        layout[np.abs(yy + 0.5 - horizon) < 1.5] = 0  # unlabeled band along the horizon
        if index % 5 == 3:
            void_blob(rng, layout)
    return layout


def void_blob(rng, layout):
    """Set an elliptic blob of the ``[H, W]`` layout to 0 (void), in place: center anywhere,
    radii 10-40 x 8-30 pixels."""
    h, w = layout.shape
    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy, rx, ry = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(10, 40), rng.uniform(8, 30)
    layout[((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1] = 0


def _stuff_image(rng, layout):
    """(H, W, 3) float image of the stuff layout:
    sky gradient, ground noise, brick wall, void clutter."""
    h, w = layout.shape
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3))
    sky = np.array([135.0, 200.0, 235.0]) + rng.uniform(-15, 15, 3)
    img[layout == _SKY] = (sky[None, None, :] * (0.8 + 0.2 * yy[:, :, None] / h))[layout == _SKY]
    ground = np.array([140.0, 105.0, 20.0]) + rng.uniform(-15, 15, 3)
    img[layout == _GROUND] = ground + rng.normal(0, 14, size=((layout == _GROUND).sum(), 3))
    brick = ((yy // 8) % 2 == 0) ^ (((xx + 8 * ((yy // 8) % 2)) // 16) % 2 == 0)
    wall = np.array([120.0, 120.0, 125.0]) + rng.uniform(-15, 15, 3)
    img[layout == _WALL] = (wall[None, None, :] * np.where(brick, 1.0, 0.8)[:, :, None])[
        layout == _WALL
    ]
    void = layout == 0
    img[void] = rng.uniform(0, 255, size=(void.sum(), 3))
    return img


class _IdGenerator:
    """Deterministic variant of panopticapi's ``IdGenerator``: stuff segments get their category
    color, the first instance of a thing class its category color, others a jittered one."""

    def __init__(self, rng, categories=PANOPTIC_CATEGORIES):
        self.rng = rng
        self.taken = {(0, 0, 0)} | {tuple(c["color"]) for c in categories if not c["isthing"]}

    def __call__(self, category):
        color = tuple(category["color"])
        if not category["isthing"]:
            return int(rgb2id(color))
        while color in self.taken:
            color = tuple(
                int(v)
                for v in np.clip(
                    np.array(category["color"]) + self.rng.integers(-30, 31, 3), 0, 255
                )
            )
        self.taken.add(color)
        return int(rgb2id(color))


def _bbox(mask):
    """COCO panoptic bbox ``[x, y, w, h]`` (ints) of a non-empty mask."""
    ys, xs = np.nonzero(mask)
    return [
        int(xs.min()),
        int(ys.min()),
        int(xs.max() - xs.min() + 1),
        int(ys.max() - ys.min() + 1),
    ]


def _panoptic_image(
    rng, index, h, w, categories=PANOPTIC_CATEGORIES, layout_fn=_stuff_layout, image_fn=_stuff_image
):
    """One image: (image uint8, panoptic ids [H, W] int64, segments_info, thing objects).
    ``layout_fn(rng, index, h, w)`` gives the stuff layout (0 void, ``j`` = j-th stuff category
    of ``categories``), ``image_fn(rng, layout)`` its pixels."""
    objects = [] if index == ONLY_STUFF_INDEX else _coco_scene(rng, index, h, w)
    layout = layout_fn(rng, index, h, w)
    img = image_fn(rng, layout)
    visible = _visible_masks([o["mask"] for o in objects]) if objects else []
    things = np.zeros((h, w), dtype=bool)
    for obj in objects:
        tex = _texture(obj["cls"], h, w, rng)
        img[obj["mask"]] = tex[obj["mask"]]
        things |= obj["mask"]
    img += rng.normal(0, 5, size=img.shape)
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)

    new_id = _IdGenerator(rng, categories)
    pan = np.zeros((h, w), dtype=np.int64)
    segments = []
    for label, cat in enumerate([c for c in categories if not c["isthing"]], start=1):
        mask = (layout == label) & ~things
        if mask.any():
            segments.append({"id": new_id(cat), "category_id": cat["id"], "iscrowd": 0})
            pan[mask] = segments[-1]["id"]
    for obj, vis in zip(objects, visible):
        cat = [c for c in categories if c["isthing"]][COCO_CLASSES.index(obj["cls"])]
        segments.append(
            {"id": new_id(cat), "category_id": cat["id"], "iscrowd": int(obj["poly"] is None)}
        )
        pan[vis] = segments[-1]["id"]
    for seg in segments:
        mask = pan == seg["id"]
        seg["area"] = int(mask.sum())
        seg["bbox"] = _bbox(mask)
    return image, pan, segments, objects


def _write_coco_panoptic(
    out_dir, seed, splits=PANOPTIC_SPLITS, categories=PANOPTIC_CATEGORIES, **scene
):
    """Write the splits ``{split: image count}`` of a synthetic COCO panoptic tree into
    ``out_dir``; ``scene``: ``layout_fn`` / ``image_fn`` of :func:`_panoptic_image`. Returns
    ``{split: (panoptic json dict, instances json dict)}``."""
    os.makedirs(os.path.join(out_dir, "annotations"))
    written = {}
    for split_index, (split, count) in enumerate(splits.items()):
        paths = coco_panoptic_paths(os.path.dirname(out_dir), split)
        dirs = {
            k: os.path.join(out_dir, os.path.basename(paths[k]))
            for k in ("image_root", "panoptic_root", "sem_seg_root")
        }
        for d in dirs.values():
            os.makedirs(d)
        images, annotations, instances = [], [], []
        for i in range(count):
            rng = np.random.default_rng([seed, 200 + split_index, i])
            h = 256 + 16 * int(rng.integers(-2, 3))
            w = 320 + 16 * int(rng.integers(-2, 3))
            image, pan, segments, objects = _panoptic_image(rng, i, h, w, categories, **scene)
            image_id, stem = i + 1, "{:06d}".format(i)
            Image.fromarray(image).save(
                os.path.join(dirs["image_root"], stem + ".jpg"), format="JPEG", quality=95
            )
            _save_png(id2rgb(pan), os.path.join(dirs["panoptic_root"], stem + ".png"))
            _save_png(
                semantic_from_panoptic(pan, segments, categories),
                os.path.join(dirs["sem_seg_root"], stem + ".png"),
            )
            images.append({"id": image_id, "file_name": stem + ".jpg", "height": h, "width": w})
            annotations.append(
                {"image_id": image_id, "file_name": stem + ".png", "segments_info": segments}
            )
            instances += _coco_annotations(rng, objects, image_id, len(instances) + 1)
        written[split] = _panoptic_jsons(images, annotations, instances, categories)
        write_panoptic_jsons(out_dir, split, *written[split])
    return written


def _panoptic_jsons(images, annotations, instances, categories):
    """(panoptic json dict, instances json dict) of these images."""
    info = {"description": "solo_d2 synthetic COCO panoptic dataset", "version": "1"}
    panoptic = {
        "info": info,
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    thing_categories = [
        {k: c[k] for k in ("id", "name", "supercategory")} for c in categories if c["isthing"]
    ]
    coco = {
        "info": info,
        "licenses": [],
        "images": images,
        "annotations": instances,
        "categories": thing_categories,
    }
    return panoptic, coco


def write_panoptic_jsons(out_dir, split, panoptic, coco):
    """Write ``annotations/panoptic_{split}.json`` and ``annotations/instances_{split}.json``."""
    for key, data in (("panoptic", panoptic), ("instances", coco)):
        with open(os.path.join(out_dir, "annotations", "{}_{}.json".format(key, split)), "w") as f:
            json.dump(data, f, sort_keys=True)


def generate_synthetic_coco_panoptic(root, seed=0):
    """Write ``<root>/synthetic_coco_panoptic`` (if missing or stale) and return its path."""
    return _ensure(
        os.path.join(root, "synthetic_coco_panoptic"), "coco_panoptic", seed, _write_coco_panoptic
    )
