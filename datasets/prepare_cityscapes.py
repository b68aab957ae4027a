#!/usr/bin/env python
"""Create the ``*_gtFine_labelTrainIds.png`` files that semantic segmentation trains on.

Cityscapes ships ``*_gtFine_polygons.json``; this rasterizes them with cityscapesscripts'
own ``json2labelImg`` (encoding "trainIds": 19 classes 0..18, everything else 255),
exactly like ``cityscapesscripts/preparation/createTrainIdLabelImgs.py`` but with an
explicit root and existing files skipped.

    python datasets/prepare_cityscapes.py                       # $DETECTRON2_DATASETS/cityscapes
    python datasets/prepare_cityscapes.py --cityscapes /data/cityscapes
"""

import argparse
import glob
import os
import sys


def main(argv=None):
    root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cityscapes",
        default=os.path.join(root, "cityscapes"),
        help="Cityscapes root holding gtFine/ (default: $DETECTRON2_DATASETS/cityscapes)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="recreate existing labelTrainIds files"
    )
    args = parser.parse_args(argv)

    gt_root = os.path.join(args.cityscapes, "gtFine")
    if not os.path.isdir(gt_root):
        sys.exit(
            "'{}' does not exist: download gtFine_trainvaltest.zip from "
            "https://www.cityscapes-dataset.com/downloads/ and unzip it into '{}' "
            "(see datasets/README.md)".format(gt_root, args.cityscapes)
        )
    from cityscapesscripts.preparation.json2labelImg import json2labelImg

    files = sorted(glob.glob(os.path.join(gt_root, "*", "*", "*_gtFine_polygons.json")))
    if not files:
        sys.exit("No *_gtFine_polygons.json under '{}'".format(gt_root))
    done = 0
    for i, json_file in enumerate(files):
        out = json_file.replace("_polygons.json", "_labelTrainIds.png")
        if args.overwrite or not os.path.isfile(out):
            json2labelImg(json_file, out, "trainIds")
            done += 1
        if (i + 1) % 500 == 0:
            print("{}/{} files".format(i + 1, len(files)))
    print(
        "Wrote {} labelTrainIds files ({} already present) under {}".format(
            done, len(files) - done, gt_root
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
