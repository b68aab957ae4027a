"""A harder synthetic COCO panoptic dataset for comparing panoptic models (``docs/PANOPTIC.md``).

``synthetic_textured_panoptic``: the things of ``synthetic_coco_panoptic`` (squares, circles,
triangles with occlusion, crowd clusters, objects of a few pixels, images without things) on
four *textured* stuff classes (``sky``, ``grass``, ``wall``, ``road``) whose regions are
irregular: each pixel takes the class of the largest of four smooth random fields (plus a
vertical trend: sky tends to the top, road to the bottom), so a class often falls into several
disconnected parts (one segment, as COCO stuff). Void: the pixels near the border between two
regions (a band of varying width) and, in some images, a blob. Colors are jittered per image
and overlap between stuff and thing classes (green grass and green circles, grey wall and road).

Splits (same file layout as :mod:`.synthetic_panoptic`): ``train`` (96 images) and ``val`` (24),
and two json-only splits of ``train`` to choose settings on without touching ``val``: ``fit``
(its first 72 images) and ``holdout`` (its last 24).
"""

import os

import numpy as np

from .synthetic import _ensure
from .synthetic_panoptic import (
    ONLY_STUFF_INDEX,
    PANOPTIC_CATEGORIES,
    _panoptic_jsons,
    _write_coco_panoptic,
    void_blob,
    write_panoptic_jsons,
)

__all__ = [
    "TEXTURED_PANOPTIC_CATEGORIES",
    "TEXTURED_PANOPTIC_SPLITS",
    "TEXTURED_PANOPTIC_DERIVED_SPLITS",
    "TEXTURED_PANOPTIC_NAME",
    "generate_synthetic_textured_panoptic",
]

TEXTURED_PANOPTIC_NAME = "synthetic_textured_panoptic"
TEXTURED_PANOPTIC_SPLITS = {"train": 96, "val": 24}
# split -> (the split whose files it uses, slice of that split's images)
TEXTURED_PANOPTIC_DERIVED_SPLITS = {
    "fit": ("train", slice(0, 72)),
    "holdout": ("train", slice(72, 96)),
}
TEXTURED_PANOPTIC_CATEGORIES = [c for c in PANOPTIC_CATEGORIES if c["isthing"]] + [
    {"id": 5, "name": "sky", "isthing": 0, "color": [135, 200, 235], "supercategory": "stuff"},
    {"id": 6, "name": "grass", "isthing": 0, "color": [70, 150, 60], "supercategory": "stuff"},
    {"id": 8, "name": "wall", "isthing": 0, "color": [150, 120, 110], "supercategory": "stuff"},
    {"id": 11, "name": "road", "isthing": 0, "color": [110, 110, 115], "supercategory": "stuff"},
]
_TREND = np.array(
    [1.2, 0.0, 0.2, -1.0]
)  # sky, grass, wall, road: field bias at the top minus the bottom


def _smooth_field(rng, h, w, cells):
    """``[H, W]`` float: bilinear interpolation of a ``cells x cells`` grid of N(0, 1) values."""
    grid = rng.normal(size=(cells + 1, cells + 1))
    y = np.linspace(0, cells, h)
    x = np.linspace(0, cells, w)
    y0 = np.minimum(y.astype(int), cells - 1)
    x0 = np.minimum(x.astype(int), cells - 1)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _textured_layout(rng, index, h, w):
    """``[H, W]`` uint8: 1 sky, 2 grass, 3 wall, 4 road, 0 void."""
    cells = int(rng.integers(2, 5))
    yy = np.linspace(0.5, -0.5, h)[:, None]  # +0.5 at the top
    fields = np.stack([_smooth_field(rng, h, w, cells) + t * yy for t in _TREND])
    order = np.sort(fields, axis=0)
    layout = (fields.argmax(axis=0) + 1).astype(np.uint8)
    if index != ONLY_STUFF_INDEX:
        margin = rng.uniform(0.02, 0.08)
        layout[order[-1] - order[-2] < margin] = 0  # unlabeled borders between regions
        if index % 5 == 3:
            void_blob(rng, layout)
    return layout


def _textured_image(rng, layout):
    """(H, W, 3) float image: sky with clouds, grass blades, bricks, road with grain;
    void clutter."""
    h, w = layout.shape
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3))

    def paint(label, color, mod):
        base = np.array(color, dtype=float) + rng.uniform(-25, 25, 3)
        sel = layout == label
        img[sel] = (base[None, None, :] * mod[:, :, None])[sel]

    paint(1, [135, 200, 235], 0.85 + 0.15 * np.clip(_smooth_field(rng, h, w, 8), -1, 1))  # clouds
    paint(2, [70, 150, 60], np.where((xx + (yy // 6) * 3) % 5 < 2, 1.0, 0.75))  # blades
    brick = ((yy // 8) % 2 == 0) ^ (((xx + 8 * ((yy // 8) % 2)) // 16) % 2 == 0)
    paint(3, [150, 120, 110], np.where(brick, 1.0, 0.8))
    paint(4, [110, 110, 115], 0.9 + 0.1 * rng.uniform(-1, 1, size=(h, w)))  # grain
    void = layout == 0
    img[void] = rng.uniform(0, 255, size=(void.sum(), 3))
    return img


def _write_textured(out_dir, seed):
    written = _write_coco_panoptic(
        out_dir,
        seed,
        TEXTURED_PANOPTIC_SPLITS,
        TEXTURED_PANOPTIC_CATEGORIES,
        layout_fn=_textured_layout,
        image_fn=_textured_image,
    )
    for split, (source, part) in TEXTURED_PANOPTIC_DERIVED_SPLITS.items():
        panoptic, coco = written[source]
        images = panoptic["images"][part]
        ids = {im["id"] for im in images}
        annotations = [a for a in panoptic["annotations"] if a["image_id"] in ids]
        instances = [a for a in coco["annotations"] if a["image_id"] in ids]
        write_panoptic_jsons(
            out_dir,
            split,
            *_panoptic_jsons(images, annotations, instances, TEXTURED_PANOPTIC_CATEGORIES),
        )


def generate_synthetic_textured_panoptic(root, seed=0):
    """Write ``<root>/synthetic_textured_panoptic`` (if missing or stale) and return its path."""
    return _ensure(
        os.path.join(root, TEXTURED_PANOPTIC_NAME), "textured_panoptic", seed, _write_textured
    )
