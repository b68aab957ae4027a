"""solo_d2 benchmarks, every comparison a ratio of medians measured in the same run.

Baselines are the public implementations' algorithms re-implemented in
:mod:`solo_d2.benchmark.baselines` (a test, ``tests/test_benchmark_baselines.py``, checks that
each computes what solo_d2 computes); the report (goals, tables, notes) is written by
:mod:`solo_d2.benchmark.report`; the CUDA sections are in :mod:`solo_d2.benchmark.cuda`. Sections:

1. SOLOv2 post-processing (R50 shapes, 800x1216, 300 and 1500 candidates above the score
   threshold) against AdelaiDet's ``inference_single_image`` (masks of every candidate by one
   1x1 conv over all candidate kernels, area filter, maskness, sort, top ``nms_pre``, Matrix NMS,
   top ``max_per_img``, upsampling of the kept masks), and against the R50-FPN backbone time.
2. Matrix NMS of 500 masks: IoUs per class block against one IoU matmul.
3. Mask pasting: time at 800x1216 and peak memory (the resident-set high-water mark, reset
   before each call) for a 4000x6000 image with 100 detections, against solo_d2's previous
   paste (chunks of 32 float masks).
4. Target assignment: ``solo_targets`` against AdelaiDet's per-image, per-instance,
   per-cell loops on 2 images x 20 instances at 800x1216 (1 and 2 threads), also with the
   dice loss forward and backward; time per instance from 1 to 500.
5. BiSeNet V1 R18 / V2 inference with in-place ReLUs against the same modules with
   out-of-place ReLUs (512x1024 and 1024x2048).
6. Training step time and peak memory of every recipe config at batch 2 (subprocesses).

    python tools/benchmark.py [--quick] [--only SECTION ...] [--write docs/BENCHMARKS.md]
"""
import argparse
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

from solo_d2.benchmark.baselines import (
    GRIDS, RANGES, adelaidet_postprocess, adelaidet_targets, adelaidet_targets_and_dice, boxes_of,
    build_solov2_model, old_paste, one_matmul_nms, paste_inputs, random_instances, solo_d2_postprocess,
    synthetic_solov2_outputs, targets_and_dice, training_batch,
)
from solo_d2.benchmark.report import goals, merge, render
from solo_d2.model_zoo import configs_root
from solo_d2.modeling.solo.mask_geometry import _row_sums
from solo_d2.modeling.solo.matrix_nms import matrix_nms
from solo_d2.modeling.solo.postprocess import _paste, masks_to_boxes, point_nms
from solo_d2.modeling.solo.targets import solo_targets


def timeit(fn, repeats=3, warmup=1):
    """Median wall time of ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def ms(t):
    return f"{t * 1e3:.0f} ms" if t >= 0.01 else f"{t * 1e3:.1f} ms"


# ----------------------------------------------------------------------------- post-processing
def bench_postprocess(quick):
    size = (256, 384) if quick else (800, 1216)
    model = build_solov2_model(quick)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        t_backbone = timeit(lambda: model.backbone(x), repeats=1 if quick else 3)
    rows = [(f"SOLOv2 {'R18 (quick)' if quick else 'R50'}-FPN backbone+FPN, {size[0]}x{size[1]}", ms(t_backbone), "", "")]
    results = {"backbone_s": t_backbone}
    for target in ((60, 200) if quick else (300, 1500)):
        cate, mask_out, padded = synthetic_solov2_outputs(target, size=size, num_objects=20 if quick else 60)
        n_cand = int(sum((point_nms(c.sigmoid()) > 0.1).sum() for c in cate))
        with torch.no_grad():
            ours = solo_d2_postprocess(model, cate, mask_out, padded)
            ref = adelaidet_postprocess(cate, mask_out, padded, padded, model.test_cfg)
            same = (ours.pred_masks.shape == ref[0].shape and torch.equal(ours.pred_masks, ref[0])
                    and torch.allclose(ours.scores, ref[1], atol=1e-6, rtol=0)
                    and torch.equal(ours.pred_classes, ref[2]))
            times = {"ours": [], "ref": []}
            solo_d2_postprocess(model, cate, mask_out, padded)  # warm-up
            adelaidet_postprocess(cate, mask_out, padded, padded, model.test_cfg)
            for _ in range(3 if quick else 5):  # interleaved, so load changes hit both
                times["ours"].append(timeit(lambda: solo_d2_postprocess(model, cate, mask_out, padded), 1, 0))
                times["ref"].append(timeit(lambda: adelaidet_postprocess(cate, mask_out, padded, padded, model.test_cfg), 1, 0))
            t_ours, t_ref = statistics.median(times["ours"]), statistics.median(times["ref"])
        results[f"post_{target}"] = (t_ours, t_ref)
        rows.append((f"post-processing, {n_cand} candidates, {len(ours)} kept ({'same' if same else 'DIFFERENT'} output)",
                     ms(t_ours), f"{ms(t_ref)} (AdelaiDet algorithm)",
                     f"{t_ref / t_ours:.2f}x; {t_ours / t_backbone:.0%} of backbone+FPN"))
    return rows, results


def bench_nms(quick):
    n, h, w = (200, 100, 152) if quick else (500, 200, 304)
    g = torch.Generator().manual_seed(0)
    masks, _ = random_instances(1, n, h, w, seed=1)
    masks = masks[0]
    labels = torch.randint(0, 80, (n,), generator=g)
    scores = torch.rand(n, generator=g).sort(descending=True).values

    same = torch.equal(matrix_nms(masks, labels, scores), one_matmul_nms(masks, labels, scores))
    t_ours = timeit(lambda: matrix_nms(masks, labels, scores))
    t_ref = timeit(lambda: one_matmul_nms(masks, labels, scores))
    return [(f"Matrix NMS, {n} masks {h}x{w}, 80 classes ({'same' if same else 'DIFFERENT'} scores)",
             ms(t_ours), f"{ms(t_ref)} (one {n}x{n} IoU matmul)", f"{t_ref / t_ours:.1f}x")], {}


# ----------------------------------------------------------------------------- paste
def _status_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def peak_memory(fn):
    """``(result, peak bytes above the memory in use before the call)``: Linux's resident-set
    high-water mark (``VmHWM``), reset through ``/proc/self/clear_refs`` just before ``fn``."""
    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    out = fn()
    return out, (_status_kib("VmHWM") - before) * 1024


def paste_peak(k, image_size, output_size, which):
    soft = paste_inputs(k, image_size)
    if which == "old":
        out, peak = peak_memory(lambda: old_paste(soft, image_size, output_size))
    else:
        out, peak = peak_memory(lambda: _paste(soft, image_size, output_size, 0.5, 32)[0])
    kept = out.numel()
    del out
    return {"delta_bytes": peak, "kept_bytes": kept}


def bench_paste(quick):
    rows = []
    k, size = (30, (200, 304)) if quick else (100, (800, 1216))
    soft = paste_inputs(k, size)
    new_masks, new_boxes = _paste(soft, size, size, 0.5, 32)
    old_masks = old_paste(soft, size, size)
    same = torch.equal(new_masks, old_masks) and torch.equal(new_boxes, masks_to_boxes(old_masks))
    t_new = timeit(lambda: _paste(soft, size, size, 0.5, 32))
    t_old = timeit(lambda: masks_to_boxes(old_paste(soft, size, size)))
    rows.append((f"paste {k} masks at {size[0]}x{size[1]} (output = input size; {'same' if same else 'DIFFERENT'} masks)",
                 ms(t_new), f"{ms(t_old)} (whole masks, chunks of 32; boxes from the full masks)", f"{t_old / t_new:.1f}x"))
    k, image, out = (20, (200, 300), (1000, 1500)) if quick else (100, (800, 1200), (4000, 6000))
    new = paste_peak(k, image, out, "new")
    old = paste_peak(k, image, out, "old")
    kept = new["kept_bytes"]
    rows.append((f"paste peak memory, {k} masks, input {image[0]}x{image[1]} -> output {out[0]}x{out[1]}",
                 f"{new['delta_bytes'] / 2**20:.0f} MiB = {new['delta_bytes'] / kept:.2f}x the kept bool masks",
                 f"{old['delta_bytes'] / 2**20:.0f} MiB = {old['delta_bytes'] / kept:.2f}x (chunks of 32)",
                 f"{old['delta_bytes'] / max(new['delta_bytes'], 1):.1f}x less"))
    return rows, {"paste_peak_ratio": new["delta_bytes"] / kept}


# ----------------------------------------------------------------------------- targets
def bench_targets(quick):
    h, w, n = (400, 608, 10) if quick else (800, 1216, 20)
    masks, classes = random_instances(2, n, h, w)
    boxes = boxes_of(masks)
    sizes = [(h // 4, w // 4)] * 5
    kw = dict(num_grids=GRIDS, scale_ranges=RANGES, mask_sizes=sizes, sigma=0.2, num_classes=80, gt_boxes=boxes)
    out = solo_targets(masks, classes, **kw)
    m_total = sum(t.num_targets for t in out)
    rows, results = [], {}
    threads = torch.get_num_threads()
    for nt in (1, 2):  # the issue measured with 2 threads
        torch.set_num_threads(nt)
        times = {"vec": [], "loop": [], "pass": []}
        for _ in range(1 if quick else 5):  # interleaved rounds, so load changes hit all three
            times["vec"].append(timeit(lambda: solo_targets(masks, classes, **kw), repeats=5))
            times["loop"].append(timeit(lambda: adelaidet_targets(masks, classes, boxes, sizes), repeats=1, warmup=0))
            # the floor: one integer pass over all masks (the row counts)
            times["pass"].append(timeit(lambda: [_row_sums(m) for m in masks], repeats=5))
        t_vec, t_loop, t_pass = (statistics.median(times[k]) for k in ("vec", "loop", "pass"))
        # the ratio of each round (both measured within seconds of each other), median and range
        ratios = sorted(lo / v for lo, v in zip(times["loop"], times["vec"]))
        spread = f" (rounds {ratios[0]:.1f}-{ratios[-1]:.1f}x)" if len(ratios) > 1 else ""
        rows.append((f"target assignment, 2 images x {n} instances, {h}x{w} ({m_total} mask targets), "
                     f"{nt} thread{'s' if nt > 1 else ''}", ms(t_vec), f"{ms(t_loop)} (AdelaiDet loops)",
                     f"{statistics.median(ratios):.1f}x{spread}"))
        rows.append((f"of which one pass over all masks (row counts), {nt} thread{'s' if nt > 1 else ''}",
                     ms(t_pass), "", ""))
        results.update({f"targets_speedup_{nt}": statistics.median(ratios), f"targets_pass_s_{nt}": t_pass,
                        f"targets_vec_s_{nt}": t_vec, f"targets_loop_s_{nt}": t_loop,
                        f"targets_rounds_{nt}": ratios})
    torch.set_num_threads(threads)
    # targets + mask loss, forward and backward: the compact targets must not move the cost into the loss
    logits = torch.randn(m_total, *sizes[0], generator=torch.Generator().manual_seed(0)).requires_grad_()
    times = {"vec": [], "loop": []}
    for _ in range(1 if quick else 3):
        times["vec"].append(timeit(lambda: targets_and_dice(masks, classes, kw, logits), repeats=3))
        times["loop"].append(timeit(lambda: adelaidet_targets_and_dice(masks, classes, boxes, sizes, logits), repeats=1))
    t_vec, t_loop = (statistics.median(times[k]) for k in ("vec", "loop"))
    rows.append((f"targets + dice loss forward and backward ({m_total} mask targets, 1 thread)",
                 ms(t_vec), f"{ms(t_loop)} (AdelaiDet loops + dice on float targets)", f"{t_loop / t_vec:.1f}x"))
    results["targets_loss_speedup"] = t_loop / t_vec
    counts = (1, 10, 50) if quick else (1, 10, 50, 100, 250, 500)
    times = []
    for c in counts:
        m, cl = random_instances(2, c, h, w, seed=c)
        b = boxes_of(m)
        times.append(timeit(lambda: solo_targets(m, cl, **dict(kw, gt_boxes=b)), repeats=3))
    slope = (times[-1] - times[0]) / (counts[-1] - counts[0]) / 2  # per instance per image
    rows.append((f"target assignment vs instances per image ({h}x{w}, batch 2, 1 thread)",
                 ", ".join(f"{c}: {ms(t)}" for c, t in zip(counts, times)),
                 f"slope {slope * 1e3:.2f} ms per instance per image",
                 f"{times[-1] / times[0]:.0f}x from {counts[0]} to {counts[-1]}"))
    results["slope_s"] = slope
    return rows, results


# ----------------------------------------------------------------------------- BiSeNet
def set_inplace(model, flag):
    for m in model.modules():
        if isinstance(m, torch.nn.ReLU):
            m.inplace = flag


def bench_bisenet(quick):
    from detectron2.modeling import build_model

    from solo_d2.model_zoo import get_config

    rows, results = [], {}
    for name, config in (("BiSeNetV1 R18", "BiSeNet/V1_R18_cityscapes.yaml"), ("BiSeNetV2", "BiSeNet/V2_cityscapes.yaml")):
        cfg = get_config(config)
        cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS = "cpu", ""
        model = build_model(cfg).eval()
        for size in ((256, 512),) if quick else ((512, 1024), (1024, 2048)):
            x = torch.randn(1, 3, *size)
            with torch.no_grad():
                set_inplace(model, False)
                ref = model._predict(x)
                set_inplace(model, True)
                same = torch.equal(model._predict(x), ref)
                times = {True: [], False: []}
                for _ in range(1 if quick else 3):  # interleaved, so load changes hit both
                    for flag in (False, True):
                        set_inplace(model, flag)
                        times[flag].append(timeit(lambda: model._predict(x), repeats=1, warmup=0))
            t_in, t_out = statistics.median(times[True]), statistics.median(times[False])
            rows.append((f"{name} inference {size[0]}x{size[1]} ({'same' if same else 'DIFFERENT'} logits)",
                         f"{ms(t_in)} ({1 / t_in:.2f} FPS)", f"{ms(t_out)} (out-of-place ReLU)",
                         f"{t_out / t_in:.2f}x"))
            results[f"{name} {size[0]}x{size[1]}"] = t_out / t_in
    return rows, results


# ----------------------------------------------------------------------------- training
def _train_child(args):
    config, h, w, steps = args
    from detectron2.modeling import build_model

    from solo_d2.checkpoint.core import build_cfg

    torch.manual_seed(0)
    cfg = build_cfg(config)
    model = build_model(cfg).train()
    batch = training_batch(cfg, h, w)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        opt.zero_grad()
        sum(model(batch).values()).backward()
        opt.step()

    step()  # warm-up (allocations of the first step)
    t, peak = peak_memory(lambda: timeit(step, repeats=steps, warmup=0))
    print(json.dumps({"step_s": t, "peak_mib": _status_kib("VmHWM") / 1024, "delta_mib": peak / 2**20}))


def configs_dir():
    """solo_d2's ``configs/`` (of the checkout, or shipped in the installed package)."""
    return str(configs_root())


def recipe_configs():
    """Paths of the recipe configs (not the bases, synthetic or converted-checkpoint configs)."""
    configs = sorted(glob.glob(os.path.join(configs_dir(), "*", "*.yaml")))
    return [c for c in configs if not os.path.basename(c).startswith("Base")
            and os.sep + "Synthetic" + os.sep not in c and os.sep + "Converted" + os.sep not in c]


def bench_training(quick):
    configs = recipe_configs()
    if quick:
        configs = [os.path.join(configs_dir(), "SOLOv2", "Light448_R18_3x.yaml")]
    h, w = (64, 96) if quick else (256, 320)
    rows = []
    for config in configs:
        name = os.path.relpath(config, configs_dir())
        # a fresh process per config; `-m` runs this module, from any directory
        cmd = [sys.executable, "-m", "solo_d2.benchmark.runner", "--train-child", f"{config},{h},{w},{1 if quick else 2}"]
        print(f"  training configs/{name} ...", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_child_env())
        if proc.returncode != 0:
            rows.append((f"train step {name}", "failed", proc.stderr.strip().splitlines()[-1][:120], ""))
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append((f"train step {name}, batch 2, {h}x{w}, CPU fp32", f"{r['step_s']:.2f} s/step",
                     f"peak RSS {r['peak_mib']:.0f} MiB (+{r['delta_mib']:.0f} MiB above the model during a step)", ""))
    return rows, {}


def _child_env():
    """The environment of a training child: this process's, with the directory that holds the
    imported solo_d2 first on ``PYTHONPATH`` (a checkout that is not installed works too)."""
    import solo_d2

    root = os.path.dirname(os.path.dirname(os.path.abspath(solo_d2.__file__)))
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=root + (os.pathsep + path if path else ""))


def bench_cuda_training(quick):
    from solo_d2.benchmark.cuda import bench_cuda_training as run

    return run(quick)


def bench_cuda_inference(quick):
    from solo_d2.benchmark.cuda import bench_cuda_inference as run

    return run(quick)


SECTIONS = {
    "postprocess": bench_postprocess,
    "nms": bench_nms,
    "paste": bench_paste,
    "targets": bench_targets,
    "bisenet": bench_bisenet,
    "training": bench_training,
    "cuda_inference": bench_cuda_inference,  # solo_d2/benchmark/cuda.py; only where CUDA is available
    "cuda_training": bench_cuda_training,
}
CUDA_SECTIONS = ("cuda_inference", "cuda_training")


def main(argv=None):
    """The command line of ``tools/benchmark.py`` (``argv``: the arguments, default ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(prog="tools/benchmark.py", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, a smoke run of every section")
    ap.add_argument("--write", help="write the markdown tables to this file")
    ap.add_argument("--only", nargs="+", choices=sorted(SECTIONS))
    ap.add_argument("--train-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.train_child:
        c, h, w, s = args.train_child.split(",")
        return _train_child((c, int(h), int(w), int(s)))
    import detectron2

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    header = (f"machine: {cpu}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, "
              f"Python {platform.python_version()}, torch {torch.__version__}, detectron2 {detectron2.__version__}, "
              f"CUDA {torch.version.cuda + ' on ' + torch.cuda.get_device_name() + ' (allocator ' + torch.cuda.get_allocator_backend() + ')' if torch.cuda.is_available() else 'no'}")
    print(header, flush=True)
    torch.manual_seed(0)
    rows, results = [], {}
    for name, fn in SECTIONS.items():
        if args.only and name not in args.only:
            continue
        if not args.only and name in CUDA_SECTIONS and not torch.cuda.is_available():
            continue  # a run on a machine without CUDA leaves the CUDA sections out
        t = time.perf_counter()
        section_rows, section_results = fn(args.quick)
        results.update(section_results)
        for row in section_rows:
            print(" | ".join(row), flush=True)
        rows.append((name, section_rows))
        print(f"[{name}: {time.perf_counter() - t:.0f} s]", flush=True)
    for line in goals(results):
        print(line)
    if args.write:
        text = render(header, goals(results), rows, args.quick)
        if args.only and os.path.exists(args.write):  # replace only the sections that ran
            with open(args.write) as f:
                text = merge(f.read(), text, header)
        tmp = args.write + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, args.write)


if __name__ == "__main__":
    main()
