#!/usr/bin/env python
"""solo_d2 benchmarks, every comparison a ratio of medians measured in the same run.

Baselines are the public implementations' algorithms re-implemented here (a test,
``tests/test_benchmark_baselines.py``, checks that each computes what solo_d2 computes):

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
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import solo_d2  # noqa: E402,F401
from solo_d2.modeling.solo.matrix_nms import mask_iou_matrix, matrix_nms  # noqa: E402
from solo_d2.modeling.solo.postprocess import _paste, masks_to_boxes, point_nms  # noqa: E402
from solo_d2.modeling.solo.losses import indexed_dice_loss  # noqa: E402
from solo_d2.modeling.solo.mask_geometry import _row_sums  # noqa: E402
from solo_d2.modeling.solo.targets import solo_targets  # noqa: E402

GRIDS = [40, 36, 24, 16, 12]
RANGES = [(1, 96), (48, 192), (96, 384), (192, 768), (384, 2048)]
STRIDES = [8, 8, 16, 32, 32]


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


# ----------------------------------------------------------------------------- SOLOv2 inputs
def synthetic_solov2_outputs(num_candidates, size=(800, 1216), dim=256, num_objects=60, seed=0):
    """Head outputs of one image shaped like SOLOv2 R50's, with object-like masks.

    Mask features are ``dim - 1`` Gaussian blobs and a constant channel; the kernel of a
    candidate cell selects one object's blob (``mask = sigmoid(12 blob - 6 + noise)``), so
    several cells predict each object (duplicates for the NMS). About ``num_candidates``
    (cell, class) pairs pass the 0.1 score threshold after point NMS, one class per cell.

    Returns ``(cate_logits, mask_outputs, padded_hw)`` as ``SOLOv2Head`` returns them.
    """
    g = torch.Generator().manual_seed(seed)
    h, w = size[0] // 4, size[1] // 4
    ys = torch.arange(h, dtype=torch.float32)[:, None]
    xs = torch.arange(w, dtype=torch.float32)[None, :]
    cy = torch.rand(dim - 1, generator=g) * h
    cx = torch.rand(dim - 1, generator=g) * w
    sy = (0.03 + 0.2 * torch.rand(dim - 1, generator=g)) * h
    sx = (0.03 + 0.2 * torch.rand(dim - 1, generator=g)) * w
    blobs = torch.exp(-0.5 * (((ys - cy[:, None, None]) / sy[:, None, None]) ** 2
                              + ((xs - cx[:, None, None]) / sx[:, None, None]) ** 2))
    feats = torch.cat([blobs, torch.ones(1, h, w)])[None]  # [1, D, h, w]
    obj_class = torch.randint(0, 80, (num_objects,), generator=g)
    total = sum(s * s for s in GRIDS)
    cells = torch.randperm(total, generator=g)[:num_candidates]
    obj = torch.randint(0, num_objects, (num_candidates,), generator=g)
    kernels_flat = torch.randn(total, dim, generator=g) * 0.05
    kernels_flat[cells, obj] += 12.0
    kernels_flat[:, dim - 1] = -6.0
    cate_flat = torch.full((total, 80), -8.0)
    probs = 0.12 + 0.85 * torch.rand(num_candidates, generator=g)
    cate_flat[cells, obj_class[obj]] = torch.log(probs / (1 - probs))
    cate_logits, mask_outputs, start = [], [], 0
    for s in GRIDS:
        part = slice(start, start + s * s)
        cate_logits.append(cate_flat[part].t().reshape(1, 80, s, s).contiguous())
        mask_outputs.append((kernels_flat[part].t().reshape(1, dim, s, s).contiguous(), feats))
        start += s * s
    return cate_logits, mask_outputs, size


def adelaidet_postprocess(cate_logits, mask_outputs, image_size, output_size, test_cfg, strides=STRIDES):
    """Baseline: AdelaiDet's SOLOv2 ``inference_single_image`` (one image, Matrix NMS)."""
    cate = torch.cat([point_nms(c.sigmoid()).permute(0, 2, 3, 1).reshape(-1, c.shape[1]) for c in cate_logits])
    kernels = torch.cat([k.permute(0, 2, 3, 1).reshape(-1, k.shape[1]) for k, _ in mask_outputs])
    seg = mask_outputs[0][1]
    inds = cate > test_cfg["score_thr"]
    cate_scores = cate[inds]
    inds = inds.nonzero()
    labels = inds[:, 1]
    kernel = kernels[inds[:, 0]]
    grids = [k.shape[-1] for k, _ in mask_outputs]
    stride_of_cell = torch.cat([torch.full((g * g,), float(s), device=cate.device)
                                for g, s in zip(grids, strides)])[inds[:, 0]]
    n, d = kernel.shape
    seg_preds = F.conv2d(seg, kernel.view(n, d, 1, 1)).squeeze(0).sigmoid()
    seg_masks = seg_preds > test_cfg["mask_thr"]
    sum_masks = seg_masks.sum((1, 2)).float()
    keep = sum_masks > stride_of_cell
    seg_preds, seg_masks, sum_masks = seg_preds[keep], seg_masks[keep], sum_masks[keep]
    cate_scores, labels = cate_scores[keep], labels[keep]
    cate_scores = cate_scores * ((seg_preds * seg_masks.float()).sum((1, 2)) / sum_masks)
    order = torch.argsort(cate_scores, descending=True)[: test_cfg["nms_pre"]]
    seg_masks, seg_preds, sum_masks = seg_masks[order], seg_preds[order], sum_masks[order]
    cate_scores, labels = cate_scores[order], labels[order]
    # AdelaiDet's matrix_nms (gaussian kernel)
    n = len(labels)
    flat = seg_masks.reshape(n, -1).float()
    inter = flat @ flat.t()
    sx = sum_masks.expand(n, n)
    iou = (inter / (sx + sx.t() - inter)).triu(diagonal=1)
    lx = labels.expand(n, n)
    label_matrix = (lx == lx.t()).float().triu(diagonal=1)
    compensate = (iou * label_matrix).max(0)[0].expand(n, n).t()
    decay_iou = iou * label_matrix
    sigma = test_cfg["sigma"]
    coef = (torch.exp(-sigma * decay_iou**2) / torch.exp(-sigma * compensate**2)).min(0)[0]
    cate_scores = cate_scores * coef
    keep = cate_scores >= test_cfg["update_thr"]
    seg_preds, cate_scores, labels = seg_preds[keep], cate_scores[keep], labels[keep]
    order = torch.argsort(cate_scores, descending=True)[: test_cfg["max_per_img"]]
    seg_preds, cate_scores, labels = seg_preds[order], cate_scores[order], labels[order]
    h, w = image_size
    fh, fw = seg.shape[-2:]
    seg_preds = F.interpolate(seg_preds[None], size=(4 * fh, 4 * fw), mode="bilinear")[:, :, :h, :w]
    masks = F.interpolate(seg_preds, size=tuple(output_size), mode="bilinear")[0] > test_cfg["mask_thr"]
    return masks, cate_scores, labels


def build_solov2_model(quick):
    from detectron2.modeling import build_model

    from solo_d2.checkpoint.core import build_cfg

    opts = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"] if quick else []
    cfg = build_cfg(os.path.join(REPO, "configs/SOLOv2/R50_3x.yaml"), opts)
    return build_model(cfg).eval()


def solo_d2_postprocess(model, cate_logits, mask_outputs, padded_hw, output_size=None):
    from detectron2.structures import ImageList

    images = ImageList(torch.empty(1, 3, *padded_hw, device=cate_logits[0].device), [tuple(padded_hw)])
    inputs = [{"height": (output_size or padded_hw)[0], "width": (output_size or padded_hw)[1]}]
    return model.inference(inputs, images, cate_logits, mask_outputs)[0]["instances"]


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


def one_matmul_nms(masks, labels, scores):
    """Baseline: the references' Matrix NMS (gaussian, sigma 2): IoUs of all pairs by one
    matmul, then the class mask."""
    iou = mask_iou_matrix(masks).triu(diagonal=1)
    decay = iou * (labels[:, None] == labels[None, :]).triu(diagonal=1).float()
    comp = decay.max(dim=0).values[:, None]
    return scores * torch.exp(-2.0 * (decay**2 - comp**2)).min(dim=0).values


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
def old_paste(soft_masks, image_size, output_size, threshold=0.5, chunk=32):
    """solo_d2's previous paste: chunks of 32 masks upsampled in float at the output size."""
    k, mh, mw = soft_masks.shape
    out = torch.zeros(k, *output_size, dtype=torch.bool)
    for start in range(0, k, chunk):
        part = F.interpolate(soft_masks[start : start + chunk, None], size=(mh * 4, mw * 4), mode="bilinear")
        part = F.interpolate(part[:, :, : image_size[0], : image_size[1]], size=tuple(output_size), mode="bilinear")
        out[start : start + chunk] = part[:, 0] > threshold
    return out


def paste_inputs(k, image_size, seed=0):
    g = torch.Generator().manual_seed(seed)
    mh, mw = -(-image_size[0] // 4), -(-image_size[1] // 4)
    masks, _ = random_instances(1, k, mh, mw, seed=seed)
    return masks[0].float() * 0.8 + torch.rand(k, mh, mw, generator=g) * 0.15


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
def random_instances(batch, n, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks, classes = [], []
    yy, xx = torch.arange(h)[:, None], torch.arange(w)[None, :]
    for _ in range(batch):
        cy = torch.randint(0, h, (n, 1, 1), generator=g)
        cx = torch.randint(0, w, (n, 1, 1), generator=g)
        r = torch.randint(4, max(5, min(h, w) // 3), (n, 1, 1), generator=g)
        masks.append(((yy - cy) ** 2 + (xx - cx) ** 2) < r**2)
        classes.append(torch.randint(0, 80, (n,), generator=g))
    return masks, classes


def adelaidet_targets(gt_masks, gt_classes, gt_boxes, mask_sizes, sigma=0.2, num_classes=80,
                      grids=GRIDS, ranges=RANGES):
    """Baseline: AdelaiDet's SOLOv2 target loops (``get_ground_truth_single``), per image, level,
    instance and cell: center of mass of the full mask, float32 floor-division cells, the last
    claimant's label, the mask resized per (level, instance) and copied into a new uint8 target
    per claimed cell, stacked per image; targets of the images concatenated and made float as
    AdelaiDet's loss does. Returns per level ``(labels [B, S, S], [(img, instance, cell)],
    mask targets [M, h, w] float)``."""
    out = []
    for s, (lo, hi), size in zip(grids, ranges, mask_sizes):
        all_labels, entries, per_image = [], [], []
        for b, (masks, classes, boxes) in enumerate(zip(gt_masks, gt_classes, gt_boxes)):
            h, w = masks.shape[-2:]
            dev = masks.device
            labels = torch.full((s, s), num_classes, dtype=torch.long, device=dev)
            ins_label = []
            ys_all = torch.arange(h, dtype=torch.float32, device=dev)[:, None]
            xs_all = torch.arange(w, dtype=torch.float32, device=dev)[None, :]
            for n in range(masks.shape[0]):
                bw, bh = float(boxes[n, 2] - boxes[n, 0]), float(boxes[n, 3] - boxes[n, 1])
                if not lo <= math.sqrt(bw * bh) <= hi:
                    continue
                m = masks[n].float()
                area = m.sum()
                if area == 0:
                    continue
                cy = (m * ys_all).sum() / area
                cx = (m * xs_all).sum() / area
                hh, hw = 0.5 * bh * sigma, 0.5 * bw * sigma
                cw, ch = int((cx / w) // (1.0 / s)), int((cy / h) // (1.0 / s))
                top = max(0, int(((cy - hh) / h) // (1.0 / s)), ch - 1)
                down = min(s - 1, int(((cy + hh) / h) // (1.0 / s)), ch + 1)
                left = max(0, int(((cx - hw) / w) // (1.0 / s)), cw - 1)
                right = min(s - 1, int(((cx + hw) / w) // (1.0 / s)), cw + 1)
                labels[top : down + 1, left : right + 1] = classes[n]
                seg_mask = (F.interpolate(m[None, None], size=size, mode="bilinear")[0, 0] >= 0.5).to(torch.uint8)
                for i in range(top, down + 1):
                    for j in range(left, right + 1):
                        cur = torch.zeros(size, dtype=torch.uint8, device=dev)
                        cur[: seg_mask.shape[0], : seg_mask.shape[1]] = seg_mask
                        ins_label.append(cur)
                        entries.append((b, n, i * s + j))
            all_labels.append(labels)
            per_image.append(torch.stack(ins_label) if ins_label else torch.zeros((0, *size), dtype=torch.uint8, device=dev))
        out.append((torch.stack(all_labels), entries, torch.cat(per_image).float()))
    return out


def boxes_of(masks):
    return [masks_to_boxes(m) for m in masks]


def adelaidet_dice(probs, targets):
    """Baseline: AdelaiDet's ``dice_loss`` on dense float targets [M, h, w] -> [M]."""
    p = probs.contiguous().view(probs.shape[0], -1)
    t = targets.contiguous().view(targets.shape[0], -1).float()
    a = torch.sum(p * t, 1)
    b = torch.sum(p * p, 1) + 0.001
    c = torch.sum(t * t, 1) + 0.001
    return 1 - (2 * a) / (b + c)


def targets_and_dice(masks, classes, kw, logits):
    """solo_d2: targets, then the dice loss through the target rows, forward and backward."""
    out = solo_targets(masks, classes, **kw)
    probs = logits.sigmoid().split([t.num_targets for t in out])
    loss = sum(indexed_dice_loss(p, t.target_masks, t.target_rows).sum() for p, t in zip(probs, out))
    loss.backward()
    return loss


def adelaidet_targets_and_dice(masks, classes, boxes, sizes, logits, ranges=RANGES):
    """Baseline: AdelaiDet's target loops, then its dice loss on the float targets, forward and
    backward (same probabilities as :func:`targets_and_dice`)."""
    ref = adelaidet_targets(masks, classes, boxes, sizes, ranges=ranges)
    probs = logits.sigmoid().split([r[2].shape[0] for r in ref])
    loss = sum(adelaidet_dice(p, r[2]).sum() for p, r in zip(probs, ref) if p.shape[0])  # skips empty levels, as AdelaiDet
    loss.backward()
    return loss


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
def training_batch(cfg, h, w, num_instances=4, batch=2, seed=3):
    """A training batch for ``cfg``'s model: random ``uint8`` images ``[3, h, w]`` with
    ``num_instances`` random discs (SOLO family: ``instances`` with masks, classes and boxes)
    or random labels (BiSeNet: ``sem_seg [h, w]``)."""
    from detectron2.structures import BitMasks, Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    masks, classes = random_instances(batch, num_instances, h, w, seed=seed)
    out = []
    for m, c in zip(masks, classes):
        img = torch.randint(0, 255, (3, h, w), dtype=torch.uint8, generator=g)
        if cfg.MODEL.META_ARCHITECTURE == "SOLO":
            inst = Instances((h, w))
            inst.gt_masks = BitMasks(m)
            inst.gt_classes = c % cfg.MODEL.SOLO.NUM_CLASSES
            inst.gt_boxes = Boxes(masks_to_boxes(m))
            out.append({"image": img, "instances": inst})
        else:
            sem = torch.randint(0, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, (h, w), generator=g)
            out.append({"image": img, "sem_seg": sem})
    return out


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


def recipe_configs():
    """Paths of the recipe configs (not the bases, synthetic or converted-checkpoint configs)."""
    configs = sorted(glob.glob(os.path.join(REPO, "configs", "*", "*.yaml")))
    return [c for c in configs if not os.path.basename(c).startswith("Base")
            and os.sep + "Synthetic" + os.sep not in c and os.sep + "Converted" + os.sep not in c]


def bench_training(quick):
    configs = recipe_configs()
    if quick:
        configs = [os.path.join(REPO, "configs/SOLOv2/Light448_R18_3x.yaml")]
    h, w = (64, 96) if quick else (256, 320)
    rows = []
    for config in configs:
        cmd = [sys.executable, os.path.abspath(__file__), "--train-child", f"{config},{h},{w},{1 if quick else 2}"]
        print(f"  training {os.path.relpath(config, REPO)} ...", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        name = os.path.relpath(config, os.path.join(REPO, "configs"))
        if proc.returncode != 0:
            rows.append((f"train step {name}", "failed", proc.stderr.strip().splitlines()[-1][:120], ""))
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append((f"train step {name}, batch 2, {h}x{w}, CPU fp32", f"{r['step_s']:.2f} s/step",
                     f"peak RSS {r['peak_mib']:.0f} MiB (+{r['delta_mib']:.0f} MiB above the model during a step)", ""))
    return rows, {}


NOTES = """## Notes

- Every ratio compares two implementations measured in the same run (median of repeats after a
  warm-up, the two interleaved where the machine's load drifts). The absolute times depend on
  the machine and its load; the ratios are what to compare. The project's build machine is a
  2-core CPU shared with other jobs, so the published run uses one torch thread.
- Baselines, each checked by `tests/test_benchmark_baselines.py` to compute the same result as
  solo_d2 on small cases:
  - post-processing: AdelaiDet's SOLOv2 `inference_single_image` (masks of every candidate above
    the score threshold by one 1x1 conv over all candidate kernels, area filter, maskness, sort,
    top `nms_pre`, Matrix NMS with one IoU matmul, top `max_per_img`, upsampling of the kept
    masks). The head outputs are synthetic but shaped like SOLOv2 R50's at 800x1216 (256 mask
    feature channels, grids 40/36/24/16/12) with object-like masks, so that the kept masks and
    the NMS work are realistic; the "same output" flag compares masks exactly and scores to 1e-6.
  - target assignment: AdelaiDet's `get_ground_truth_single` loops (per image, level, instance
    and claimed cell, a new uint8 target per cell, made float as its loss does).
  - paste: solo_d2's previous paste (chunks of 32 masks resized in float at the output size).
- solo_d2's post-processing computes each distinct candidate cell's mask once (one matmul per
  level, written in place), area and maskness in one fused pass, Matrix NMS IoUs per block of
  classes, and pastes each kept mask only around its foreground (same pixels as resizing the
  whole mask, see `_paste_boxes`) when the output size is the input size; otherwise whole
  masks in chunks bounded to ~0.4x the boolean output.
- Paste memory is the resident-set high-water mark above the memory in use before the call
  (Linux `VmHWM`, reset through `/proc/self/clear_refs`); "kept bool masks" is K x H x W bytes.
- Target assignment returns compact mask targets: each instance mask resized once per mask
  size (bool) and a row index per (cell, instance) target; the dice loss reads them through the
  index (`indexed_dice_loss`, bit-identical to the dense loss), so the "targets + dice loss"
  row compares the whole work against the loops plus AdelaiDet's dice on float targets. With
  annotation boxes, masks are read in windows around the boxes after one integer pass over all
  masks (row counts; it also proves every window holds its whole mask); that pass is the
  floor reported under the row. The random instances here are discs of radius up to a third of
  the image height: the windows hold 7.8% of the pixels (3.0 of 38.9 MB), and the stacks they
  are grouped into (windows of both images together, padded to a common size per stack) 15%.
  What is left besides the pass is copying the windows into the stacks, their column counts and
  resizing, and the rest of about 390 tensor operations per call (top-level operations in the
  torch profiler, 500 before e0b1627 and 3f25ac2; most are small: 120 are the views and copies
  of the 40 windows), which a
  second thread does not speed up; the loops gain more from it. Replacing one part at a time by
  its precomputed result (2 threads, medians of 25 interleaved calls of 11.6 ms) saved about 4.1
  ms for the pass, 3.1 ms for copying the windows (strided reads), 0.8 ms for the column counts
  and 1.9 ms for resizing and placing the windows; with all four replaced, 3.1 ms remained (the
  small operations, and in this experiment a copy of the precomputed windows). The ratio moves
  with the shared machine's state more than either time does: the same code measured 17.4x and
  20.9x with 2 threads in runs minutes apart (loops 119 and 187 ms, solo_d2 6.9 and 8.9 ms: the
  loops gained 1.57x from the faster moment, solo_d2 1.29x). Tried without gain: full-width row
  bands instead of windows (contiguous, but 2.8x the bytes: 1.6x slower); the row pass and the
  gather a few masks at a time, the row pass before the gather, or gathering, counting and
  resizing in chunks of 0.25 to 1 MB of windows so that they stay in cache (same time or
  slower); less padding per stack (more stacks, same time); windows gathered at their own size
  into zeroed stacks (half the bytes read, same time); windows grouped by width only with their
  heights concatenated (3.6 MB instead of 6.0, but the per-window column sums by `index_add_`
  cost more: 1.3x slower); gathering by `index_select` over a sliding-row view (5x slower);
  comparing each window's counts straight into its place in the output (same time); and, at
  7082d18 (2 threads, interleaved in one process): the window bounds of all boxes in one float64
  tensor computation instead of Python arithmetic per box, with the byte lanes of both images'
  row sums folded together (0.99-1.03x the time, 6 rounds of 40 calls of 12 ms); the areas from
  sums of 200-row blocks instead of row sums (1.3x slower: 3.5 against 2.7 ms for both images);
  windows gathered as int64 words instead of bool (not faster); the column counts from the
  resize's row pairs plus the other pair of rows, instead of a reduction over all rows (1.2x
  slower for the largest stack: 2.0 against 1.7 ms); gathering the windows by advanced indexing
  of an overlapping (sliding-window) view of the masks, as bool or int64 words (slower); placing
  the resized windows by one index assignment per stack into such a view of the output (0.10
  against 0.23 ms, about 2% of the call; not taken: it writes through a view whose elements
  overlap, which PyTorch does not promise to support) or through flat indices (3-4x slower).
  At 3f25ac2 (2 threads, interleaved in one process, identical outputs asserted): each window's
  column counts and resized copy computed straight from its strided view of the masks, without
  stacks or gather (7.5 against 7.0 ms for that part: the stacks' few large operations win);
  the gather moved after the row pass, so that windows come from cache (0.99x); stacks padded up
  to 1.5x or 3x their windows' area instead of 2x (1.01x and 0.86x); the resize's sample counts
  added as bytes instead of int32 words (0.98 against 0.63 ms). The row pass reads the 39 MB at
  about 12-16 GB/s; the gather reads the windows in pieces of 496 of each 1216-byte row, and
  took 1.7-2.5 ms within the call (line profiler) against 0.55 ms with the windows in cache.
- Training rows: batch 2 of random 256x320 images with 4 random instances (SOLO family) or
  random labels (BiSeNet), one torch thread, one warm-up step, median of 2 steps, each config
  in its own process. 800x1216 with R50 on this CPU is too slow for a routine run; these rows
  show relative cost and memory, not production figures.
- CUDA sections (`tools/benchmark_cuda.py`, run only where CUDA is available): medians with a
  device synchronize after each call. Post-processing outputs are compared with cuDNN's TF32 off
  (by default cuDNN runs the AdelaiDet algorithm's `F.conv2d` dynamic conv in TF32, while
  solo_d2's `torch.mm` is float32, so their masks differ at the threshold) and timed with the
  defaults. On GPUs solo_d2 pastes whole masks in chunks and computes Matrix NMS IoUs with one
  matmul: the per-mask paste around each box and the per-class IoU blocks, which save work on
  the CPU, cost more in kernel launches than they save on a GPU. `cuda_training` trains each
  recipe config at batch 2 (800x1216, BiSeNet at its crop size, 8 random instances) through
  detectron2's SimpleTrainer (fp32) and AMPTrainer (AMP) with the recipe's optimizer and
  reports `torch.cuda.max_memory_allocated` during the timed steps.
- BiSeNet rows compare the same modules with in-place ReLUs (the default now) and with every
  `nn.ReLU` switched to out-of-place, interleaved, outputs checked identical.
"""


def goals(results):
    """Issue 10 / 12 goals with a verdict computed from this run's figures."""
    lines = []

    def verdict(ok):
        return "**met**" if ok else "**not met**"

    post = {k: v for k, v in results.items() if k.startswith("post_")}
    if post:
        ratios = {k[5:]: ref / ours for k, (ours, ref) in post.items()}
        lines.append(f"- Post-processing at most half the AdelaiDet algorithm's time: {verdict(min(ratios.values()) >= 2)} "
                     f"({', '.join(f'{n} candidates: {r:.2f}x faster' for n, r in ratios.items())}).")
        first = min(post, key=lambda k: int(k[5:]))
        frac = post[first][0] / results["backbone_s"]
        lines.append(f"- Post-processing at most 20% of backbone+FPN time at {first[5:]} candidates: "
                     f"{verdict(frac <= 0.2)} ({frac:.0%}).")
    if "paste_peak_ratio" in results:
        r = results["paste_peak_ratio"]
        lines.append(f"- Paste peak memory within ~1.5x the kept boolean masks: {verdict(r <= 1.5)} ({r:.2f}x).")
    if "targets_speedup_1" in results:
        r1, r2 = results["targets_speedup_1"], results["targets_speedup_2"]
        lines.append(f"- Target assignment at least 20x faster than the loops: {verdict(min(r1, r2) >= 20)} "
                     f"({r1:.2f}x with 1 thread, {r2:.2f}x with 2 threads as in the issue, medians of the "
                     f"rounds' ratios; rounds with 2 threads: {results['targets_rounds_2'][0]:.1f}-"
                     f"{results['targets_rounds_2'][-1]:.1f}x; one integer pass over "
                     f"all masks, which exactness needs, is {results['targets_pass_s_1'] / results['targets_vec_s_1']:.0%} "
                     f"of solo_d2's time with 1 thread). With the dice loss forward and backward: "
                     f"{results['targets_loss_speedup']:.1f}x. Linear in instances: "
                     f"{results['slope_s'] * 1e3:.2f} ms per instance per image.")
    bis = {k: v for k, v in results.items() if k.startswith("BiSeNet")}
    if bis:
        lines.append("- BiSeNet in-place activations: " + ", ".join(f"{k} {v:.2f}x" for k, v in bis.items())
                     + " (out-of-place time / in-place time; 1.00x = no measurable difference).")
    train = results.get("cuda_train")
    if train:
        failed = results.get("cuda_train_failed", [])
        finite = all(v[4] for v in train.values())
        speed = [v[0] / v[1] for v in train.values()]
        memory = [v[2] / v[3] for v in train.values() if v[3]] or [float("nan")]
        lines.append(f"- Training on GPU (fp32 and AMP): {verdict(not failed and finite)} "
                     f"({len(train)} recipe configs trained in fp32 and AMP through detectron2's SimpleTrainer / "
                     f"AMPTrainer{', ' + str(len(failed)) + ' failed' if failed else ''}, "
                     f"{'all losses finite' if finite else 'NON-FINITE losses'}; AMP {min(speed):.2f}-{max(speed):.2f}x "
                     f"the fp32 speed, {min(memory):.2f}-{max(memory):.2f}x less peak memory).")
    return lines


def bench_cuda_training(quick):
    from tools.benchmark_cuda import bench_cuda_training as run

    return run(quick)


def bench_cuda_inference(quick):
    from tools.benchmark_cuda import bench_cuda_inference as run

    return run(quick)


SECTIONS = {
    "postprocess": bench_postprocess,
    "nms": bench_nms,
    "paste": bench_paste,
    "targets": bench_targets,
    "bisenet": bench_bisenet,
    "training": bench_training,
    "cuda_inference": bench_cuda_inference,  # tools/benchmark_cuda.py; only where CUDA is available
    "cuda_training": bench_cuda_training,
}
CUDA_SECTIONS = ("cuda_inference", "cuda_training")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, a smoke run of every section")
    ap.add_argument("--write", help="write the markdown tables to this file")
    ap.add_argument("--only", nargs="+", choices=sorted(SECTIONS))
    ap.add_argument("--train-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
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


def render(header, goal_lines, rows, quick):
    """The markdown of one run."""
    out = [f"# Benchmarks\n\nGenerated by `python tools/benchmark.py --write docs/BENCHMARKS.md`"
           f"{' --quick' if quick else ''}.\n\n{header}\n\n",
           "## Goals (issues 10 and 12), from this run\n\n" + "\n".join(goal_lines) + "\n\n"]
    for name, section_rows in rows:
        out.append(f"## {name}\n\n| what | solo_d2 | baseline | ratio |\n|---|---|---|---|\n")
        out.extend("| " + " | ".join(row) + " |\n" for row in section_rows)
        out.append("\n")
    out.append(NOTES)
    return "".join(out)


def _sections(text):
    """``{title: body}`` of the ``## `` sections of a markdown text, and the text before them."""
    parts = text.split("\n## ")
    return parts[0], {p.split("\n", 1)[0]: p for p in parts[1:]}


def merge(old, new, header):
    """``old`` with the sections (and goal lines) of the partial run ``new`` put in; the other
    sections keep their figures, and the header says which machine ran which sections."""
    _, old_secs = _sections(old)
    new_head, new_secs = _sections(new)
    goal_key = next((k for k in old_secs if k.startswith("Goals")), None)
    new_goal_key = next(k for k in new_secs if k.startswith("Goals"))
    merged = dict(old_secs)
    for k, v in new_secs.items():
        if k not in (new_goal_key, "Notes"):
            merged[k] = v
    if goal_key:  # a goal line is replaced by the new one on the same goal (text before ':')
        new_lines = {line.split(":", 1)[0]: line for line in new_secs[new_goal_key].splitlines() if line.startswith("- ")}
        lines = [new_lines.pop(line.split(":", 1)[0], line) if line.startswith("- ") else line
                 for line in old_secs[goal_key].splitlines()]
        merged[goal_key] = "\n".join(lines).rstrip("\n") + "\n" + "".join(v + "\n" for v in new_lines.values())
        merged[goal_key] = merged[goal_key].replace("from this run", "from the runs below", 1)
    ran = [k for k in new_secs if k not in (new_goal_key, "Notes")]
    head = new_head.rstrip("\n") + f"\n\nSections {', '.join(ran)} from this run; the others from an earlier run " \
        "(see git history of this file for its machine line).\n"
    if "Notes" in new_secs:
        merged["Notes"] = new_secs["Notes"]
    return head + "".join("\n## " + v for v in merged.values())

if __name__ == "__main__":
    main()
