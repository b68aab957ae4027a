#!/usr/bin/env python
"""Generate solo_d2's synthetic datasets (normally done automatically on first use).

python datasets/generate_synthetic.py                  # all, into $DETECTRON2_DATASETS or datasets/
python datasets/generate_synthetic.py --root /data --which coco --force
"""

import argparse
import os
import shutil
import sys
import time


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root",
        default=os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")),
        help="dataset root (default: $DETECTRON2_DATASETS or datasets/)",
    )
    parser.add_argument(
        "--which",
        choices=["coco", "cityscapes", "coco_panoptic", "textured_panoptic", "all"],
        default="all",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="generator seed (registered datasets use 0)"
    )
    parser.add_argument("--force", action="store_true", help="delete an existing tree first")
    args = parser.parse_args(argv)

    from solo_d2.data.synthetic import generate_synthetic_cityscapes, generate_synthetic_coco
    from solo_d2.data.synthetic_panoptic import generate_synthetic_coco_panoptic
    from solo_d2.data.synthetic_panoptic_textured import generate_synthetic_textured_panoptic

    generators = {
        "coco": generate_synthetic_coco,
        "cityscapes": generate_synthetic_cityscapes,
        "coco_panoptic": generate_synthetic_coco_panoptic,
        "textured_panoptic": generate_synthetic_textured_panoptic,
    }
    for kind in list(generators) if args.which == "all" else [args.which]:
        target = os.path.join(args.root, "synthetic_" + kind)
        if args.force and os.path.isdir(target):
            shutil.rmtree(target)
        start = time.perf_counter()
        path = generators[kind](args.root, seed=args.seed)
        print("synthetic_{}: {} ({:.1f} s)".format(kind, path, time.perf_counter() - start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
