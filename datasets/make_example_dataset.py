#!/usr/bin/env python
"""Write a small example dataset of your own, in the three formats docs/CUSTOM_DATA.md registers.

    python datasets/make_example_dataset.py mydata [--train 40] [--val 12] [--seed 0]

Scenes of non-square JPEG images (240x320, 320x256, 224x352) with a wall above a floor (stuff)
and 0-4 objects of 3 classes (things: ``ellipse``, ``star``, ``ring``; a ring has a hole, so its
mask is stored as RLE; every seventh image has no object), overlapping (later objects occlude
earlier ones). A 2-pixel band along the horizon is void. Written:

    mydata/train/000000.jpg ...            mydata/val/...
    mydata/train.json, mydata/val.json     COCO instances: categories 1 ellipse, 2 star, 3 ring;
                                           segmentation as RLE, bbox, area, iscrowd 0
    mydata/labels_train/000000.png ...     semantic labels: pixel = index in classes.txt
    mydata/labels_val/...                  (0 wall, 1 floor, 2 ellipse, 3 star, 4 ring), 255 = void
    mydata/classes.txt                     the 5 semantic class names, one a line
    mydata/panoptic_train/000000.png ...   COCO panoptic PNGs (id = R + 256 G + 256^2 B, 0 = void)
    mydata/panoptic_train.json, ..._val    COCO panoptic json: things 1-3 as above,
                                           stuff 4 wall, 5 floor

Deterministic for a seed. Used by docs/CUSTOM_DATA.md's walkthrough and its test.
"""

import argparse
import json
import os
import sys

import cv2
import numpy as np
import pycocotools.mask as mask_util

THINGS = [
    (1, "ellipse", (220, 60, 50)),
    (2, "star", (60, 200, 70)),
    (3, "ring", (50, 90, 225)),
]  # id, name, RGB
STUFF = [(4, "wall", (180, 175, 160)), (5, "floor", (120, 90, 60))]
SIZES = [(240, 320), (320, 256), (224, 352)]  # (height, width)
VOID = 255


def _object_mask(rng, cls, h, w):
    """A filled mask of class ``cls`` (1 ellipse, 2 star, 3 ring) at a random place and size."""
    r = int(rng.randint(14, min(h, w) // 4 + 1))
    cx, cy = int(rng.randint(r // 2, w - r // 2)), int(rng.randint(r // 2, h - r // 2))
    mask = np.zeros((h, w), np.uint8)
    angle = float(rng.uniform(0, 180))
    if cls == 1:
        cv2.ellipse(
            mask, (cx, cy), (r, max(6, int(r * rng.uniform(0.45, 0.8)))), angle, 0, 360, 1, -1
        )
    elif cls == 2:
        t = np.deg2rad(angle) + np.arange(10) * np.pi / 5
        radius = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        pts = (
            np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], 1).round().astype(np.int32)
        )
        cv2.fillPoly(mask, [pts], 1)
    else:
        cv2.circle(mask, (cx, cy), r, 1, -1)
        cv2.circle(mask, (cx, cy), int(r * 0.55), 0, -1)
    return mask.astype(bool)


def _scene(rng, index):
    h, w = SIZES[index % len(SIZES)]
    horizon = int(rng.randint(int(0.35 * h), int(0.65 * h)))
    n = 0 if index % 7 == 3 else int(rng.randint(1, 5))
    objects = [(int(rng.randint(1, 4)), None) for _ in range(n)]
    objects = [(cls, _object_mask(rng, cls, h, w)) for cls, _ in objects]
    taken = np.zeros((h, w), bool)
    visible = []
    for cls, mask in reversed(objects):  # the last drawn is on top
        vis = mask & ~taken
        taken |= mask
        if vis.sum() >= 30:
            visible.append((cls, vis))
    visible.reverse()
    return h, w, horizon, objects, visible


def _render(rng, h, w, horizon, objects):
    img = np.zeros((h, w, 3), np.float32)
    ys = np.arange(h, dtype=np.float32)[:, None, None]
    img[:horizon] = np.array(STUFF[0][2], np.float32) * (
        0.85 + 0.15 * ys[:horizon] / max(horizon, 1)
    )
    img[horizon:] = np.array(STUFF[1][2], np.float32) * (
        0.8 + 0.2 * (ys[horizon:] - horizon) / max(h - horizon, 1)
    )
    for cls, mask in objects:
        base = np.array(THINGS[cls - 1][2], np.float32) + rng.uniform(-35, 35, 3)
        img[mask] = base * rng.uniform(0.8, 1.1)
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)[:, :, ::-1]  # BGR for OpenCV


def _bbox(mask):
    ys, xs = np.nonzero(mask)
    return [
        int(xs.min()),
        int(ys.min()),
        int(xs.max() - xs.min() + 1),
        int(ys.max() - ys.min() + 1),
    ]


def _write_split(out, split, count, rng, start_ann):
    img_dir, lab_dir, pan_dir = (
        os.path.join(out, d) for d in (split, "labels_" + split, "panoptic_" + split)
    )
    for d in (img_dir, lab_dir, pan_dir):
        os.makedirs(d, exist_ok=True)
    images, anns, pan_anns = [], [], []
    ann_id = start_ann
    for i in range(count):
        h, w, horizon, objects, visible = _scene(rng, i)
        name = "{:06d}".format(i)
        cv2.imwrite(
            os.path.join(img_dir, name + ".jpg"),
            _render(rng, h, w, horizon, objects),
            [cv2.IMWRITE_JPEG_QUALITY, 95],
        )
        images.append({"id": i, "file_name": name + ".jpg", "height": h, "width": w})
        semantic = np.zeros((h, w), np.uint8)
        semantic[horizon:] = 1
        pan = np.zeros((h, w), np.int32)
        pan[:horizon], pan[horizon:] = 1, 2
        segments = []
        for seg_id, (cat, _, _) in ((1, STUFF[0]), (2, STUFF[1])):
            segments.append({"id": seg_id, "category_id": cat, "iscrowd": 0})
        for k, (cls, mask) in enumerate(visible):
            semantic[mask] = 1 + cls
            pan[mask] = 3 + k
            segments.append({"id": 3 + k, "category_id": cls, "iscrowd": 0})
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            anns.append(
                {
                    "id": ann_id,
                    "image_id": i,
                    "category_id": cls,
                    "segmentation": rle,
                    "area": int(mask.sum()),
                    "bbox": _bbox(mask),
                    "iscrowd": 0,
                }
            )
            ann_id += 1
        band = np.zeros((h, w), bool)
        band[max(horizon - 1, 0) : horizon + 1] = True
        band &= pan <= 2  # void band on the stuff only
        semantic[band] = VOID
        pan[band] = 0
        for s in segments:
            s["area"] = int((pan == s["id"]).sum())
            s["bbox"] = _bbox(pan == s["id"]) if s["area"] else [0, 0, 0, 0]
        segments = [s for s in segments if s["area"] > 0]
        cv2.imwrite(os.path.join(lab_dir, name + ".png"), semantic)
        rgb = np.stack([pan % 256, pan // 256 % 256, pan // 65536], -1).astype(np.uint8)
        cv2.imwrite(os.path.join(pan_dir, name + ".png"), rgb[:, :, ::-1])
        pan_anns.append({"image_id": i, "file_name": name + ".png", "segments_info": segments})
    cats = [{"id": c, "name": n, "supercategory": "shape"} for c, n, _ in THINGS]
    with open(os.path.join(out, split + ".json"), "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": cats}, f)
    pan_cats = [
        {"id": c, "name": n, "isthing": 1, "color": list(col), "supercategory": "shape"}
        for c, n, col in THINGS
    ]
    pan_cats += [
        {"id": c, "name": n, "isthing": 0, "color": list(col), "supercategory": "scene"}
        for c, n, col in STUFF
    ]
    with open(os.path.join(out, "panoptic_{}.json".format(split)), "w") as f:
        json.dump({"images": images, "annotations": pan_anns, "categories": pan_cats}, f)
    return len(anns), ann_id


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("out", help="output folder (created)")
    p.add_argument("--train", type=int, default=40, help="training images (default 40)")
    p.add_argument("--val", type=int, default=12, help="validation images (default 12)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = np.random.RandomState(args.seed)
    os.makedirs(args.out, exist_ok=True)
    n_train, next_id = _write_split(args.out, "train", args.train, rng, 1)
    n_val, _ = _write_split(args.out, "val", args.val, rng, next_id)
    with open(os.path.join(args.out, "classes.txt"), "w") as f:
        f.write("\n".join([n for _, n, _ in STUFF] + [n for _, n, _ in THINGS]) + "\n")
    print(
        "wrote {}: {} train images ({} objects), {} val images ({} objects); classes {}".format(
            args.out, args.train, n_train, args.val, n_val, ", ".join(n for _, n, _ in THINGS)
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
