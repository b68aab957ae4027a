#!/usr/bin/env python
"""Check registered datasets before a long training: metadata paths and image files.

    python datasets/check_dataset.py coco_2017_train coco_2017_val            # a sample of images
    python datasets/check_dataset.py cityscapes_fine_instance_seg_train --check-images all
    python datasets/check_dataset.py mydata_train --check-images all \
        --register-coco mydata_train mydata/train.json mydata/train      # your own data

``--check-images all`` decodes every image and label file (with a progress bar) and names each
missing or unreadable one. Exit status 0 when every file checked is fine, 1 otherwise (each
problem is printed).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from solo_d2.data.datasets import CHECK_IMAGES_MODES, IMAGE_SAMPLE_SIZE  # noqa: E402  (registers the datasets)
from solo_d2.data.register import add_register_arguments, register_from_args  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="+", help="registered dataset names")
    parser.add_argument(
        "--check-images",
        choices=CHECK_IMAGES_MODES,
        default="sample",
        help="image files to check: that a fixed sample of --sample-size items exists (default), "
        "'all' (decode every image and label file), or none",
    )
    parser.add_argument("--sample-size", type=int, default=IMAGE_SAMPLE_SIZE)
    add_register_arguments(parser)
    args = parser.parse_args(argv)

    from solo_d2.data import check_dataset

    failed = 0
    try:
        register_from_args(args)
    except (OSError, ValueError) as e:
        print("error: {}".format(e), file=sys.stderr)
        return 1
    for name in args.names:
        try:
            check_dataset(name, check_images=args.check_images, sample_size=args.sample_size)
            print("{}: OK".format(name))
        except (
            KeyError,
            OSError,
            ValueError,
        ) as e:  # OSError: missing (FileNotFoundError) or unreadable
            print("{}: {}".format(name, e), file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
