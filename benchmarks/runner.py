"""solo_d2 benchmarks, every comparison a ratio of medians measured in the same run.

AdelaiDet's SOLOv2 baselines are the port's own code, loaded at run time from the checkout that
``ADELAIDET_ROOT`` names (:mod:`benchmarks.adelaidet_port`; without it the AdelaiDet
columns say "not measured"). ``--quick`` runs (CI, no checkout) use the re-implementations in
:mod:`benchmarks.baselines`, which ``tests/benchmarks/test_benchmark_baselines.py`` checks equal to
the port and to solo_d2. The report (goals, tables, notes) is written by
:mod:`benchmarks.report`; the CUDA sections are in :mod:`benchmarks.cuda`. Sections:

1. ``postprocess``: SOLOv2 post-processing (R50 shapes, 800x1216, 300 and 1500 candidates above
   the score threshold) against the port's ``point_nms`` + ``SOLOv2.inference``, and against
   the R50-FPN backbone time.
2. ``nms``: Matrix NMS of 500 masks against the port's ``matrix_nms``.
3. ``paste``: ``paste_masks`` time at 800x1216 and peak memory (the resident-set high-water
   mark, reset before each call) for a 4000x6000 image with 100 detections, against solo_d2's
   previous paste (chunks of 32 float masks).
4. ``targets``: ``solo_targets`` against the port's ``get_ground_truth`` loops on 2 images x 20
   instances at 800x1216 (1 and 2 threads), also with the dice loss forward and backward; time
   per instance from 1 to 500.
5. ``bisenet``: BiSeNet V1 R18 / V2 inference with in-place ReLUs against the same modules with
   out-of-place ReLUs (512x1024 and 1024x2048).
6. ``training``: training step time and peak memory of every recipe config at batch 2
   (subprocesses).
7. ``counts``: kernel ops and host-device syncs (:mod:`benchmarks.counting`) of
   post-processing, whole-model inference and a training step's targets + loss + backward,
   solo_d2 against the port, same weights and inputs, 800x1216.

    python tools/benchmark.py [--quick] [--only SECTION ...] [--write docs/BENCHMARKS.md]
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

from benchmarks import adelaidet_port as port_lib
from benchmarks.baselines import (
    GRIDS,
    RANGES,
    adelaidet_postprocess,
    adelaidet_targets,
    adelaidet_targets_and_dice,
    boxes_of,
    build_solov2_model,
    old_paste,
    one_matmul_nms,
    paste_inputs,
    random_instances,
    solo_d2_postprocess,
    synthetic_solov2_outputs,
    targets_and_dice,
    test_cfg_of,
    training_batch,
)
from benchmarks.common import configs_dir, ms, recipe_configs, timeit  # noqa: F401
from benchmarks.report import goals, merge, render
from solo_d2.modeling.solo.matrix_nms import matrix_nms
from solo_d2.modeling.solo.postprocess import masks_to_boxes, paste_masks, point_nms
from solo_d2.modeling.solo.targets import solo_targets

NOT_MEASURED = f"not measured: set {port_lib.ENV}"


def load_port(quick=False):
    """The AdelaiDet port (:func:`~benchmarks.adelaidet_port.load_adelaidet_solov2`), or
    ``None`` in ``--quick`` runs and where ``ADELAIDET_ROOT`` is unset."""
    if quick:
        return None
    try:
        return port_lib.load_adelaidet_solov2()
    except port_lib.PortNotFound as e:
        print(f"  AdelaiDet port: {e}", flush=True)
        return None


def compare_instances(ours, masks, scores, labels):
    """ "same output" or what differs between solo_d2's ``Instances`` and a reference's masks,
    scores and classes (same criteria as :func:`same_instances`)."""
    if same_instances(ours, masks, scores, labels):
        return "same output"
    if len(ours) != len(labels):
        return f"DIFFERENT: {len(ours)} against {len(labels)} detections"
    parts = []
    if not torch.equal(ours.pred_classes, labels):
        parts.append(f"{int((ours.pred_classes != labels).sum())} classes")
    if ours.pred_masks.shape == masks.shape:
        diff = ours.pred_masks != masks
        if diff.any():
            parts.append(
                f"{int(diff.sum())} mask pixels in {int(diff.flatten(1).any(1).sum())} masks"
            )
    if len(labels):
        parts.append(f"scores within {float((ours.scores - scores).abs().max()):.1e}")
    return "DIFFERENT: " + ", ".join(parts)


def same_instances(ours, masks, scores, labels):
    """solo_d2's ``Instances`` against a reference's masks, scores and classes: masks exactly,
    scores to 1e-6."""
    return (
        ours.pred_masks.shape == masks.shape
        and torch.equal(ours.pred_masks, masks)
        and torch.allclose(ours.scores, scores, atol=1e-6, rtol=0)
        and torch.equal(ours.pred_classes, labels)
    )


# ----------------------------------------------------------------------------- post-processing
def bench_postprocess(quick):
    size = (256, 384) if quick else (800, 1216)
    model = build_solov2_model(quick)
    port = load_port(quick)
    if port is not None:
        port_model = port_lib.build_port_model(port)

        def reference(cate, mask_out, padded):
            r = port_lib.postprocess(port, port_model, cate, mask_out, padded)
            return r.pred_masks, r.scores, r.pred_classes

        ref_name = "AdelaiDet port"
    else:
        cfg = test_cfg_of(model)

        def reference(cate, mask_out, padded):
            return adelaidet_postprocess(cate, mask_out, padded, padded, cfg)

        ref_name = "AdelaiDet algorithm re-implemented, quick mode" if quick else None
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        t_backbone = timeit(lambda: model.backbone(x), repeats=1 if quick else 3)
    rows = [
        (
            f"SOLOv2 {'R18 (quick)' if quick else 'R50'}-FPN backbone+FPN, {size[0]}x{size[1]}",
            ms(t_backbone),
            "",
            "",
        )
    ]
    results = {"backbone_s": t_backbone}
    for target in (60, 200) if quick else (300, 1500):
        cate, mask_out, padded = synthetic_solov2_outputs(
            target, size=size, num_objects=20 if quick else 60
        )
        n_cand = int(sum((point_nms(c.sigmoid()) > 0.1).sum() for c in cate))
        with torch.no_grad():
            ours = solo_d2_postprocess(model, cate, mask_out, padded)
            if ref_name is None:
                t_ours = statistics.median(
                    timeit(lambda: solo_d2_postprocess(model, cate, mask_out, padded), 1, 0)
                    for _ in range(5)
                )
                rows.append(
                    (
                        f"post-processing, {n_cand} candidates, {len(ours)} kept",
                        ms(t_ours),
                        NOT_MEASURED,
                        "",
                    )
                )
                continue
            same = compare_instances(ours, *reference(cate, mask_out, padded))
            times = {"ours": [], "ref": []}
            solo_d2_postprocess(model, cate, mask_out, padded)  # warm-up
            reference(cate, mask_out, padded)
            for _ in range(3 if quick else 5):  # interleaved, so load changes hit both
                times["ours"].append(
                    timeit(lambda: solo_d2_postprocess(model, cate, mask_out, padded), 1, 0)
                )
                times["ref"].append(timeit(lambda: reference(cate, mask_out, padded), 1, 0))
            t_ours, t_ref = statistics.median(times["ours"]), statistics.median(times["ref"])
        results[f"post_{target}"] = (t_ours, t_ref)
        rows.append(
            (
                f"post-processing, {n_cand} candidates, {len(ours)} kept ({same})",
                ms(t_ours),
                f"{ms(t_ref)} ({ref_name})",
                f"{t_ref / t_ours:.2f}x; {t_ours / t_backbone:.0%} of backbone+FPN",
            )
        )
    return rows, results


def bench_nms(quick):
    n, h, w = (200, 100, 152) if quick else (500, 200, 304)
    g = torch.Generator().manual_seed(0)
    masks, _ = random_instances(1, n, h, w, seed=1)
    masks = masks[0]
    labels = torch.randint(0, 80, (n,), generator=g)
    scores = torch.rand(n, generator=g).sort(descending=True).values
    port = load_port(quick)
    if port is not None:
        areas = masks.flatten(1).sum(1).float()

        def ref():
            return port.utils.matrix_nms(labels, masks, areas, scores, sigma=2.0, kernel="gaussian")

        ref_name = "AdelaiDet port's matrix_nms"
    elif quick:

        def ref():
            return one_matmul_nms(masks, labels, scores)

        ref_name = "one IoU matmul, re-implemented, quick mode"
    else:
        t_ours = timeit(lambda: matrix_nms(masks, labels, scores))
        return [(f"Matrix NMS, {n} masks {h}x{w}, 80 classes", ms(t_ours), NOT_MEASURED, "")], {}
    out, expected = matrix_nms(masks, labels, scores), ref()
    same = out.shape == expected.shape and torch.allclose(out, expected, atol=1e-6, rtol=0)
    t_ours = timeit(lambda: matrix_nms(masks, labels, scores))
    t_ref = timeit(ref)
    return [
        (
            f"Matrix NMS, {n} masks {h}x{w}, 80 classes ({'same' if same else 'DIFFERENT'} scores)",
            ms(t_ours),
            f"{ms(t_ref)} ({ref_name})",
            f"{t_ref / t_ours:.1f}x",
        )
    ], {}


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
        out, peak = peak_memory(lambda: paste_masks(soft, image_size, output_size, 0.5))
    kept = out.numel()
    del out
    return {"delta_bytes": peak, "kept_bytes": kept}


def bench_paste(quick):
    rows = []
    k, size = (30, (200, 304)) if quick else (100, (800, 1216))
    soft = paste_inputs(k, size)
    same = torch.equal(paste_masks(soft, size, size, 0.5), old_paste(soft, size, size))
    t_new = timeit(lambda: masks_to_boxes(paste_masks(soft, size, size, 0.5)))
    t_old = timeit(lambda: masks_to_boxes(old_paste(soft, size, size)))
    rows.append(
        (
            f"paste {k} masks at {size[0]}x{size[1]} and their boxes (output = input size; "
            f"{'same' if same else 'DIFFERENT'} masks)",
            ms(t_new),
            f"{ms(t_old)} (whole masks, chunks of 32)",
            f"{t_old / t_new:.1f}x",
        )
    )
    k, image, out = (20, (200, 300), (1000, 1500)) if quick else (100, (800, 1200), (4000, 6000))
    new = paste_peak(k, image, out, "new")
    old = paste_peak(k, image, out, "old")
    kept = new["kept_bytes"]
    rows.append(
        (
            f"paste peak memory, {k} masks, input {image[0]}x{image[1]} -> "
            f"output {out[0]}x{out[1]}",
            f"{new['delta_bytes'] / 2**20:.0f} MiB = "
            f"{new['delta_bytes'] / kept:.2f}x the kept bool masks",
            f"{old['delta_bytes'] / 2**20:.0f} MiB = "
            f"{old['delta_bytes'] / kept:.2f}x (chunks of 32)",
            f"{old['delta_bytes'] / max(new['delta_bytes'], 1):.1f}x less",
        )
    )
    return rows, {"paste_peak_ratio": new["delta_bytes"] / kept}


# ----------------------------------------------------------------------------- targets
def bench_targets(quick):
    h, w, n = (400, 608, 10) if quick else (800, 1216, 20)
    masks, classes = random_instances(2, n, h, w)
    boxes = boxes_of(masks)
    sizes = [(h // 4, w // 4)] * 5
    kw = dict(
        num_grids=GRIDS,
        scale_ranges=RANGES,
        mask_sizes=sizes,
        sigma=0.2,
        num_classes=80,
        gt_boxes=boxes,
    )
    out = solo_targets(masks, classes, **kw)
    m_total = sum(t.num_targets for t in out)
    rows, results = [], {}
    port = load_port(quick)
    if port is not None:
        port_model = port_lib.build_port_model(port)
        instances = [port_lib.gt_instances(m, c, b) for m, c, b in zip(masks, classes, boxes)]
        m_port = port_lib.num_mask_targets(port_model, instances, sizes[0])

        def ref_targets():
            return port_lib.targets(port_model, instances, sizes[0])

        def ref_targets_and_dice(logits):
            return port_lib.targets_and_dice(port, port_model, instances, sizes[0], logits)

        ref_name, ref_loss_name = (
            "AdelaiDet port's get_ground_truth",
            "AdelaiDet port: get_ground_truth + its dice_loss",
        )
    elif quick:
        m_port = m_total

        def ref_targets():
            return adelaidet_targets(masks, classes, boxes, sizes)

        def ref_targets_and_dice(logits):
            return adelaidet_targets_and_dice(masks, classes, boxes, sizes, logits)

        ref_name = ref_loss_name = "AdelaiDet loops re-implemented, quick mode"
    else:
        ref_name = None
    threads = torch.get_num_threads()
    for nt in (1, 2):  # the issue measured with 2 threads
        torch.set_num_threads(nt)
        label = (
            f"target assignment, 2 images x {n} instances, {h}x{w} ({m_total} mask targets), "
            f"{nt} thread{'s' if nt > 1 else ''}"
        )
        if ref_name is None:
            rows.append(
                (
                    label,
                    ms(timeit(lambda: solo_targets(masks, classes, **kw), repeats=5)),
                    NOT_MEASURED,
                    "",
                )
            )
            continue
        times = {"vec": [], "loop": []}
        for _ in range(1 if quick else 5):  # interleaved rounds, so load changes hit both
            times["vec"].append(timeit(lambda: solo_targets(masks, classes, **kw), repeats=5))
            times["loop"].append(timeit(ref_targets, repeats=1, warmup=0))
        t_vec, t_loop = (statistics.median(times[k]) for k in ("vec", "loop"))
        # the ratio of each round (both measured within seconds of each other), median and range
        ratios = sorted(lo / v for lo, v in zip(times["loop"], times["vec"]))
        spread = f" (rounds {ratios[0]:.1f}-{ratios[-1]:.1f}x)" if len(ratios) > 1 else ""
        rows.append(
            (
                label,
                ms(t_vec),
                f"{ms(t_loop)} "
                f"({ref_name}{', ' + str(m_port) + ' mask targets' if m_port != m_total else ''})",
                f"{statistics.median(ratios):.1f}x{spread}",
            )
        )
        results.update(
            {
                f"targets_speedup_{nt}": statistics.median(ratios),
                f"targets_vec_s_{nt}": t_vec,
                f"targets_loop_s_{nt}": t_loop,
                f"targets_rounds_{nt}": ratios,
            }
        )
    torch.set_num_threads(threads)
    # targets + mask loss, forward and backward:
    # the compact targets must not move the cost into the loss
    if ref_name is not None:
        g = torch.Generator().manual_seed(0)
        logits = torch.randn(m_total, *sizes[0], generator=g).requires_grad_()
        ref_logits = torch.randn(m_port, *sizes[0], generator=g).requires_grad_()
        times = {"vec": [], "loop": []}
        for _ in range(1 if quick else 3):
            times["vec"].append(
                timeit(lambda: targets_and_dice(masks, classes, kw, logits), repeats=3)
            )
            times["loop"].append(timeit(lambda: ref_targets_and_dice(ref_logits), repeats=1))
        t_vec, t_loop = (statistics.median(times[k]) for k in ("vec", "loop"))
        rows.append(
            (
                f"targets + dice loss forward and backward ({m_total} mask targets, 1 thread)",
                ms(t_vec),
                f"{ms(t_loop)} ({ref_loss_name})",
                f"{t_loop / t_vec:.1f}x",
            )
        )
        results["targets_loss_speedup"] = t_loop / t_vec
    counts = (1, 10, 50) if quick else (1, 10, 50, 100, 250, 500)
    times = []
    for c in counts:
        m, cl = random_instances(2, c, h, w, seed=c)
        b = boxes_of(m)
        times.append(timeit(lambda: solo_targets(m, cl, **dict(kw, gt_boxes=b)), repeats=3))
    slope = (times[-1] - times[0]) / (counts[-1] - counts[0]) / 2  # per instance per image
    rows.append(
        (
            f"target assignment vs instances per image ({h}x{w}, batch 2, 1 thread)",
            ", ".join(f"{c}: {ms(t)}" for c, t in zip(counts, times)),
            f"slope {slope * 1e3:.2f} ms per instance per image",
            f"{times[-1] / times[0]:.0f}x from {counts[0]} to {counts[-1]}",
        )
    )
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
    for name, config in (
        ("BiSeNetV1 R18", "BiSeNet/V1_R18_cityscapes.yaml"),
        ("BiSeNetV2", "BiSeNet/V2_cityscapes.yaml"),
    ):
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
            rows.append(
                (
                    f"{name} inference {size[0]}x{size[1]} "
                    f"({'same' if same else 'DIFFERENT'} logits)",
                    f"{ms(t_in)} ({1 / t_in:.2f} FPS)",
                    f"{ms(t_out)} (out-of-place ReLU)",
                    f"{t_out / t_in:.2f}x",
                )
            )
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
    print(
        json.dumps(
            {"step_s": t, "peak_mib": _status_kib("VmHWM") / 1024, "delta_mib": peak / 2**20}
        )
    )


def bench_training(quick):
    configs = recipe_configs()
    if quick:
        configs = [os.path.join(configs_dir(), "SOLOv2", "Light448_R18_3x.yaml")]
    h, w = (64, 96) if quick else (256, 320)
    rows = []
    for config in configs:
        name = os.path.relpath(config, configs_dir())
        # a fresh process per config; `-m` runs this module, from any directory
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.runner",
            "--train-child",
            f"{config},{h},{w},{1 if quick else 2}",
        ]
        print(f"  training configs/{name} ...", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_child_env())
        if proc.returncode != 0:
            rows.append(
                (f"train step {name}", "failed", proc.stderr.strip().splitlines()[-1][:120], "")
            )
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(
            (
                f"train step {name}, batch 2, {h}x{w}, CPU fp32",
                f"{r['step_s']:.2f} s/step",
                f"peak RSS {r['peak_mib']:.0f} MiB (+{r['delta_mib']:.0f} MiB above "
                "the model during a step)",
                "",
            )
        )
    return rows, {}


def _child_env():
    """The environment of a training child: this process's, with the directory that holds the
    imported solo_d2 first on ``PYTHONPATH`` (a checkout that is not installed works too)."""
    import solo_d2

    root = os.path.dirname(os.path.dirname(os.path.abspath(solo_d2.__file__)))
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=root + (os.pathsep + path if path else ""))


def bench_cuda_training(quick):
    from benchmarks.cuda import bench_cuda_training as run

    return run(quick)


def bench_cuda_inference(quick):
    from benchmarks.cuda import bench_cuda_inference as run

    return run(quick)


# ----------------------------------------------------------------------------- op / sync counts
def _counted(fn, repeats=2, host=(), setup=None):
    """``(result, OpCounter)`` of ``fn(*setup())`` after one uncounted warm-up call; counted
    ``repeats`` times, and an error if the counts differ (they are exact: a difference is a
    bug). ``setup`` (uncounted) makes fresh arguments for each call."""
    from benchmarks.counting import OpCounter

    fn(*(setup() if setup else ()))
    counters = []
    for _ in range(repeats):
        args = setup() if setup else ()
        with OpCounter(host=host) as c:
            out = fn(*args)
        counters.append(c)
    first = counters[0]
    for c in counters[1:]:
        if (c.by_op, c.sync_ops) != (first.by_op, first.sync_ops):
            raise RuntimeError(f"op counts differ between two identical calls: {first} vs {c}")
    return out, first


def _ops(c):
    return f"{c.kernel_ops} kernel ops, {c.syncs} syncs"


def _count_ratio(ours, ref):
    def r(a, b):
        return f"{a / b:.2f}x" if b else ("=" if a == b else "inf")

    return f"ops {r(ours.kernel_ops, ref.kernel_ops)}, syncs {r(ours.syncs, ref.syncs)}"


def _print_causes(name, c):
    print(f"    {name}: {_ops(c)}; syncs: {dict(c.sync_ops)}", flush=True)


def calibrate_cate_bias(port, model, images, candidates, score_thr):
    """Shift ``model``'s (the port's) category bias so that ``candidates`` (cell, class) pairs of
    ``images`` pass ``score_thr`` after point NMS (random weights give none: the prior bias puts
    every score near 0.01). Point NMS keeps the local maxima of each class map, which a shift
    of every logit does not move, so the shift is read off the sorted maxima."""
    import math

    with torch.no_grad():
        feats = model.backbone(model.preprocess_image(images).tensor)
        cate, _ = model.ins_head(model.split_feats([feats[f] for f in model.instance_in_features]))
        maxima = []
        for c in cate:
            keep = port.utils.point_nms(c.sigmoid(), kernel=2) > 0
            maxima.append(c[keep])
        logits = torch.cat(maxima).double().sort(descending=True).values
        k = min(candidates, logits.numel() - 1)
        target = 0.5 * (logits[k - 1] + logits[k])  # between the k-th and the next maximum
        shift = math.log(score_thr / (1 - score_thr)) - float(target)
        model.ins_head.cate_pred.bias += shift
    return shift


def bench_counts(quick):
    """Kernel ops and syncs (see :mod:`benchmarks.counting`) per image or step, solo_d2
    against the AdelaiDet port, same weights and inputs."""
    from detectron2.structures import ImageList

    port = None
    try:
        port = port_lib.load_adelaidet_solov2()
    except port_lib.PortNotFound as e:
        print(f"  {e}", flush=True)
        return [("op and sync counts", NOT_MEASURED, "", "")], {}
    size = (256, 384) if quick else (800, 1216)
    port_model = port_lib.build_port_model(port)
    ours_model = port_lib.solo_d2_twin(port_model)
    rows, results = [], {}
    hw = f"{size[0]}x{size[1]}"

    # post-processing: the head outputs of the postprocess section (n candidates, 100 kept) and
    # fewer objects with lower scores (fewer kept)
    cases = [
        (
            "~300 candidates",
            "~300 candidates",
            dict(num_candidates=300, num_objects=8, scores=(0.12, 0.3)),
        ),
        (
            "~1500 candidates",
            "~1500 candidates",
            dict(num_candidates=1500, num_objects=8, scores=(0.12, 0.3)),
        ),
        (
            "100 kept",
            "100 detections kept (the postprocess section's inputs, ~300 candidates)",
            dict(num_candidates=300, num_objects=60),
        ),
    ]
    if quick:
        cases = [
            (key, label, dict(kw, num_candidates=kw["num_candidates"] // 5))
            for key, label, kw in cases
        ]
    for key, label, kw in cases:
        cate, mask_out, padded = synthetic_solov2_outputs(size=size, **kw)
        n_cand = int(sum((point_nms(c.sigmoid()) > ours_model.score_thresh).sum() for c in cate))
        with torch.no_grad():
            ref, c_ref = _counted(
                lambda: port_lib.postprocess(port, port_model, cate, mask_out, padded)
            )
            ours, c_ours = _counted(lambda: solo_d2_postprocess(ours_model, cate, mask_out, padded))
        same = compare_instances(ours, ref.pred_masks, ref.scores, ref.pred_classes)
        rows.append(
            (
                f"post-processing, {label}: {n_cand} candidates, {len(ours)} kept ({same})",
                _ops(c_ours),
                _ops(c_ref),
                _count_ratio(c_ours, c_ref),
            )
        )
        results[f"count_post_{key}"] = (
            c_ours.kernel_ops,
            c_ours.syncs,
            c_ref.kernel_ops,
            c_ref.syncs,
        )
        _print_causes("solo_d2", c_ours)
        _print_causes("port", c_ref)

    # whole-model inference of one image (uint8 on the host, copied to the device by the model)
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=g)
    inputs = [{"image": image, "height": size[0], "width": size[1]}]
    n_cand = 300 if not quick else 60
    calibrate_cate_bias(port, port_model, inputs, n_cand, ours_model.score_thresh)
    ours_model = port_lib.solo_d2_twin(port_model)  # the shifted bias, converted again
    with torch.no_grad():
        ref, c_ref = _counted(lambda: port_model(inputs)[0]["instances"], host=[image])
        ours, c_ours = _counted(lambda: ours_model(inputs)[0]["instances"], host=[image])
    same = len(ours) == len(ref) and torch.allclose(ours.scores, ref.scores, atol=1e-5, rtol=0)
    rows.append(
        (
            f"whole-model inference, one {hw} image, ~{n_cand} candidates, {len(ours)} kept "
            f"({'same' if same else 'DIFFERENT'} detections)",
            _ops(c_ours),
            _ops(c_ref),
            _count_ratio(c_ours, c_ref),
        )
    )
    results["count_model"] = (c_ours.kernel_ops, c_ours.syncs, c_ref.kernel_ops, c_ref.syncs)
    _print_causes("solo_d2", c_ours)
    _print_causes("port", c_ref)

    # training: targets + loss + backward from the head outputs, batch 2
    h4, w4 = -(-size[0] // 4), -(-size[1] // 4)
    for n in (5, 20):
        batch = training_batch(ours_model_cfg(ours_model), *size, num_instances=n, batch=2, seed=n)
        instances = [b["instances"] for b in batch]
        g = torch.Generator().manual_seed(n)
        cate = [torch.randn(2, 80, s, s, generator=g) for s in GRIDS]
        kernels = [0.1 * torch.randn(2, 256, s, s, generator=g) for s in GRIDS]
        feats = torch.randn(2, 256, h4, w4, generator=g)
        images = ImageList(torch.empty(2, 3, *size), [tuple(size)] * 2)

        def leaves():  # fresh head outputs that require gradients (made outside the count)
            return (
                [t.clone().requires_grad_() for t in cate],
                [t.clone().requires_grad_() for t in kernels],
                feats.clone().requires_grad_(),
            )

        def port_step(c, k, f):
            losses = port_lib.training_losses(port_model, instances, c, k, f)
            sum(losses.values()).backward()
            return losses

        def ours_step(c, k, f):
            losses = ours_model.losses(batch, images, c, [(kk, f) for kk in k])
            sum(losses.values()).backward()
            return losses

        _, c_ref = _counted(port_step, setup=leaves)
        _, c_ours = _counted(ours_step, setup=leaves)
        rows.append(
            (
                f"training step: targets + loss + backward, batch 2, {n} instances per image, {hw}",
                _ops(c_ours),
                _ops(c_ref),
                _count_ratio(c_ours, c_ref),
            )
        )
        results[f"count_train_{n}"] = (
            c_ours.kernel_ops,
            c_ours.syncs,
            c_ref.kernel_ops,
            c_ref.syncs,
        )
        _print_causes("solo_d2", c_ours)
        _print_causes("port", c_ref)
    return rows, results


def ours_model_cfg(model):
    """The config fields :func:`training_batch` reads, of a solo_d2 ``SOLO`` model."""
    from detectron2.config import CfgNode

    return CfgNode(
        {"MODEL": {"META_ARCHITECTURE": "SOLO", "SOLO": {"NUM_CLASSES": model.num_classes}}}
    )


SECTIONS = {
    "postprocess": bench_postprocess,
    "nms": bench_nms,
    "paste": bench_paste,
    "targets": bench_targets,
    "bisenet": bench_bisenet,
    "training": bench_training,
    "counts": bench_counts,  # kernel ops and syncs against the AdelaiDet port (ADELAIDET_ROOT)
    "cuda_inference": bench_cuda_inference,  # benchmarks/cuda.py; only where CUDA is available
    "cuda_training": bench_cuda_training,
}
CUDA_SECTIONS = ("cuda_inference", "cuda_training")


def git_commit(path):
    """``<short commit>`` of the git checkout at ``path`` (``+ uncommitted changes`` when its
    tracked files differ from it), or None where ``path`` is not a checkout."""

    def git(*a):
        return subprocess.run(["git", "-C", path, *a], capture_output=True, text=True, timeout=60)

    try:
        head = git("rev-parse", "--short=12", "HEAD")
        if head.returncode != 0 or os.path.realpath(
            git("rev-parse", "--show-toplevel").stdout.strip()
        ) != os.path.realpath(path):
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + (" + uncommitted changes" if dirty else "")


def run_stamp():
    """The date (UTC) and the solo_d2 commit of this run."""
    import datetime

    import solo_d2

    commit = git_commit(os.path.dirname(os.path.dirname(os.path.abspath(solo_d2.__file__))))
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"{date}, solo_d2 {commit or '(not a git checkout)'}"


def main(argv=None):
    """The command line of ``tools/benchmark.py``
    (``argv``: the arguments, default ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(prog="tools/benchmark.py", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="small sizes, a smoke run of every section"
    )
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
    # the last piece is triple-quoted only so that its long expression can span lines
    header = (
        f"machine: {cpu}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, "
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"detectron2 {detectron2.__version__}, "
        f"""CUDA {
            torch.version.cuda
            + " on "
            + torch.cuda.get_device_name()
            + " (allocator "
            + torch.cuda.get_allocator_backend()
            + ")"
            if torch.cuda.is_available()
            else "no"
        }"""
    )
    header += f"; {run_stamp()}"
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
    port = port_lib.loaded_port()
    if port is not None:  # the AdelaiDet checkout that the AdelaiDet columns ran
        header += (
            f"; AdelaiDet {git_commit(port.root) or 'checkout without .git'} from {port_lib.ENV}"
        )
    if args.write:
        text = render(header, goals(results), rows, args.quick)
        if args.only and os.path.exists(args.write):  # replace only the sections that ran
            with open(args.write) as f:
                text = merge(f.read(), text, header, order=list(SECTIONS))
        tmp = args.write + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, args.write)


if __name__ == "__main__":
    main()
