#!/usr/bin/env python
"""solo_d2 benchmarks; every comparison is a ratio measured in one run (machines are noisy).

1. Target assignment: vectorized ``solo_targets`` vs the per-instance, per-cell Python loop
   of the public SOLO implementations (re-written here as the baseline).
2. NMS on mask candidates: Matrix NMS vs vectorized hard mask NMS vs a sequential
   (per-mask Python loop) hard mask NMS.
3. Post-processing memory/time: full-resolution masks for the kept detections only
   (``solo_postprocess``) vs pasting every candidate at full resolution first.
4. Model speed: inference ms/image and training it/s of the quick configs; BiSeNet V1 R18
   and V2 inference at 512x1024 and 1024x2048.

    python tools/benchmark.py [--quick] [--write docs/BENCHMARKS.md]
"""
import argparse
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import solo_d2  # noqa: E402,F401
from solo_d2.modeling.solo.matrix_nms import mask_iou_matrix, mask_nms, matrix_nms  # noqa: E402
from solo_d2.modeling.solo.postprocess import solo_postprocess  # noqa: E402
from solo_d2.modeling.solo.targets import solo_targets  # noqa: E402

GRIDS = [40, 36, 24, 16, 12]
RANGES = [(1, 96), (48, 192), (96, 384), (192, 768), (384, 2048)]


def timeit(fn, repeats=3, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def random_instances(batch, n, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks, classes = [], []
    yy, xx = torch.arange(h)[:, None], torch.arange(w)[None, :]
    for _ in range(batch):
        cy = torch.randint(0, h, (n, 1, 1), generator=g)
        cx = torch.randint(0, w, (n, 1, 1), generator=g)
        r = torch.randint(4, min(h, w) // 3, (n, 1, 1), generator=g)
        masks.append(((yy - cy) ** 2 + (xx - cx) ** 2) < r**2)
        classes.append(torch.randint(0, 80, (n,), generator=g))
    return masks, classes


def loop_targets(gt_masks, gt_classes, mask_sizes, sigma=0.2, num_classes=80):
    """Baseline: the public implementations' loops (per image, level, instance and cell)."""
    out = []
    for masks, classes in zip(gt_masks, gt_classes):
        h, w = masks.shape[-2:]
        for s, (lo, hi), size in zip(GRIDS, RANGES, mask_sizes):
            labels = torch.full((s, s), num_classes, dtype=torch.long)
            targets = torch.zeros((s * s, *size), dtype=torch.uint8)
            for m, c in zip(masks, classes):
                ys, xs = m.nonzero(as_tuple=True)
                if len(ys) == 0:
                    continue
                bh, bw = float(ys.max() - ys.min() + 1), float(xs.max() - xs.min() + 1)
                scale = (bh * bw) ** 0.5
                if not lo <= scale <= hi:
                    continue
                cy, cx = ys.float().mean().item(), xs.float().mean().item()
                ci, cj = int(cy / h * s), int(cx / w * s)
                top = max(0, int((cy - sigma * bh / 2) / h * s), ci - 1)
                down = min(s - 1, int((cy + sigma * bh / 2) / h * s), ci + 1)
                left = max(0, int((cx - sigma * bw / 2) / w * s), cj - 1)
                right = min(s - 1, int((cx + sigma * bw / 2) / w * s), cj + 1)
                small = F.interpolate(m[None, None].float(), size=size, mode="bilinear")[0, 0] >= 0.5
                for i in range(top, down + 1):
                    for j in range(left, right + 1):
                        labels[i, j] = c
                        targets[i * s + j] = small
            out.append((labels, targets))
    return out


def bench_targets(quick):
    h, w, n = (400, 608, 10) if quick else (800, 1216, 20)
    masks, classes = random_instances(2, n, h, w)
    sizes = [(h // 4, w // 4)] * 5
    kw = dict(num_grids=GRIDS, scale_ranges=RANGES, mask_sizes=sizes, sigma=0.2, num_classes=80)
    t_vec = timeit(lambda: solo_targets(masks, classes, **kw))
    t_loop = timeit(lambda: loop_targets(masks, classes, sizes), repeats=1, warmup=0)
    return [("target assignment, 2 images x %d instances, %dx%d" % (n, h, w),
             f"{t_vec * 1e3:.0f} ms", f"{t_loop * 1e3:.0f} ms (per-cell loops)", f"{t_loop / t_vec:.1f}x")]


def sequential_mask_nms(masks, labels, scores, thr=0.5):
    """Baseline hard NMS: one Python iteration per mask (as in the public SOLO code)."""
    flat = masks.flatten(1).float()
    area = flat.sum(1)
    keep = []
    suppressed = torch.zeros(len(scores), dtype=torch.bool)
    for i in range(len(scores)):
        if suppressed[i]:
            continue
        keep.append(i)
        inter = flat[i + 1:] @ flat[i]
        iou = inter / (area[i] + area[i + 1:] - inter).clamp(min=1)
        suppressed[i + 1:] |= (iou > thr) & (labels[i + 1:] == labels[i])
    return keep


def bench_nms(quick):
    n, h, w = (200, 100, 152) if quick else (500, 200, 304)
    g = torch.Generator().manual_seed(0)
    masks, _ = random_instances(1, n, h, w, seed=1)
    masks = masks[0]
    labels = torch.randint(0, 5, (n,), generator=g)
    scores = torch.rand(n, generator=g).sort(descending=True).values
    t_matrix = timeit(lambda: matrix_nms(masks, labels, scores))
    t_hard = timeit(lambda: mask_nms(masks, labels, scores))
    t_seq = timeit(lambda: sequential_mask_nms(masks, labels, scores), repeats=1)
    t_iou = timeit(lambda: mask_iou_matrix(masks.flatten(1).float()))
    return [
        (f"Matrix NMS, {n} masks {h}x{w}", f"{t_matrix * 1e3:.1f} ms", f"{t_seq * 1e3:.1f} ms (sequential hard NMS)",
         f"{t_seq / t_matrix:.1f}x"),
        (f"vectorized hard mask NMS, {n} masks", f"{t_hard * 1e3:.1f} ms", f"{t_seq * 1e3:.1f} ms (sequential)",
         f"{t_seq / t_hard:.1f}x"),
        ("of which the IoU matrix", f"{t_iou * 1e3:.1f} ms", "", ""),
    ]


def bench_paste(quick):
    k, (H, W) = (200, (400, 608)) if quick else (500, (800, 1216))
    h, w = H // 4, W // 4
    g = torch.Generator().manual_seed(0)
    masks, _ = random_instances(1, k, h, w, seed=2)
    soft = masks[0].float() * 0.9 + torch.rand(k, h, w, generator=g) * 0.1
    labels = torch.randint(0, 80, (k,), generator=g)
    scores = torch.rand(k, generator=g) * 0.9 + 0.1
    strides = torch.full((k,), 8.0)
    kw = dict(image_size=(H, W), output_size=(H, W))
    t_ours = timeit(lambda: solo_postprocess(soft, labels, scores, strides, **kw))

    def paste_all():
        full = F.interpolate(soft[:, None], size=(H, W), mode="bilinear")[:, 0]
        return full > 0.5

    t_all = timeit(paste_all, repeats=1)
    kept = len(solo_postprocess(soft, labels, scores, strides, **kw))
    mem_all = k * H * W * 4 / 2**20
    mem_ours = kept * H * W / 2**20 + 32 * H * W * 4 / 2**20
    return [
        (f"post-processing of {k} candidates at {H}x{W}", f"{t_ours * 1e3:.0f} ms, {kept} kept",
         f"{t_all * 1e3:.0f} ms (only the upsampling of all candidates)", f"{t_all / t_ours:.1f}x"),
        ("peak full-resolution mask memory", f"{mem_ours:.0f} MiB (kept bool + 32-mask chunk)",
         f"{mem_all:.0f} MiB (all candidates, float)", f"{mem_all / mem_ours:.1f}x"),
    ]


def bench_models(quick):
    from detectron2.modeling import build_model

    from solo_d2.engine import setup_cfg
    from solo_d2.model_zoo import get_config_file

    rows = []
    configs = ["SOLOv2_R18", "SOLOv2Light_R18", "SOLO_R18", "DecoupledSOLO_R18", "DecoupledSOLOLight_R18"]
    if quick:
        configs = configs[:2]
    for name in configs:
        cfg = setup_cfg(get_config_file(f"Synthetic/{name}.yaml"), ["MODEL.DEVICE", "cpu"])
        model = build_model(cfg)
        img = torch.randint(0, 255, (3, 256, 320), dtype=torch.uint8)
        model.eval()
        with torch.no_grad():
            t_inf = timeit(lambda: model([{"image": img}]), repeats=3)
        model.train()
        from detectron2.structures import BitMasks, Instances

        inst = Instances((256, 320))
        masks, classes = random_instances(1, 4, 256, 320, seed=3)
        inst.gt_masks = BitMasks(masks[0])
        inst.gt_classes = classes[0] % 3
        batch = [{"image": img, "instances": inst}] * 4
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)

        def step():
            opt.zero_grad()
            sum(model(batch).values()).backward()
            opt.step()

        t_train = timeit(step, repeats=2)
        rows.append((f"Synthetic/{name}.yaml", f"{t_inf * 1e3:.0f} ms/image (256x320)",
                     f"{1 / t_train:.2f} it/s (batch 4)", ""))
    from solo_d2.model_zoo import get_config

    for name, config in (("BiSeNetV1 R18", "BiSeNet/V1_R18_cityscapes.yaml"), ("BiSeNetV2", "BiSeNet/V2_cityscapes.yaml")):
        cfg = get_config(config)
        cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS = "cpu", ""
        model = build_model(cfg).eval()
        for size in ((512, 1024),) if quick else ((512, 1024), (1024, 2048)):
            x = torch.randn(1, 3, *size)
            with torch.no_grad():
                t = timeit(lambda: model._predict(x), repeats=2)
            rows.append((f"{name} inference {size[0]}x{size[1]}", f"{t * 1e3:.0f} ms", f"{1 / t:.2f} FPS", ""))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    ap.add_argument("--write", help="write the markdown table to this file")
    ap.add_argument("--only", choices=["targets", "nms", "paste", "models"])
    args = ap.parse_args()
    header = (f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, CUDA {'yes' if torch.cuda.is_available() else 'no'}")
    print(header)
    rows = []
    for name, fn in (("targets", bench_targets), ("nms", bench_nms), ("paste", bench_paste), ("models", bench_models)):
        if args.only and args.only != name:
            continue
        for row in fn(args.quick):
            print(" | ".join(row), flush=True)
            rows.append(row)
    if args.write:
        with open(args.write, "w") as f:
            f.write("# Benchmarks\n\nGenerated by `python tools/benchmark.py --write docs/BENCHMARKS.md`"
                    f"{' --quick' if args.quick else ''}.\n\n{header}\n\n")
            f.write("| what | solo_d2 | baseline | speed-up |\n|---|---|---|---|\n")
            for row in rows:
                f.write("| " + " | ".join(row) + " |\n")


if __name__ == "__main__":
    main()
