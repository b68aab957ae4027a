"""CUDA sections of the benchmarks (``tools/benchmark.py``), run only where
``torch.cuda.is_available()``.

- ``cuda_training``: step time and peak memory of every recipe config at batch 2, fp32 through
  detectron2's ``SimpleTrainer`` and AMP through its ``AMPTrainer`` (the trainers
  ``tools/train_net.py`` uses for ``SOLVER.AMP.ENABLED`` False / True), with the recipe's own
  optimizer (``Trainer.build_optimizer``).
- ``cuda_inference``: SOLOv2 R50 backbone+FPN and post-processing at 800x1216 against the
  AdelaiDet algorithm on the same GPU, target assignment against AdelaiDet's loops on the GPU
  (where each instance costs device round trips), Matrix NMS, and BiSeNet inference in fp32
  and under autocast.

Times are medians of repeats with ``torch.cuda.synchronize()`` after each call.
"""

import contextlib
import math
import os

import torch

from benchmarks import baselines as bl
from benchmarks import common as bm
from solo_d2.checkpoint.core import build_cfg
from solo_d2.modeling.solo.matrix_nms import matrix_nms
from solo_d2.modeling.solo.targets import solo_targets

DEVICE = "cuda"


def cuda_timeit(fn, repeats=5, warmup=2):
    """:func:`benchmarks.runner.timeit` of ``fn`` followed by a device synchronize, so that each
    call's time includes its kernels; the queue is drained before the first call."""

    def synced():
        fn()
        torch.cuda.synchronize()

    torch.cuda.synchronize()
    return bm.timeit(synced, repeats=repeats, warmup=warmup)


@contextlib.contextmanager
def cudnn_flags(**flags):
    """Set ``torch.backends.cudnn`` flags (e.g. ``allow_tf32=False``) inside the block; the old
    values come back after it, also when it raises."""
    old = {name: getattr(torch.backends.cudnn, name) for name in flags}
    for name, value in flags.items():
        setattr(torch.backends.cudnn, name, value)
    try:
        yield
    finally:
        for name, value in old.items():
            setattr(torch.backends.cudnn, name, value)


def no_cuda():
    return [("CUDA sections", "not measured: torch.cuda.is_available() is False", "", "")], {}


def _train_size(cfg, quick):
    if quick:
        return 256, 320
    if cfg.MODEL.META_ARCHITECTURE != "SOLO" and cfg.INPUT.CROP.ENABLED:
        return tuple(cfg.INPUT.CROP.SIZE)  # BiSeNet recipes train on crops
    return 800, 1216


def train_steps(cfg, batch, amp, steps, warmup):
    """``(median s/step, peak bytes allocated during the timed steps, [total_loss per step])``
    of ``cfg``'s model trained on ``batch`` by detectron2's SimpleTrainer or AMPTrainer."""
    import itertools

    from detectron2.engine import AMPTrainer, SimpleTrainer
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from solo_d2.engine.trainer import Trainer

    torch.manual_seed(0)
    model = build_model(cfg).train()
    if next(model.parameters()).device.type != torch.device(DEVICE).type:
        raise RuntimeError(
            f"the model was built on {next(model.parameters()).device}, not {DEVICE}"
        )
    optimizer = Trainer.build_optimizer(cfg, model)
    trainer = (AMPTrainer if amp else SimpleTrainer)(model, itertools.repeat(batch), optimizer)
    with EventStorage(0) as storage:

        def step():
            trainer.run_step()
            storage.step()

        for _ in range(warmup):
            step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t = cuda_timeit(step, repeats=steps, warmup=0)
        peak = torch.cuda.max_memory_allocated()
        losses = [v for v, _ in storage.history("total_loss").values()]
    # ``= None`` rather than ``del`` (same release): ruff (F821) reads a ``del`` of a name that a
    # closure (``step``) uses as leaving the closure's name undefined
    trainer = optimizer = model = None
    torch.cuda.empty_cache()
    return t, peak, losses


def bench_cuda_training(quick):
    if not torch.cuda.is_available():
        return no_cuda()
    configs = bm.recipe_configs()
    if quick:
        configs = [os.path.join(bm.configs_dir(), "SOLOv2", "Light448_R18_3x.yaml")]
    rows, results = [], {}
    for config in configs:
        name = os.path.relpath(config, bm.configs_dir())
        print(f"  cuda training {name} ...", flush=True)
        cfg = build_cfg(config, device=DEVICE)
        h, w = _train_size(cfg, quick)
        batch = bl.training_batch(cfg, h, w, num_instances=8)
        try:
            t32, m32, l32 = train_steps(cfg, batch, False, 2 if quick else 5, 1 if quick else 2)
            t16, m16, l16 = train_steps(cfg, batch, True, 2 if quick else 5, 1 if quick else 2)
        except Exception as e:  # noqa: BLE001 - a failing config is a row, not the end of the run
            rows.append((f"train step {name}", "failed", f"{type(e).__name__}: {str(e)[:150]}", ""))
            results.setdefault("cuda_train_failed", []).append(name)
            torch.cuda.empty_cache()
            continue
        finite = all(math.isfinite(v) for v in l32 + l16)
        results.setdefault("cuda_train", {})[name] = (t32, t16, m32, m16, finite)
        rows.append(
            (
                f"train step {name}, batch 2, {h}x{w}, {'finite' if finite else 'NON-FINITE'} "
                f"losses (first step fp32 {l32[0]:.3f}, AMP {l16[0]:.3f})",
                f"AMP {t16 * 1e3:.0f} ms/step, peak {m16 / 2**30:.2f} GiB",
                f"fp32 {t32 * 1e3:.0f} ms/step, peak {m32 / 2**30:.2f} GiB",
                f"AMP {t32 / t16:.2f}x faster, "
                + (f"{m32 / m16:.2f}x less memory" if m16 else "no memory statistics"),
            )
        )
        print("  " + " | ".join(rows[-1]), flush=True)
    return rows, results


def bench_cuda_inference(quick):
    if not torch.cuda.is_available():
        return no_cuda()
    dev = torch.device(DEVICE)
    rows, results = [], {}
    size = (256, 384) if quick else (800, 1216)
    model = bl.build_solov2_model(quick).to(dev)
    x = torch.randn(1, 3, *size, device=dev)
    with torch.no_grad():
        t_backbone = cuda_timeit(lambda: model.backbone(x))
        img = torch.randint(0, 255, (3, *size), dtype=torch.uint8)
        t_model = cuda_timeit(lambda: model([{"image": img}]))
    rows.append(
        (
            f"SOLOv2 {'R18' if quick else 'R50'}-FPN backbone+FPN, {size[0]}x{size[1]}, fp32",
            bm.ms(t_backbone),
            "",
            "",
        )
    )
    rows.append(
        (
            "SOLOv2 whole model from a uint8 CPU image (random weights: no "
            f"candidates), {size[0]}x{size[1]}",
            bm.ms(t_model),
            "",
            "",
        )
    )
    results["cuda_backbone_s"] = t_backbone
    for target in (60, 200) if quick else (300, 1500):
        cate, mask_out, padded = bl.synthetic_solov2_outputs(
            target, size=size, num_objects=20 if quick else 60
        )
        cate = [c.to(dev) for c in cate]
        mask_out = [(k.to(dev), f.to(dev)) for k, f in mask_out]
        with torch.no_grad():
            # outputs compared in float32: cuDNN runs the baseline's dynamic conv (F.conv2d) in TF32
            # by default, solo_d2's matmul is float32 (torch.backends.cuda.matmul's default)
            with cudnn_flags(allow_tf32=False):
                ours = bl.solo_d2_postprocess(model, cate, mask_out, padded)
                ref = bl.adelaidet_postprocess(
                    cate, mask_out, padded, padded, bl.test_cfg_of(model)
                )
            same_masks = ours.pred_masks.shape == ref[0].shape and torch.equal(
                ours.pred_masks, ref[0]
            )
            score_diff = (
                (ours.scores - ref[1]).abs().max().item()
                if len(ours) == len(ref[1])
                else float("inf")
            )
            t_ours = cuda_timeit(lambda: bl.solo_d2_postprocess(model, cate, mask_out, padded))
            t_ref = cuda_timeit(
                lambda: bl.adelaidet_postprocess(
                    cate, mask_out, padded, padded, bl.test_cfg_of(model)
                )
            )
        results[f"cuda_post_{target}"] = (t_ours, t_ref)
        rows.append(
            (
                f"post-processing, ~{target} candidates, {len(ours)} kept (masks "
                f"{'same' if same_masks else 'DIFFERENT'}, scores within {score_diff:.1e}, TF32 "
                "off; timed with the defaults)",
                bm.ms(t_ours),
                f"{bm.ms(t_ref)} (AdelaiDet algorithm)",
                f"{t_ref / t_ours:.2f}x; {t_ours / t_backbone:.0%} of backbone+FPN",
            )
        )
    model = None  # not ``del``: the lambdas above use the name (ruff F821)
    # target assignment on the GPU
    h, w, n = (400, 608, 10) if quick else (800, 1216, 20)
    masks, classes = bl.random_instances(2, n, h, w)
    boxes = [b.to(dev) for b in bl.boxes_of(masks)]
    masks, classes = [m.to(dev) for m in masks], [c.to(dev) for c in classes]
    sizes = [(h // 4, w // 4)] * 5
    kw = dict(
        num_grids=bl.GRIDS,
        scale_ranges=bl.RANGES,
        mask_sizes=sizes,
        sigma=0.2,
        num_classes=80,
        gt_boxes=boxes,
    )
    t_vec = cuda_timeit(lambda: solo_targets(masks, classes, **kw), repeats=10)
    t_loop = cuda_timeit(
        lambda: bl.adelaidet_targets(masks, classes, boxes, sizes), repeats=3, warmup=1
    )
    results["cuda_targets"] = (t_vec, t_loop)
    rows.append(
        (
            f"target assignment, 2 images x {n} instances, {h}x{w}, on the GPU",
            bm.ms(t_vec),
            f"{bm.ms(t_loop)} (AdelaiDet loops on the GPU)",
            f"{t_loop / t_vec:.1f}x",
        )
    )
    # Matrix NMS
    k, mh, mw = (200, 100, 152) if quick else (500, 200, 304)
    nms_masks = bl.random_instances(1, k, mh, mw, seed=1)[0][0].to(dev)
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 80, (k,), generator=g).to(dev)
    scores = torch.rand(k, generator=g).sort(descending=True).values.to(dev)

    ref = bl.one_matmul_nms(nms_masks, labels, scores)
    close = torch.allclose(matrix_nms(nms_masks, labels, scores), ref, atol=1e-6, rtol=0)
    t_ours = cuda_timeit(lambda: matrix_nms(nms_masks, labels, scores))
    t_ref = cuda_timeit(lambda: bl.one_matmul_nms(nms_masks, labels, scores))
    rows.append(
        (
            f"Matrix NMS, {k} masks {mh}x{mw}, 80 classes (scores "
            f"{'within 1e-6' if close else 'DIFFERENT'})",
            bm.ms(t_ours),
            f"{bm.ms(t_ref)} (one {k}x{k} IoU matmul)",
            f"{t_ref / t_ours:.2f}x",
        )
    )
    rows.extend(_bisenet_rows(quick, dev, results))
    return rows, results


def _bisenet_rows(quick, dev, results):
    from detectron2.modeling import build_model

    rows = []
    for name, config in (
        ("BiSeNetV1 R18", "BiSeNet/V1_R18_cityscapes.yaml"),
        ("BiSeNetV2", "BiSeNet/V2_cityscapes.yaml"),
    ):
        model = build_model(build_cfg(config, device=DEVICE)).eval()
        for size in ((256, 512),) if quick else ((512, 1024), (1024, 2048)):
            x = torch.randn(1, 3, *size, device=dev)
            with torch.no_grad():
                t32 = cuda_timeit(lambda: model._predict(x), repeats=10)
                ref = model._predict(x)
                with torch.autocast(dev.type):
                    t16 = cuda_timeit(lambda: model._predict(x), repeats=10)
                    amp = model._predict(x)
            agree = (amp.argmax(1) == ref.argmax(1)).float().mean().item()
            results[f"cuda_{name} {size[0]}x{size[1]}"] = (t32, t16)
            rows.append(
                (
                    f"{name} inference {size[0]}x{size[1]} (autocast argmax = fp32 argmax on "
                    f"{agree:.1%} of pixels)",
                    f"AMP {bm.ms(t16)} ({1 / t16:.0f} FPS)",
                    f"fp32 {bm.ms(t32)} ({1 / t32:.0f} FPS)",
                    f"AMP {t32 / t16:.2f}x faster",
                )
            )
        # the same at the largest size with cuDNN's autotuner
        # (CUDNN_BENCHMARK True; detectron2's default is False)
        with cudnn_flags(benchmark=True), torch.no_grad():
            t32 = cuda_timeit(lambda: model._predict(x), repeats=10, warmup=3)
            with torch.autocast(dev.type):
                t16 = cuda_timeit(lambda: model._predict(x), repeats=10, warmup=3)
        rows.append(
            (
                f"{name} inference {size[0]}x{size[1]}, cudnn.benchmark on",
                f"AMP {bm.ms(t16)} ({1 / t16:.0f} FPS)",
                f"fp32 {bm.ms(t32)} ({1 / t32:.0f} FPS)",
                f"AMP {t32 / t16:.2f}x faster",
            )
        )
        # not ``del``: the lambdas above use the name (ruff F821)
        model = None
        torch.cuda.empty_cache()
    return rows
