#!/usr/bin/env python
"""Visualize solo_d2 predictions on images, a video or a webcam (detectron2's demo conventions).

    tools/demo.py --config-file configs/Synthetic/SOLOv2_R18.yaml --input 'imgs/*.png' \
        --output out/ --opts MODEL.WEIGHTS output/model_final.pth

Each input that cannot be read is reported by name and skipped; the others are
still processed, and the exit status is 1 if any input failed.

Output names (--output is a folder, or a file for a single image): each input
``dir/name.ext`` is written as ``<output>/name.png``. Inputs that would get the same
name (``a.png`` and ``a.jpg``; ``x/a.png`` and ``y/a.png``) are all kept, each named
after its path relative to their common folder with the extension kept and ``/``
replaced by ``__``: ``a_png.png`` and ``a_jpg.png``; ``x__a_png.png`` and
``y__a_png.png``. A name that is still taken gets ``-2``, ``-3``... in input order.
The names depend only on the list of inputs, so a rerun overwrites its own outputs.

A config without MODEL.WEIGHTS would run a randomly initialized model and draw
plausible-looking nonsense: that is refused unless --allow-random-weights is given. Weights
of another class count than the config's are refused (naming the key to set).

Class names: those saved in the checkpoint by solo_d2's trainer (the training dataset's);
``--class-names a,b,c`` (or a file, one name a line) overrides them. Without either, the
names of the config's dataset are used with a warning naming it, else class numbers.

``--confidence-threshold T`` (as Detectron2's demo, which sets
``MODEL.ROI_HEADS.SCORE_THRESH_TEST``): sets ``MODEL.SOLO.SCORE_THR`` and
``MODEL.SOLO.UPDATE_THR`` to T for the SOLO family (the scores the model outputs are at most
the category score, so this keeps exactly the detections scoring >= T) and
``MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH`` for the panoptic model.
"""

import argparse
import glob
import logging
import os
import sys
import time

import cv2

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import solo_d2  # noqa: E402,F401
from solo_d2.data.register import parse_class_names  # noqa: E402
from solo_d2.engine import setup_cfg  # noqa: E402
from solo_d2.utils.demo import DemoPredictor  # noqa: E402

logger = logging.getLogger("solo_d2.demo")


def get_parser():
    p = argparse.ArgumentParser(description="solo_d2 demo")
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--input", nargs="+", help="image files or glob patterns ('dir/*.jpg')")
    p.add_argument("--video-input", help="path to a video file")
    p.add_argument("--webcam", action="store_true", help="read frames from webcam 0")
    p.add_argument(
        "--output",
        help="output folder (or file for a single image/video); images are written "
        "as <output>/<input name>.png, and inputs sharing a name are all kept: a.png and a.jpg -> "
        "a_png.png and a_jpg.png, x/a.png and y/a.png -> x__a_png.png and y__a_png.png",
    )
    p.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.3,
        help="minimum score of the instances drawn: MODEL.SOLO.SCORE_THR and MODEL.SOLO.UPDATE_THR "
        "(SOLO family; MODEL.ROI_HEADS.SCORE_THRESH_TEST does not apply), and "
        "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH (panoptic) (default 0.3)",
    )
    p.add_argument(
        "--class-names",
        metavar="NAMES",
        help="class names to draw, 'a,b,c' or a file with one name per line (default: those saved "
        "in MODEL.WEIGHTS by solo_d2's trainer)",
    )
    p.add_argument(
        "--allow-random-weights",
        action="store_true",
        help="run even without MODEL.WEIGHTS (a randomly initialized model; for testing only)",
    )
    p.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="KEY VALUE config overrides"
    )
    return p


def threshold_opts(threshold):
    """Config overrides of ``--confidence-threshold`` (before the user's ``--opts``, which win)."""
    t = str(threshold)
    return [
        "MODEL.SOLO.SCORE_THR",
        t,
        "MODEL.SOLO.UPDATE_THR",
        t,
        "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH",
        t,
    ]


def expand_inputs(patterns):
    """Expand globs; a pattern matching nothing is kept so it is reported as missing."""
    paths = []
    for pat in patterns:
        hits = sorted(glob.glob(os.path.expanduser(pat)))
        paths.extend(hits if hits else [pat])
    return paths


def output_names(paths):
    """Unique, deterministic output file names (``*.png``) for ``paths``, in order.

    ``dir/name.ext`` -> ``name.png``; paths sharing that name are named after their path
    relative to their common folder, extension kept, separators as ``__``
    (``x/a.png`` -> ``x__a_png.png``); a name still taken gets ``-2``, ``-3``, ...
    """

    def stem(p):
        return os.path.splitext(os.path.basename(p))[0]

    groups = {}
    for p in paths:
        groups.setdefault(stem(p), []).append(os.path.abspath(p))
    names, taken = [], set()
    for p in paths:
        group = groups[stem(p)]
        if len(set(group)) == 1:
            base = stem(p)
        else:
            common = os.path.commonpath([os.path.dirname(g) for g in group])
            rel = os.path.relpath(os.path.abspath(p), common)
            base = rel.replace(os.sep, "__").replace(".", "_")
        name, k = base + ".png", 1
        while name in taken:
            k += 1
            name = "{}-{}.png".format(base, k)
        taken.add(name)
        names.append(name)
    return names


def output_path(output, name, n_inputs):
    if os.path.splitext(output)[1] and n_inputs == 1:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        return output
    os.makedirs(output, exist_ok=True)
    return os.path.join(output, name)


def run_images(demo, paths, output) -> int:
    failed = 0
    names = output_names(paths)
    for path, name in zip(paths, names):
        img = cv2.imread(path, cv2.IMREAD_COLOR) if os.path.isfile(path) else None
        if img is None:
            reason = "no such file" if not os.path.exists(path) else "not a readable image"
            logger.error("cannot read input %s: %s", path, reason)
            failed += 1
            continue
        start = time.perf_counter()
        preds, vis = demo(img)
        elapsed = time.perf_counter() - start
        logger.info("%s: %s (%.2fs)", path, demo.describe(preds), elapsed)
        if output:
            out = output_path(output, name, len(paths))
            cv2.imwrite(out, vis[:, :, ::-1])
            logger.info("wrote %s", out)
    return failed


def run_video(demo, capture, output, name):
    writer = None
    if output:
        fps = capture.get(cv2.CAP_PROP_FPS) or 15
        w, h = (
            int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        )
        out = output if os.path.splitext(output)[1] else os.path.join(output, name + ".mp4")
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        writer = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    frames = 0
    for frame in demo.run_on_video(capture):
        frames += 1
        if writer is not None:
            writer.write(frame)
        else:
            cv2.imshow("solo_d2", frame)
            if cv2.waitKey(1) == 27:
                break
    capture.release()
    if writer is not None:
        writer.release()
    logger.info("%s: %d frames", name, frames)
    return frames


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    if sum(bool(x) for x in (args.input, args.video_input, args.webcam)) != 1:
        get_parser().error("give exactly one of --input, --video-input, --webcam")
    if not os.path.isfile(args.config_file):
        get_parser().error(f"--config-file {args.config_file} does not exist")
    if not 0.0 <= args.confidence_threshold < 1.0:
        get_parser().error(
            f"--confidence-threshold must lie in [0, 1), got {args.confidence_threshold}"
        )
    cfg = setup_cfg(args.config_file, threshold_opts(args.confidence_threshold) + list(args.opts))
    if not cfg.MODEL.WEIGHTS and not args.allow_random_weights:
        get_parser().error(
            "MODEL.WEIGHTS is empty in {}: the demo would run a randomly initialized "
            "model. Pass --opts MODEL.WEIGHTS path/to/model_final.pth, or "
            "--allow-random-weights to do it anyway.".format(args.config_file)
        )
    class_names = parse_class_names(args.class_names) if args.class_names else None
    demo = DemoPredictor(cfg, args.confidence_threshold, class_names)
    names = demo.metadata.get("thing_classes") or demo.metadata.get("stuff_classes")
    if demo.predictor.class_metadata["source"] == "none":
        logger.info("no class names: labels are class numbers")
    else:
        logger.info("class names from %s: %s", demo.predictor.class_metadata["source"], names)
    if args.input:
        paths = expand_inputs(args.input)
        failed = run_images(demo, paths, args.output)
        if failed:
            logger.error("%d of %d inputs could not be read", failed, len(paths))
            return 1
        return 0
    if args.video_input:
        cap = cv2.VideoCapture(args.video_input)
        if not cap.isOpened():
            logger.error("cannot open video %s", args.video_input)
            return 1
        run_video(demo, cap, args.output, os.path.splitext(os.path.basename(args.video_input))[0])
        return 0
    cap = cv2.VideoCapture(0)
    if not cap.isOpened():
        logger.error("cannot open webcam 0")
        return 1
    run_video(demo, cap, args.output, "webcam")
    return 0


if __name__ == "__main__":
    sys.exit(main())
