#!/usr/bin/env python
"""Run a model exported by ``tools/export_model.py --format onnx`` on an image, with
onnxruntime, numpy and OpenCV only (no torch, no detectron2), and draw the result.

    tools/onnx_predict.py exported/model.onnx img.jpg -o prediction.png [--threshold 0.3]

Reads ``model.json`` next to the model (written by the exporter) for the input colour
format, the test resize and the class names; without it, give ``--input-format``,
``--min-size``/``--max-size``. ``--class-names a,b,c`` (or a file, one name a line) overrides
model.json's names; names missing, or not as many as the model's classes, give a warning naming
both and the labels are class numbers. The image is resized as the config's test resize does,
run through the graph, and the outputs are mapped back to the original size:

- SOLO family: each detection above ``--threshold`` is painted with its own colour
  (alpha 0.5), with its box and ``class score``; the detections are printed.
- BiSeNet: the per-pixel classes are drawn as a colour map blended with the image.

Importable too: ``predict(session, info, bgr_image)`` returns the raw result, ``draw``
the picture.
"""

import argparse
import json
import os
import sys

import cv2
import numpy as np
import onnxruntime as ort


def get_parser():
    p = argparse.ArgumentParser(description="Run an exported solo_d2 ONNX model with onnxruntime")
    p.add_argument("model", help="model.onnx written by tools/export_model.py")
    p.add_argument("image", help="input image")
    p.add_argument(
        "-o", "--output", default="prediction.png", help="output PNG (default: prediction.png)"
    )
    p.add_argument("--threshold", type=float, default=0.3, help="SOLO: minimum score drawn")
    p.add_argument("--info", help="model.json (default: next to the model)")
    p.add_argument(
        "--input-format", choices=["BGR", "RGB"], help="override model.json's input_format"
    )
    p.add_argument(
        "--min-size", type=int, help="override model.json's min_size_test (0: no resize)"
    )
    p.add_argument("--max-size", type=int, help="override model.json's max_size_test")
    p.add_argument(
        "--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)"
    )
    p.add_argument(
        "--class-names",
        metavar="NAMES",
        help="class names, 'a,b,c' or a file with one name per line (default: "
        "model.json's class_names)",
    )
    return p


def read_class_names(spec):
    """``'a,b,c'`` or a file (one name a line, or a json list) -> list of names."""
    if os.path.isfile(spec):
        with open(spec) as f:
            if spec.endswith(".json"):
                return [str(n) for n in json.load(f)]
            return [line.strip() for line in f if line.strip()]
    return [n.strip() for n in spec.split(",") if n.strip()]


def checked_class_names(info, override=None):
    """The class names to label with, or None (a warning on stderr says why): ``override`` or
    model.json's ``class_names``, used only when as many as the model's ``num_classes``."""
    names, source = (
        (override, "--class-names")
        if override is not None
        else (info.get("class_names"), "model.json")
    )
    count = info.get("num_classes")
    if not names:
        sys.stderr.write(
            "warning: {} has no class names for the model's {} classes: labels are class numbers; "
            "pass --class-names name1,name2,...\n".format(
                source, count if count is not None else "?"
            )
        )
        return None
    if count is not None and len(names) != count:
        sys.stderr.write(
            "warning: {} gives {} class names ({}) but the "
            "model has {} classes (model.json num_classes): "
            "labels are class numbers\n".format(source, len(names), ", ".join(names[:10]), count)
        )
        return None
    return list(names)


def load_info(args):
    path = args.info or os.path.join(os.path.dirname(os.path.abspath(args.model)), "model.json")
    info = {}
    if os.path.isfile(path):
        with open(path) as f:
            info = json.load(f)
    for key, value in (
        ("input_format", args.input_format),
        ("min_size_test", args.min_size),
        ("max_size_test", args.max_size),
    ):
        if value is not None:
            info[key] = value
    info.setdefault("input_format", "BGR")
    info.setdefault("min_size_test", 0)
    info.setdefault("max_size_test", 1 << 30)
    return info


def resized_shape(h, w, short, longest):
    """(h, w) after a shortest-edge resize to ``short`` capped at ``longest``
    (detectron2's rule)."""
    if not short:
        return h, w
    scale = short / min(h, w)
    if max(h, w) * scale > longest:
        scale = longest / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def make_session(path, threads=0):
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


def predict(session, info, bgr):
    """Run the graph on a BGR uint8 image [H, W, 3]; results at the image's own size.

    SOLO: ``{"masks": [n, H, W] bool, "scores": [n], "classes": [n], "boxes": [n, 4]}`` (the
    ``num_detections`` valid rows only). BiSeNet: ``{"labels": [H, W] int64}``."""
    h, w = bgr.shape[:2]
    img = bgr[:, :, ::-1] if info["input_format"] == "RGB" else bgr
    nh, nw = resized_shape(h, w, info["min_size_test"], info["max_size_test"])
    if (nh, nw) != (h, w):
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    x = np.ascontiguousarray(img.transpose(2, 0, 1)).astype(np.float32)
    name = session.get_inputs()[0].name
    outs = {
        o.name: v
        for o, v in zip(
            session.get_outputs(), session.run(None, {name: x if name == "image" else x[None]})
        )
    }
    if "num_detections" in outs:
        n = int(outs["num_detections"])
        masks = outs["masks"][:n]
        if (nh, nw) != (h, w):
            masks = (
                np.stack(
                    [
                        cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
                        for m in masks
                    ]
                )
                if n
                else np.zeros((0, h, w), np.uint8)
            )
        boxes = outs["boxes"][:n] * np.array([w / nw, h / nh, w / nw, h / nh], np.float32)
        return {
            "masks": masks.astype(bool),
            "scores": outs["scores"][:n],
            "classes": outs["classes"][:n],
            "boxes": boxes,
        }
    labels = outs["labels"][0] if "labels" in outs else outs["logits"][0].argmax(0)
    if (nh, nw) != (h, w):
        labels = cv2.resize(labels.astype(np.int32), (w, h), interpolation=cv2.INTER_NEAREST)
    return {"labels": labels.astype(np.int64)}


def palette(n, colors=None):
    if colors and len(colors) >= n:
        return np.array(colors[:n], np.uint8)[:, ::-1]  # RGB -> BGR
    rng = np.random.RandomState(3)
    return rng.randint(40, 256, (max(n, 1), 3)).astype(np.uint8)


def class_label(names, c):
    c = int(c)
    return names[c] if names and 0 <= c < len(names) else str(c)


def draw(bgr, result, info, threshold=0.3):
    """The result painted over the BGR image (a new BGR uint8 array)."""
    out = bgr.copy()
    names = info.get("class_names")
    if "labels" in result:
        labels = result["labels"]
        colors = palette(int(labels.max()) + 1 if labels.size else 1, info.get("class_colors"))
        return cv2.addWeighted(out, 0.4, colors[labels.clip(0, len(colors) - 1)], 0.6, 0)
    colors = palette(max(len(result["scores"]), 1))
    for i, (m, s, c, b) in enumerate(
        zip(result["masks"], result["scores"], result["classes"], result["boxes"])
    ):
        if s < threshold:
            continue
        color = colors[i].astype(np.float32)
        out[m] = (0.5 * out[m] + 0.5 * color).astype(np.uint8)
        x0, y0, x1, y1 = [int(round(v)) for v in b]
        cv2.rectangle(
            out, (x0, y0), (max(x1 - 1, x0), max(y1 - 1, y0)), tuple(int(v) for v in color), 1
        )
        label = f"{class_label(names, c)} {s:.2f}"
        cv2.putText(
            out,
            label,
            (x0, max(y0 - 3, 10)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4,
            tuple(int(v) for v in color),
            1,
        )
    return out


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    bgr = cv2.imread(args.image, cv2.IMREAD_COLOR)
    if bgr is None:
        sys.stderr.write(f"error: cannot read image {args.image}\n")
        return 2
    info = load_info(args)
    info["class_names"] = checked_class_names(
        info, read_class_names(args.class_names) if args.class_names else None
    )
    names = info["class_names"]
    result = predict(make_session(args.model, args.threads), info, bgr)
    if "scores" in result:
        kept = int((result["scores"] >= args.threshold).sum())
        print(f"{len(result['scores'])} detections, {kept} with score >= {args.threshold}")
        for s, c, b in zip(result["scores"], result["classes"], result["boxes"]):
            if s >= args.threshold:
                print(
                    f"  {class_label(names, c)} (class {int(c)}) score {float(s):.3f} "
                    f"box {[round(float(v), 1) for v in b]}"
                )
    else:
        classes, counts = np.unique(result["labels"], return_counts=True)
        print("pixels per class:", {class_label(names, k): int(v) for k, v in zip(classes, counts)})
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    if not cv2.imwrite(args.output, draw(bgr, result, info, args.threshold)):
        sys.stderr.write(f"error: cannot write {args.output}\n")
        return 1
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
