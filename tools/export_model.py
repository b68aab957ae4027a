#!/usr/bin/env python
"""Export a solo_d2 model to TorchScript or ONNX (detectron2's ``export_model.py`` conventions).

    tools/export_model.py --config-file configs/Synthetic/SOLOv2_R18.yaml --format onnx \
        --output exported/ [--sample-image img.png] MODEL.WEIGHTS output/model_final.pth

Writes ``<output>/model.ts`` (``torch.jit.trace``) or ``<output>/model.onnx`` (the
TorchScript-based ``torch.onnx.export``, opset 17 by default, checked with
``onnx.checker``), and ``<output>/model.json``: what the graph takes and returns, the
test resize (``INPUT.MIN_SIZE_TEST``/``MAX_SIZE_TEST``), ``num_classes`` and the class names
(``class_names``, ``class_colors``, ``class_names_source``), which ``tools/onnx_predict.py`` reads.

Class names: those saved in MODEL.WEIGHTS by solo_d2's trainer (the training dataset's), or
``--class-names a,b,c`` (or a file, one name a line). Without either, the names of the config's
dataset are used with a warning naming it, else none (a warning: labels are numbers). Names
whose count differs from the model's classes are not used (a warning names both). Weights of
another class count than the config's are refused.

Graphs (see :mod:`solo_d2.export`), height and width dynamic:

- SOLO / Decoupled SOLO / SOLOv2: ``image [3, H, W]`` float 0-255 in ``INPUT.FORMAT`` ->
  ``masks [M, H, W]`` bool, ``scores [M]``, ``classes [M]``, ``boxes [M, 4]``,
  ``num_detections`` (``M = MODEL.SOLO.MAX_PER_IMG``; point NMS, thresholds, Matrix NMS and
  the mask upsampling are inside the graph).
- BiSeNet V1/V2: ``images [N, 3, H, W]`` (N dynamic) -> ``logits [N, K, H, W]``, or with
  ``--argmax`` ``labels [N, H, W]``.

The graph does not resize: give it the image at the network's input size (the test
resize of the config, as ``DefaultPredictor`` does), as ``tools/onnx_predict.py`` does.
The sample image (default: a random image of the test size) only drives the trace.
Exporting on CPU; a model with deformable convolutions (DCN) exports to TorchScript only
(ONNX is refused with a message).
"""

import argparse
import json
import logging
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import solo_d2  # noqa: E402,F401  (registers models and datasets)
from solo_d2.engine import setup_cfg  # noqa: E402

logger = logging.getLogger("solo_d2.export_model")


def get_parser():
    p = argparse.ArgumentParser(description="Export a solo_d2 model to TorchScript or ONNX")
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--format", choices=["torchscript", "onnx"], default="onnx")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument(
        "--sample-image", help="image used for tracing (default: random, at the test size)"
    )
    p.add_argument(
        "--opset",
        type=int,
        default=None,
        help="ONNX opset (default: solo_d2.export.DEFAULT_OPSET = 17)",
    )
    p.add_argument(
        "--argmax", action="store_true", help="BiSeNet: output labels [N, H, W] instead of logits"
    )
    p.add_argument(
        "--class-names",
        metavar="NAMES",
        help="class names for model.json, 'a,b,c' or a file with one name per line (default: those "
        "saved in MODEL.WEIGHTS by solo_d2's trainer)",
    )
    p.add_argument(
        "--allow-random-weights",
        action="store_true",
        help="export even without MODEL.WEIGHTS (a randomly initialized model; for testing only)",
    )
    p.add_argument("opts", default=[], nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p


def test_size(cfg, h: int, w: int):
    """(h, w) after the config's test ResizeShortestEdge (as DefaultPredictor resizes)."""
    short = cfg.INPUT.MIN_SIZE_TEST
    if not short:
        return h, w
    scale = short / min(h, w)
    if max(h, w) * scale > cfg.INPUT.MAX_SIZE_TEST:
        scale = cfg.INPUT.MAX_SIZE_TEST / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def sample_image(cfg, path=None) -> torch.Tensor:
    """[3, H, W] float 0-255 in cfg.INPUT.FORMAT at the test size."""
    from detectron2.data import transforms as T
    from detectron2.data.detection_utils import read_image

    if path is None:
        h, w = test_size(cfg, 480, 640)
        img = np.random.RandomState(0).randint(0, 256, (h, w, 3)).astype(np.uint8)
    else:
        img = read_image(path, format=cfg.INPUT.FORMAT)
        if cfg.INPUT.MIN_SIZE_TEST:
            img = (
                T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
                .get_transform(img)
                .apply_image(img)
            )
    return torch.as_tensor(np.ascontiguousarray(img.transpose(2, 0, 1))).float()


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    if not os.path.isfile(args.config_file):
        sys.stderr.write(f"error: config file {args.config_file} does not exist\n")
        return 2
    opts = [o for o in args.opts if o != "--"]
    cfg = setup_cfg(args.config_file, opts, device="cpu")
    if not cfg.MODEL.WEIGHTS and not args.allow_random_weights:
        sys.stderr.write(
            "error: MODEL.WEIGHTS is empty: this would export a randomly initialized model. "
            "Pass MODEL.WEIGHTS path/to/model_final.pth, or --allow-random-weights.\n"
        )
        return 2

    from detectron2.modeling import build_model

    from solo_d2.data.register import parse_class_names
    from solo_d2.engine.model_metadata import (
        WeightsMismatchError,
        class_count_spec,
        load_weights_for_inference,
        model_metadata,
    )
    from solo_d2.export import (
        DEFAULT_OPSET,
        SOLO_OUTPUT_NAMES,
        SOLOExportWrapper,
        export,
        export_wrapper,
    )

    model = build_model(cfg).eval()
    try:
        saved = load_weights_for_inference(cfg, model)
        override = parse_class_names(args.class_names) if args.class_names else None
    except (WeightsMismatchError, ValueError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    try:
        wrapper = export_wrapper(model, argmax=args.argmax)
    except TypeError as e:  # e.g. the panoptic model
        sys.stderr.write(f"error: {e}\n")
        return 2
    is_solo = isinstance(wrapper, SOLOExportWrapper)
    sample = sample_image(cfg, args.sample_image)
    if not is_solo:
        sample = sample[None]
    opset = args.opset or DEFAULT_OPSET
    os.makedirs(args.output, exist_ok=True)
    path = os.path.join(args.output, "model.ts" if args.format == "torchscript" else "model.onnx")
    start = time.perf_counter()
    try:
        export(wrapper, sample, path, args.format, opset=opset)
    except ValueError as e:  # e.g. ONNX of a DCN model
        sys.stderr.write(f"error: {e}\n")
        return 2
    logger.info(
        "wrote %s (%s, traced on %s) in %.1f s",
        path,
        args.format,
        tuple(sample.shape),
        time.perf_counter() - start,
    )

    meta = model_metadata(cfg, saved, override)
    attr = "thing_classes" if is_solo else "stuff_classes"
    names, colors = meta.get(attr), meta.get(attr.replace("classes", "colors"))
    if meta["source"] == "none":
        names = None  # model.json: no names rather than numbers
    if names:
        logger.info("class names from %s: %s", meta["source"], names)
    else:
        logger.info("no class names in model.json: labels will be class numbers")
    info = {
        "model": "solo" if is_solo else "bisenet",
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "format": args.format,
        "file": os.path.basename(path),
        "opset": opset if args.format == "onnx" else None,
        "input_format": cfg.INPUT.FORMAT,
        "min_size_test": cfg.INPUT.MIN_SIZE_TEST,
        "max_size_test": cfg.INPUT.MAX_SIZE_TEST,
        "inputs": ["image"] if is_solo else ["images"],
        "outputs": list(SOLO_OUTPUT_NAMES)
        if is_solo
        else (["labels"] if args.argmax else ["logits"]),
        "max_detections": wrapper.max_per_img if is_solo else None,
        "num_classes": class_count_spec(cfg)[1],
        "class_names": list(names) if names else None,
        "class_colors": [list(map(int, c)) for c in colors] if colors else None,
        "class_names_source": meta["source"],
        "weights": cfg.MODEL.WEIGHTS,
        "config_file": os.path.abspath(args.config_file),
    }
    with open(os.path.join(args.output, "model.json"), "w") as f:
        json.dump(info, f, indent=2)
    logger.info("wrote %s", os.path.join(args.output, "model.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
