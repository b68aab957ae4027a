#!/usr/bin/env python
"""Inference time of BiSeNet V1 (R18) and V2 at 512x1024 and 1024x2048.

Eval mode, torch.no_grad, single image, single scale (the backbone + head forward on a
normalized [1, 3, H, W] tensor, plus the upsampling of the logits to full size).
Prints a table with the median and mean over ``--repeats`` runs after ``--warmup`` runs.

    python tools/benchmark_bisenet.py --device cpu --repeats 3
"""

import argparse
import statistics
import time

import torch
from detectron2.modeling import build_model

from solo_d2.model_zoo import get_config

MODELS = {
    "BiSeNetV1 R18": "BiSeNet/V1_R18_cityscapes.yaml",
    "BiSeNetV2": "BiSeNet/V2_cityscapes.yaml",
}


def time_model(model, size, device, warmup, repeats):
    image = torch.randn(1, 3, *size, device=device)
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            model._predict(image)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t)
    return times


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch.set_num_threads (0 = torch default)"
    )
    parser.add_argument("--sizes", default="512x1024,1024x2048")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    print(
        f"device={args.device} threads={torch.get_num_threads()} "
        f"warmup={args.warmup} repeats={args.repeats}"
    )
    print(f"{'model':<16}{'input':>12}{'median ms':>12}{'mean ms':>10}{'FPS':>8}")
    for name, config in MODELS.items():
        cfg = get_config(config)
        cfg.MODEL.DEVICE = args.device
        cfg.MODEL.WEIGHTS = ""
        model = build_model(cfg).eval()
        for size in sizes:
            times = time_model(model, size, args.device, args.warmup, args.repeats)
            med = statistics.median(times) * 1000
            print(
                f"{name:<16}{f'{size[0]}x{size[1]}':>12}{med:>12.1f}"
                f"{statistics.mean(times) * 1000:>10.1f}{1000 / med:>8.2f}"
            )


if __name__ == "__main__":
    main()
