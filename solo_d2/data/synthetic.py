"""Deterministic synthetic datasets in COCO and genuine Cityscapes formats.

Two small datasets that a tiny model can learn on a CPU in minutes and that
exercise every format path of the real datasets:

- ``synthetic_coco``: images about 256x320 (sizes vary by +-32 px) with the thing
  classes ``square``, ``circle`` and ``triangle`` (COCO ids 1..3). Each class has
  its own color and texture. Instances overlap (later shapes occlude earlier ones),
  range from a few pixels to most of the image, every eighth image is empty, and
  some images carry an ``iscrowd`` region (a cluster of small circles, RLE).
  Unoccluded instances are mostly stored as polygons, occluded ones as RLE.
- ``synthetic_cityscapes``: a genuine Cityscapes tree (``leftImg8bit`` +
  ``gtFine`` with ``_polygons.json``, ``_labelIds.png``, ``_instanceIds.png`` and
  ``_labelTrainIds.png``) of 256x512 street-like scenes using Cityscapes' own label
  ids. The label images are rasterized from the polygon json by cityscapesscripts
  itself, so the json, the pngs and the evaluation scripts agree exactly. Its panoptic
  ground truth (``gtFine/cityscapes_panoptic_{split}/*_gtFine_panoptic.png`` and
  ``gtFine/cityscapes_panoptic_{split}.json``) is made by cityscapesscripts'
  ``createPanopticImgs.convert2panoptic`` from the ``_instanceIds.png``.

Generation is seeded (same seed -> same bytes) and atomic: a split tree is written
into a temporary directory next to the target and renamed into place, with a stamp
file (written last) that names the generator version and seed. A tree without a
matching stamp is stale and is replaced, so concurrent processes (pytest-xdist
workers, several trainers) never see partial data.
"""

import contextlib
import io
import json
import os
import shutil
import tempfile
import time
import uuid

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

__all__ = [
    "COCO_CLASSES",
    "CITYSCAPES_CITIES",
    "SYNTHETIC_VERSION",
    "generate_synthetic_coco",
    "generate_synthetic_cityscapes",
    "ensure_synthetic_coco",
    "ensure_synthetic_cityscapes",
    "stamp_ok",
]

SYNTHETIC_VERSION = 1
# a kind whose files changed since SYNTHETIC_VERSION 1 (cityscapes 2: + gtFine panoptic)
_KIND_VERSIONS = {"cityscapes": 2}
STAMP_FILE = ".solo_d2_synthetic_stamp"
COCO_CLASSES = ("square", "circle", "triangle")
COCO_SPLITS = {"train": 48, "val": 16}
CITYSCAPES_CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt", "lindau")}
CITYSCAPES_SPLITS = {"train": 12, "val": 6}
CITYSCAPES_SIZE = (256, 512)  # (height, width)

# ---------------------------------------------------------------- atomic output


def _stamp_text(kind, seed):
    version = _KIND_VERSIONS.get(kind, SYNTHETIC_VERSION)
    return json.dumps({"kind": kind, "version": version, "seed": int(seed)}, sort_keys=True)


def stamp_ok(target, kind, seed=0):
    """True when ``target`` holds a complete tree of this generator version and seed."""
    path = os.path.join(target, STAMP_FILE)
    try:
        with open(path) as f:
            return f.read() == _stamp_text(kind, seed)
    except OSError:
        return False


def _ensure(target, kind, seed, write_fn):
    """Create ``target`` with ``write_fn(tmpdir)`` unless a valid stamp is there (race-safe)."""
    if stamp_ok(target, kind, seed):
        return target
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(target) + ".tmp-", dir=parent)
    try:
        write_fn(tmp, seed)
        with open(os.path.join(tmp, STAMP_FILE), "w") as f:
            f.write(_stamp_text(kind, seed))
        for _ in range(20):
            if stamp_ok(target, kind, seed):  # another process finished first
                return target
            try:
                os.rename(tmp, target)  # atomic; fails if target exists and is not empty
                return target
            except OSError:
                if os.path.isdir(target) and not stamp_ok(target, kind, seed):
                    # stale or partial tree: move it aside atomically, then delete it
                    trash = os.path.join(
                        parent, ".{}.stale-{}".format(os.path.basename(target), uuid.uuid4().hex)
                    )
                    try:
                        os.rename(target, trash)
                        shutil.rmtree(trash, ignore_errors=True)
                    except OSError:
                        time.sleep(0.1)
                elif not stamp_ok(target, kind, seed):
                    time.sleep(0.1)
        if stamp_ok(target, kind, seed):
            return target
        raise RuntimeError(
            "Could not move the generated dataset {} into place at {}".format(tmp, target)
        )
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def _save_png(array, path):
    # PIL writes identical bytes for identical arrays (no timestamps in PNG chunks)
    Image.fromarray(array).save(path, format="PNG", compress_level=6)


def _save_png16(image, path):
    """Save a label image (PIL mode ``I``, values 0..65535) as a 16-bit grayscale PNG.

    Pillow 11 refuses to write mode ``I`` as PNG ("cannot write mode I as PNG"); mode
    ``I;16`` is written as 16-bit by every Pillow version (the same bytes Pillow < 10
    wrote for mode ``I``).
    """
    array = np.asarray(image)
    if array.min(initial=0) < 0 or array.max(initial=0) > 65535:
        raise ValueError(
            "{}: values outside 0..65535 cannot be stored in a 16-bit PNG".format(path)
        )
    image16 = Image.fromarray(
        np.ascontiguousarray(array, dtype=np.uint16)
    )  # mode "I;16" on every Pillow
    if image16.mode != "I;16":
        raise RuntimeError(
            "Pillow made a mode {} image of uint16 data, expected I;16".format(image16.mode)
        )
    image16.save(path, format="PNG")


# ---------------------------------------------------------------- COCO scenes


def _shape_polygon(cls, cx, cy, size, angle):
    """Vertices (N, 2) float of a ``cls`` shape of diameter ``size`` centered at (cx, cy)."""
    r = size / 2.0
    if cls == "square":
        t = angle + np.pi / 4 + np.arange(4) * np.pi / 2
        rr = r * np.sqrt(2.0) * 0.75  # keep the rotated square inside the size budget
    elif cls == "circle":
        n = int(np.clip(size // 2, 8, 32))
        t = angle + np.arange(n) * 2 * np.pi / n
        rr = r
    else:  # triangle
        t = angle - np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        rr = r
    return np.stack([cx + rr * np.cos(t), cy + rr * np.sin(t)], axis=1)


def _rasterize(poly, h, w):
    """(H, W) bool mask of a polygon, rasterized exactly as pycocotools does for COCO gt."""
    rles = mask_util.frPyObjects([np.round(poly, 2).ravel().tolist()], h, w)
    return mask_util.decode(mask_util.merge(rles)).astype(bool)


def _texture(cls, h, w, rng):
    """(H, W, 3) float image of the class texture with per-instance color jitter."""
    yy, xx = np.mgrid[0:h, 0:w]
    jitter = rng.uniform(-25, 25, size=3)
    if cls == "square":  # red with horizontal stripes
        base = np.array([205.0, 45.0, 40.0]) + jitter
        mod = np.where((yy // 3) % 2 == 0, 1.0, 0.7)
    elif cls == "circle":  # green with a checkerboard
        base = np.array([45.0, 190.0, 70.0]) + jitter
        mod = np.where(((yy // 4) + (xx // 4)) % 2 == 0, 1.0, 0.75)
    else:  # blue, flat
        base = np.array([50.0, 70.0, 215.0]) + jitter
        mod = np.ones((h, w))
    return base[None, None, :] * mod[:, :, None]


def _visible_masks(full_masks):
    """Visible part of each mask when masks are painted in order (later ones on top)."""
    visible, covered = [None] * len(full_masks), np.zeros_like(full_masks[0])
    for i in range(len(full_masks) - 1, -1, -1):
        visible[i] = full_masks[i] & ~covered
        covered |= full_masks[i]
    return visible


def _coco_scene(rng, index, h, w):
    """Objects of one image: list of dicts with class, full mask, polygon (None = crowd)."""
    objects = []
    if index % 8 == 3:
        return objects  # an empty image
    if index % 4 == 1:  # a crowd region: a cluster of small circles, drawn first
        cx, cy = rng.uniform(40, w - 40), rng.uniform(40, h - 40)
        mask = np.zeros((h, w), dtype=bool)
        for _ in range(int(rng.integers(6, 11))):
            px, py = cx + rng.uniform(-28, 28), cy + rng.uniform(-28, 28)
            mask |= _rasterize(_shape_polygon("circle", px, py, rng.uniform(5, 10), 0.0), h, w)
        objects.append({"cls": "circle", "mask": mask, "poly": None})
    smallest = min(h, w)
    for k in range(int(rng.integers(1, 7))):
        for _attempt in range(20):
            cls = COCO_CLASSES[int(rng.integers(0, 3))]
            if k == 0 and index % 5 == 0:
                size = rng.uniform(4, 9)  # a few pixels
            elif k == 0 and index % 5 == 2:
                size = rng.uniform(0.6, 0.92) * smallest  # most of the image
            else:
                size = float(np.exp(rng.uniform(np.log(10), np.log(0.5 * smallest))))
            cx = rng.uniform(size / 2 + 1, w - size / 2 - 1)
            cy = rng.uniform(size / 2 + 1, h - size / 2 - 1)
            poly = _shape_polygon(cls, cx, cy, size, rng.uniform(0, 2 * np.pi))
            mask = _rasterize(poly, h, w)
            if mask.sum() < 4:
                continue
            candidate = objects + [{"cls": cls, "mask": mask, "poly": poly}]
            visible = _visible_masks([o["mask"] for o in candidate])
            if all(v.sum() >= max(4, 0.3 * o["mask"].sum()) for v, o in zip(visible, candidate)):
                objects = candidate
                break
    return objects


def _coco_image(rng, objects, h, w):
    """(H, W, 3) uint8 image: a low-saturation gradient background plus textured shapes."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.uniform(90, 160)
    gx, gy = rng.uniform(-0.15, 0.15, size=2)
    bg = base + gx * (xx - w / 2) + gy * (yy - h / 2)
    img = np.repeat(bg[:, :, None], 3, axis=2) + rng.uniform(-12, 12, size=3)[None, None, :]
    for obj in objects:
        tex = _texture(obj["cls"], h, w, rng)
        img[obj["mask"]] = tex[obj["mask"]]
    img += rng.normal(0, 6, size=img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _coco_annotations(rng, objects, image_id, next_ann_id):
    anns = []
    visible = _visible_masks([o["mask"] for o in objects]) if objects else []
    for obj, vis in zip(objects, visible):
        rle = mask_util.encode(np.asfortranarray(vis.astype(np.uint8)))
        crowd = obj["poly"] is None
        if not crowd and bool((vis == obj["mask"]).all()) and rng.random() < 0.75:
            segmentation = [[round(float(v), 2) for v in np.round(obj["poly"], 2).ravel()]]
        else:
            segmentation = {
                "size": [int(s) for s in rle["size"]],
                "counts": rle["counts"].decode("ascii"),
            }
        anns.append(
            {
                "id": next_ann_id + len(anns),
                "image_id": image_id,
                "category_id": COCO_CLASSES.index(obj["cls"]) + 1,
                "segmentation": segmentation,
                "area": float(mask_util.area(rle)),
                "bbox": [float(v) for v in mask_util.toBbox(rle)],
                "iscrowd": int(crowd),
            }
        )
    return anns


def _write_coco(out_dir, seed):
    os.makedirs(os.path.join(out_dir, "annotations"))
    for split_index, (split, count) in enumerate(COCO_SPLITS.items()):
        os.makedirs(os.path.join(out_dir, split))
        images, annotations = [], []
        for i in range(count):
            rng = np.random.default_rng([seed, split_index, i])
            h = 256 + 16 * int(rng.integers(-2, 3))
            w = 320 + 16 * int(rng.integers(-2, 3))
            objects = _coco_scene(rng, i, h, w)
            file_name = "{:06d}.png".format(i)
            _save_png(_coco_image(rng, objects, h, w), os.path.join(out_dir, split, file_name))
            image_id = i + 1
            images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
            annotations += _coco_annotations(rng, objects, image_id, len(annotations) + 1)
        data = {
            "info": {
                "description": "solo_d2 synthetic COCO-format dataset",
                "version": str(SYNTHETIC_VERSION),
            },
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": [
                {"id": i + 1, "name": c, "supercategory": "shape"}
                for i, c in enumerate(COCO_CLASSES)
            ],
        }
        with open(
            os.path.join(out_dir, "annotations", "instances_{}.json".format(split)), "w"
        ) as f:
            json.dump(data, f, sort_keys=True)


def generate_synthetic_coco(root, seed=0):
    """Write ``<root>/synthetic_coco`` (if missing or stale) and return its path."""
    return _ensure(os.path.join(root, "synthetic_coco"), "coco", seed, _write_coco)


def ensure_synthetic_coco(root, seed=0):
    return generate_synthetic_coco(root, seed)


# ---------------------------------------------------------------- Cityscapes scenes

# thing label: (width, height) in pixels at the bottom of the image (perspective scale 1)
_CS_THINGS = {
    "person": (34, 100),
    "rider": (40, 105),
    "car": (170, 85),
    "truck": (210, 140),
    "bus": (270, 160),
    "train": (320, 150),
    "motorcycle": (70, 55),
    "bicycle": (65, 50),
}
# (relative x, relative y) outlines in a unit box; y grows downwards, bottom at 1
_CS_OUTLINES = {
    "person": [
        (0.35, 0),
        (0.65, 0),
        (0.7, 0.2),
        (1, 0.35),
        (0.85, 0.6),
        (0.75, 1),
        (0.25, 1),
        (0.15, 0.6),
        (0, 0.35),
        (0.3, 0.2),
    ],
    "car": [(0.2, 0), (0.75, 0), (0.9, 0.4), (1, 0.5), (1, 1), (0, 1), (0, 0.5), (0.1, 0.4)],
    "vehicle": [(0.03, 0), (0.97, 0), (1, 0.05), (1, 1), (0, 1), (0, 0.05)],
    "two_wheeler": [(0.3, 0), (0.7, 0), (1, 0.6), (0.8, 1), (0.2, 1), (0, 0.6)],
}
_CS_OUTLINE_OF = {
    "person": "person",
    "rider": "person",
    "car": "car",
    "truck": "vehicle",
    "bus": "vehicle",
    "train": "vehicle",
    "motorcycle": "two_wheeler",
    "bicycle": "two_wheeler",
}


def _int_poly(points):
    return [[int(round(x)), int(round(y))] for x, y in points]


def _cityscapes_objects(rng, index, h, w):
    """Polygons of one street scene, in Cityscapes drawing order (later on top)."""
    horizon = int(rng.integers(100, 130))
    objs = [{"label": "sky", "polygon": [[0, 0], [w - 1, 0], [w - 1, horizon], [0, horizon]]}]
    xs = np.linspace(0, w - 1, int(rng.integers(5, 10)))
    tops = rng.integers(15, horizon - 20, size=len(xs))
    skyline = [(x, t) for x0, x1, t in zip(xs[:-1], xs[1:], tops) for x in (x0, x1)]
    objs.append(
        {
            "label": "building",
            "polygon": _int_poly(skyline + [(w - 1, horizon + 5), (0, horizon + 5)]),
        }
    )
    for _ in range(int(rng.integers(1, 4))):  # trees
        cx, r = rng.uniform(0, w), rng.uniform(15, 45)
        t = np.linspace(0, 2 * np.pi, 12, endpoint=False)
        objs.append(
            {
                "label": "vegetation",
                "polygon": _int_poly(zip(cx + r * np.cos(t), horizon - r * 0.6 + r * np.sin(t))),
            }
        )
    objs.append(
        {
            "label": "terrain",
            "polygon": _int_poly([(0, horizon), (w - 1, horizon), (w - 1, h - 1), (0, h - 1)]),
        }
    )
    vl, vr = rng.uniform(0.35, 0.45) * w, rng.uniform(0.55, 0.65) * w
    objs.append(
        {
            "label": "sidewalk",
            "polygon": _int_poly(
                [
                    (vl - 40, horizon),
                    (vr + 40, horizon),
                    (w - 1, h - 50),
                    (w - 1, h - 1),
                    (0, h - 1),
                    (0, h - 50),
                ]
            ),
        }
    )
    objs.append(
        {
            "label": "road",
            "polygon": _int_poly(
                [
                    (vl, horizon),
                    (vr, horizon),
                    (w - 1, h - 20),
                    (w - 1, h - 1),
                    (0, h - 1),
                    (0, h - 20),
                ]
            ),
        }
    )
    px = rng.uniform(0.05, 0.95) * w
    objs.append(
        {
            "label": "pole",
            "polygon": _int_poly(
                [
                    (px, horizon - 70),
                    (px + 3, horizon - 70),
                    (px + 3, horizon + 25),
                    (px, horizon + 25),
                ]
            ),
        }
    )
    objs.append(
        {
            "label": "traffic sign",
            "polygon": _int_poly(
                [
                    (px - 6, horizon - 80),
                    (px + 9, horizon - 80),
                    (px + 9, horizon - 66),
                    (px - 6, horizon - 66),
                ]
            ),
        }
    )

    things = []
    if index % 6 != 5:  # every sixth image has no thing instances at all
        labels = list(_CS_THINGS)
        for _ in range(int(rng.integers(2, 9))):
            things.append(
                (labels[int(rng.integers(0, len(labels)))], int(rng.integers(horizon + 4, h - 18)))
            )
        if index % 3 == 0:  # a crowd ("group") region, as annotated in Cityscapes
            things.append(
                (
                    "persongroup" if index % 2 else "cargroup",
                    int(rng.integers(horizon + 10, h - 30)),
                )
            )
    for label, bottom in sorted(things, key=lambda t: t[1]):  # far objects first, near ones on top
        scale = (bottom - horizon) / float(h - horizon)
        base = label[: -len("group")] if label.endswith("group") else label
        bw, bh = _CS_THINGS[base]
        width = max(
            3.0, bw * scale * rng.uniform(0.8, 1.2) * (3.0 if label.endswith("group") else 1.0)
        )
        height = max(4.0, bh * scale * rng.uniform(0.8, 1.2))
        x0 = rng.uniform(-0.2 * width, w - 0.8 * width)
        outline = np.asarray(_CS_OUTLINES[_CS_OUTLINE_OF[base]], dtype=float)
        pts = np.stack(
            [x0 + outline[:, 0] * width, bottom - height + outline[:, 1] * height], axis=1
        )
        pts = np.clip(pts, 0, [w - 1, h - 1])
        objs.append({"label": label, "polygon": _int_poly(pts)})
    ego = [
        (0, h - 1),
        (w - 1, h - 1),
        (w - 1, h - 8),
        (0.75 * w, h - 14),
        (0.25 * w, h - 14),
        (0, h - 8),
    ]
    objs.append({"label": "ego vehicle", "polygon": _int_poly(ego)})
    return objs


def _cityscapes_image(rng, label_ids, instance_ids):
    """RGB image colored by Cityscapes label colors, with per-instance jitter and texture."""
    from cityscapesscripts.helpers.labels import labels

    lut = np.zeros((256, 3), dtype=np.float64)
    for lab in labels:
        if lab.id >= 0:
            lut[lab.id] = lab.color
    img = lut[label_ids]
    h, w = label_ids.shape
    inst = np.unique(instance_ids[instance_ids >= 1000])
    jitter = rng.uniform(-30, 30, size=(len(inst), 3))
    index = np.searchsorted(inst, instance_ids).clip(0, max(len(inst) - 1, 0))
    is_inst = instance_ids >= 1000
    if len(inst):
        img[is_inst] += jitter[index[is_inst]]
    yy, xx = np.mgrid[0:h, 0:w]
    stripes = ((yy // 3) % 2 == 0) & is_inst & (label_ids >= 27)  # large vehicles: stripes
    img[stripes] *= 0.75
    img += rng.normal(0, 5, size=img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _write_cityscapes(out_dir, seed):
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
    from cityscapesscripts.preparation.json2labelImg import createLabelImage

    h, w = CITYSCAPES_SIZE
    for split_index, (split, count) in enumerate(CITYSCAPES_SPLITS.items()):
        cities = CITYSCAPES_CITIES[split]
        for i in range(count):
            rng = np.random.default_rng([seed, 100 + split_index, i])
            city = cities[i % len(cities)]
            stem = "{}_000000_{:06d}".format(city, i)
            img_dir = os.path.join(out_dir, "leftImg8bit", split, city)
            gt_dir = os.path.join(out_dir, "gtFine", split, city)
            os.makedirs(img_dir, exist_ok=True)
            os.makedirs(gt_dir, exist_ok=True)
            json_path = os.path.join(gt_dir, stem + "_gtFine_polygons.json")
            with open(json_path, "w") as f:
                json.dump(
                    {"imgHeight": h, "imgWidth": w, "objects": _cityscapes_objects(rng, i, h, w)},
                    f,
                    indent=1,
                )
            annotation = Annotation()
            annotation.fromJsonFile(json_path)
            label_ids = createLabelImage(annotation, "ids")
            label_ids.save(os.path.join(gt_dir, stem + "_gtFine_labelIds.png"))
            createLabelImage(annotation, "trainIds").save(
                os.path.join(gt_dir, stem + "_gtFine_labelTrainIds.png")
            )
            instance_ids = createInstanceImage(annotation, "ids")
            _save_png16(instance_ids, os.path.join(gt_dir, stem + "_gtFine_instanceIds.png"))
            image = _cityscapes_image(rng, np.asarray(label_ids), np.asarray(instance_ids))
            _save_png(image, os.path.join(img_dir, stem + "_leftImg8bit.png"))
    # gtFine/cityscapes_panoptic_{split}/ + .json, by cityscapesscripts' own converter
    from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic

    with contextlib.redirect_stdout(io.StringIO()):
        convert2panoptic(os.path.join(out_dir, "gtFine"), setNames=list(CITYSCAPES_SPLITS))


def generate_synthetic_cityscapes(root, seed=0):
    """Write ``<root>/synthetic_cityscapes`` (if missing or stale) and return its path."""
    return _ensure(
        os.path.join(root, "synthetic_cityscapes"), "cityscapes", seed, _write_cityscapes
    )


def ensure_synthetic_cityscapes(root, seed=0):
    return generate_synthetic_cityscapes(root, seed)
