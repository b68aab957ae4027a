#!/usr/bin/env python
"""CPU latency of eager vs TorchScript vs onnxruntime for exported solo_d2 models.

For each model: build it from its config (initial weights unless ``--weights``), time the
eager model (``model([{"image": ...}])``: the whole inference, post-processing included),
the traced TorchScript module and the ONNX graph in onnxruntime (CPU provider) on the same
image: ``--warmup`` + ``--repeats`` runs each, interleaved (eager, TorchScript, onnxruntime,
eager, ...), single image, ``--threads`` threads for torch and onnxruntime. Prints a
Markdown table (median and mean ms).

    OMP_NUM_THREADS=1 python tools/benchmark_export.py --threads 1 --warmup 3 --repeats 7

Defaults: SOLOv2-light R18 (configs/SOLOv2/Light448_R18_3x.yaml, 448x608 input) and
BiSeNetV1 R18 (configs/BiSeNet/V1_R18_cityscapes.yaml, 512x1024). With initial weights
and the default thresholds the SOLO model has (almost) no candidates, so its numbers are
the network plus a near-empty post-processing.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import solo_d2  # noqa: E402,F401
from solo_d2.export import export, export_wrapper  # noqa: E402
from solo_d2.model_zoo import get_config  # noqa: E402

MODELS = {
    "SOLOv2-light R18": ("SOLOv2/Light448_R18_3x.yaml", (448, 608)),
    "BiSeNetV1 R18": ("BiSeNet/V1_R18_cityscapes.yaml", (512, 1024)),
}


def timed(fns, warmup, repeats):
    """(median, mean) ms of each function; the functions are interleaved run by run, so a
    change of machine load hits all of them alike."""
    times = [[] for _ in fns]
    for i in range(warmup + repeats):
        for fn, ts in zip(fns, times):
            t = time.perf_counter()
            fn()
            if i >= warmup:
                ts.append(1000 * (time.perf_counter() - t))
    return [(statistics.median(t), statistics.mean(t)) for t in times]


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--models", default=",".join(MODELS), help="comma-separated names of " + ", ".join(MODELS)
    )
    p.add_argument(
        "--weights", default="", help="MODEL.WEIGHTS for every model (default: initial weights)"
    )
    args = p.parse_args()
    import onnxruntime as ort

    torch.set_num_threads(args.threads)
    print(
        f"CPU, {args.threads} thread(s), torch {torch.__version__}, onnxruntime {ort.__version__}, "
        f"warmup {args.warmup}, repeats {args.repeats}"
    )
    print("| model | input | eager ms (median / mean) | TorchScript ms | onnxruntime ms |")
    print("|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(0)
    for name in args.models.split(","):
        config, (h, w) = MODELS[name]
        cfg = get_config(config)
        cfg.MODEL.DEVICE = "cpu"
        cfg.MODEL.WEIGHTS = args.weights
        from detectron2.checkpoint import DetectionCheckpointer
        from detectron2.modeling import build_model

        torch.manual_seed(0)
        model = build_model(cfg).eval()
        if args.weights:
            DetectionCheckpointer(model).load(args.weights)
        wrapper = export_wrapper(model)
        is_solo = hasattr(wrapper, "max_per_img")
        image = (torch.rand(3, h, w, generator=gen) * 255).round()
        x = image if is_solo else image[None]
        with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
            ts = export(wrapper, x, os.path.join(tmp, "m.ts"), "torchscript")
            onnx_path = export(wrapper, x, os.path.join(tmp, "m.onnx"), "onnx")
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = args.threads
            opts.inter_op_num_threads = 1
            sess = ort.InferenceSession(
                onnx_path, sess_options=opts, providers=["CPUExecutionProvider"]
            )
            feed = {sess.get_inputs()[0].name: x.numpy().astype(np.float32)}
            results = timed(
                [lambda: model([{"image": image}]), lambda: ts(x), lambda: sess.run(None, feed)],
                args.warmup,
                args.repeats,
            )
        cells = " | ".join(f"{m:.0f} / {a:.0f}" for m, a in results)
        print(f"| {name} | {h}x{w} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
