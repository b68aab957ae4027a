"""The markdown report of the benchmarks (``tools/benchmark.py``): the goals of issues 10, 12
and 29 with a verdict from the run's figures, the tables, the notes, and the merge of a partial
run (``--only``) into an earlier report."""

NOTES = """## Notes

- Every ratio compares two implementations measured in the same run (median of repeats after a
  warm-up, the two interleaved where the machine's load drifts). The absolute times depend on
  the machine and its load; the ratios are what to compare. The project's build machine is a
  2-core CPU shared with other jobs, so the published run uses one torch thread.
- Baselines: every ratio that names AdelaiDet compares with AdelaiDet's own code
  (`adet/modeling/solov2/{utils,loss,solov2}.py` and its config defaults), loaded at run time
  from the checkout that `ADELAIDET_ROOT` names by `benchmarks/adelaidet_port.py` (never
  copied into this repository; without the variable those columns say "not measured").
  `--quick` runs (CI, no checkout) use re-implementations in `benchmarks/baselines.py`,
  which `tests/benchmarks/test_benchmark_baselines.py` checks equal to the port (when
  `ADELAIDET_ROOT` is set) and to solo_d2:
  - post-processing: the port's `point_nms` of the sigmoid per level, as its `forward` does, then
    its `SOLOv2.inference` (`inference_single_image`: masks of every candidate above the score
    threshold by one 1x1 conv over all candidate kernels, area filter, maskness, sort, top
    `nms_pre`, Matrix NMS with one IoU matmul, top `max_per_img`, upsampling of the kept masks).
    The head outputs are synthetic but shaped like SOLOv2 R50's at 800x1216 (256 mask feature
    channels, grids 40/36/24/16/12) with object-like masks, so that the kept masks and the NMS
    work are realistic; the "same output" flag compares masks exactly and scores to 1e-6.
  - Matrix NMS: the port's `matrix_nms` (gaussian, sigma 2).
  - target assignment: the port's `get_ground_truth` (per image `get_ground_truth_single`: loops
    per level, instance and claimed cell, a new uint8 target per cell; masks resized by cv2 on
    the host); with the dice loss: its targets concatenated per level as its `loss` does, then
    its `dice_loss`. Its target rule (unpadded masks resized by cv2) is not solo_d2's recipe
    rule, so the two may make a few different mask targets (the row says so when the counts
    differ).
  - paste: solo_d2's previous paste (chunks of 32 masks resized in float at the output size).
- Op and sync counts (section `counts`): `benchmarks/counting.py`'s `OpCounter`, a
  `TorchDispatchMode` that counts the ATen operations that launch a kernel on a GPU (views,
  metadata, allocations and operations with empty outputs launch none) and the operations that
  make the host wait for the device (`nonzero`, `.item()`/`int()`/`float()`/`bool()`, bool-mask
  indexing, `unique`, `bincount`, `repeat_interleave` without `output_size`, `.tolist()`,
  `.cpu()`, copies of host data to the device, indexing with a Python list); its docstring gives
  every rule. Counts are exact: each is taken twice after a warm-up call and must agree. Both
  models are built on the CPU in float32, eval mode: the port's own `SOLOv2` of its
  `configs/SOLOv2/R50_3x.yaml` (its initialization under `torch.manual_seed(0)`) and solo_d2's
  `configs/SOLOv2/R50_3x.yaml` with those weights converted by the `adelaidet-solov2` converter
  of `tools/convert_checkpoint.py` (their head outputs are identical). Post-processing rows
  start from head outputs made as in the `postprocess` section (two of them with 8 objects and
  scores 0.12-0.3, so that fewer detections are kept); whole-model inference starts from a
  uint8 image on the host (one host-to-device copy each), with the category bias of both models
  shifted so that about 300 candidates pass the score threshold (random weights put every score
  near the prior, 0.01); training rows count targets, losses and backward from head outputs
  that require gradients, ground truth already on the device: the port's `get_ground_truth` +
  `loss`, solo_d2's `SOLO.losses` with the recipe's target rule. The port's focal loss is
  fvcore's TorchScript `sigmoid_focal_loss_jit`, counted op by op as the CPU runs it (a GPU's
  TorchScript fuser may merge some of its elementwise kernels).
- Paste memory is the resident-set high-water mark above the memory in use before the call
  (Linux `VmHWM`, reset through `/proc/self/clear_refs`); "kept bool masks" is K x H x W bytes.
- Target assignment returns compact mask targets: each instance mask resized once per mask
  size (bool) and a row index per (cell, instance) target; the dice loss reads them through the
  index (`indexed_dice_loss`, bit-identical to the dense loss), so the "targets + dice loss"
  row compares the whole work against the loops plus AdelaiDet's dice on float targets. The
  rest of this note records the measurements of the target assignment before issue 29 (up to
  6333609, `mask_geometry.py`, since removed): with annotation boxes, masks were read in
  windows around the boxes after one integer pass over all masks (row counts; it also proved
  every window held its whole mask); that pass was the floor reported under the row. The
  random instances here are discs of radius up to a third of the image height: the windows hold \
7.8% of the pixels (3.0 of 38.9 MB), and the stacks they
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
  At 11d9fd9 (2 threads, one process): reading whole masks, no windows, in chunks of 2, 5 or 10
  instances (row counts, column counts and resize per chunk, so that the second and third reads
  come from the 32 MB L3 cache) took 9.3-13.7 ms for those parts alone, about the time of the
  whole `solo_targets` call (10.9-11.9 ms in the same run); the whole-mask column counts \
(3.6-3.7 ms)
  and resize (4.5-4.7 ms, both images) cost more in arithmetic than the windows save in reads.
- Training rows: batch 2 of random 256x320 images with 4 random instances (SOLO family) or
  random labels (BiSeNet), one torch thread, one warm-up step, median of 2 steps, each config
  in its own process. 800x1216 with R50 on this CPU is too slow for a routine run; these rows
  show relative cost and memory, not production figures.
- CUDA sections (`benchmarks/cuda.py`, run only where CUDA is available): medians with a
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


# column titles of the sections' tables (None: every other section)
HEADERS = {
    None: ("what", "solo_d2", "baseline", "ratio"),
    "counts": (
        "per image / step",
        "solo_d2",
        "AdelaiDet port (its own `adet/modeling/solov2`)",
        "solo_d2 / port",
    ),
}


def goals(results):
    """Issue 10 / 12 / 29 goals with a verdict computed from this run's figures."""
    lines = []

    def verdict(ok):
        return "**met**" if ok else "**not met**"

    post = {k: v for k, v in results.items() if k.startswith("post_")}
    if post:
        ratios = {k[5:]: ref / ours for k, (ours, ref) in post.items()}
        lines.append(
            "- Post-processing at most half the AdelaiDet algorithm's time: "
            f"{verdict(min(ratios.values()) >= 2)} "
            f"({', '.join(f'{n} candidates: {r:.2f}x faster' for n, r in ratios.items())})."
        )
        first = min(post, key=lambda k: int(k[5:]))
        frac = post[first][0] / results["backbone_s"]
        lines.append(
            f"- Post-processing at most 20% of backbone+FPN time at {first[5:]} candidates: "
            f"{verdict(frac <= 0.2)} ({frac:.0%})."
        )
    if "paste_peak_ratio" in results:
        r = results["paste_peak_ratio"]
        lines.append(
            "- Paste peak memory within ~1.5x the kept boolean masks: "
            f"{verdict(r <= 1.5)} ({r:.2f}x)."
        )
    if "targets_speedup_1" in results:
        r1, r2 = results["targets_speedup_1"], results["targets_speedup_2"]
        lines.append(
            f"- Target assignment at least 20x faster than the loops: {verdict(min(r1, r2) >= 20)} "
            f"({r1:.2f}x with 1 thread, {r2:.2f}x with 2 threads as in the issue, medians of the "
            f"rounds' ratios; rounds with 2 threads: {results['targets_rounds_2'][0]:.1f}-"
            f"{results['targets_rounds_2'][-1]:.1f}x). With the dice loss forward and backward: "
            f"{results['targets_loss_speedup']:.1f}x. Linear in instances: "
            f"{results['slope_s'] * 1e3:.2f} ms per instance per image."
        )
    post = {k[len("count_post_") :]: v for k, v in results.items() if k.startswith("count_post_")}
    if post:  # (solo_d2 ops, syncs, port ops, syncs)
        ok = (
            all(o <= po and s <= 4 for o, s, po, _ in post.values())
            and len({v[1] for v in post.values()}) == 1
        )
        lines.append(
            "- Post-processing at most the port's kernel ops and at most 4 syncs per image, the "
            f"same syncs for every number of candidates (issue 29): {verdict(ok)} ("
            + "; ".join(
                f"{k}: {o} ops against {po}, {s} syncs against {ps}"
                for k, (o, s, po, ps) in post.items()
            )
            + ")."
        )
    if "count_model" in results:
        o, s, po, ps = results["count_model"]
        lines.append(
            "- Whole-model inference in fewer kernel ops than the port (issue 29): "
            f"{verdict(o < po)} ({o} ops against {po}, {s} syncs against {ps})."
        )
    train = {
        k[len("count_train_") :]: v for k, v in results.items() if k.startswith("count_train_")
    }
    if train:
        syncs = {v[1] for v in train.values()}
        lines.append(
            f"- Training step syncs constant in the number of instances and at most 20 (issue 29): "
            f"{verdict(len(syncs) == 1 and max(syncs) <= 20)} ("
            + "; ".join(
                f"{k} instances per image: {s} syncs against the port's {ps}, {o} ops against {po}"
                for k, (o, s, po, ps) in train.items()
            )
            + ")."
        )
    bis = {k: v for k, v in results.items() if k.startswith("BiSeNet")}
    if bis:
        lines.append(
            "- BiSeNet in-place activations: "
            + ", ".join(f"{k} {v:.2f}x" for k, v in bis.items())
            + " (out-of-place time / in-place time; 1.00x = no measurable difference)."
        )
    train = results.get("cuda_train")
    if train:
        failed = results.get("cuda_train_failed", [])
        finite = all(v[4] for v in train.values())
        speed = [v[0] / v[1] for v in train.values()]
        memory = [v[2] / v[3] for v in train.values() if v[3]] or [float("nan")]
        lines.append(
            f"- Training on GPU (fp32 and AMP): {verdict(not failed and finite)} ({len(train)} "
            "recipe configs trained in fp32 and AMP through detectron2's SimpleTrainer / "
            f"AMPTrainer{', ' + str(len(failed)) + ' failed' if failed else ''}, "
            f"{'all losses finite' if finite else 'NON-FINITE losses'}; AMP "
            f"{min(speed):.2f}-{max(speed):.2f}x the fp32 speed, "
            f"{min(memory):.2f}-{max(memory):.2f}x less peak memory)."
        )
    return lines


def render(header, goal_lines, rows, quick):
    """The markdown of one run."""
    out = [
        f"# Benchmarks\n\nGenerated by `python tools/benchmark.py --write docs/BENCHMARKS.md`"
        f"{' --quick' if quick else ''}.\n\n{header}\n\n",
        "## Goals (issues 10, 12 and 29), from this run\n\n" + "\n".join(goal_lines) + "\n\n",
    ]
    for name, section_rows in rows:
        out.append(
            f"## {name}\n\n| {' | '.join(HEADERS.get(name, HEADERS[None]))} |\n|---|---|---|---|\n"
        )
        out.extend("| " + " | ".join(row) + " |\n" for row in section_rows)
        out.append("\n")
    out.append(NOTES)
    return "".join(out)


def _sections(text):
    """``{title: body}`` of the ``## `` sections of a markdown text, and the text before them."""
    parts = text.split("\n## ")
    return parts[0], {p.split("\n", 1)[0]: p for p in parts[1:]}


def merge(old, new, header, order=()):
    """``old`` with the sections (and goal lines) of the partial run ``new`` put in; the other
    sections keep their figures, and the head keeps its paragraphs and gains one on the machine
    (``header``) that ran the new sections. A section that ``old`` lacks goes after the last
    section of ``old`` that precedes it in ``order`` (the benchmark's sections in their order),
    else before the notes."""
    _, old_secs = _sections(old)
    new_head, new_secs = _sections(new)
    goal_key = next((k for k in old_secs if k.startswith("Goals")), None)
    new_goal_key = next(k for k in new_secs if k.startswith("Goals"))
    merged = dict(old_secs)
    for k, v in new_secs.items():
        if k in (new_goal_key, "Notes"):
            continue
        if k in merged:
            merged[k] = v
            continue
        before = (
            [s for s in list(order)[: list(order).index(k)] if s in merged] if k in order else []
        )
        keys = list(merged)
        at = (
            keys.index(before[-1]) + 1
            if before
            else (keys.index("Notes") if "Notes" in keys else len(keys))
        )
        merged = dict([*list(merged.items())[:at], (k, v), *list(merged.items())[at:]])
    if goal_key:  # a goal line is replaced by the new one on the same goal (text before ':')
        new_lines = {
            line.split(":", 1)[0]: line
            for line in new_secs[new_goal_key].splitlines()
            if line.startswith("- ")
        }
        lines = [
            new_lines.pop(line.split(":", 1)[0], line) if line.startswith("- ") else line
            for line in old_secs[goal_key].splitlines()
        ]
        merged[goal_key] = (
            "\n".join(lines).rstrip("\n") + "\n" + "".join(v + "\n" for v in new_lines.values())
        )
        merged[goal_key] = merged[goal_key].replace("from this run", "from the runs below", 1)
        # the goal section under the new run's title (the issues it names), in its place
        title = new_goal_key.replace("from this run", "from the runs below", 1)
        body = merged[goal_key].split("\n", 1)[1] if "\n" in merged[goal_key] else ""
        merged = {
            (title if k == goal_key else k): (title + "\n" + body if k == goal_key else v)
            for k, v in merged.items()
        }
    ran = [k for k in new_secs if k not in (new_goal_key, "Notes")]
    # the old head (its machine line and its paragraphs on which run made which sections), with
    # one paragraph for this run's sections in place of an earlier one on exactly those sections
    label = ("Section " if len(ran) == 1 else "Sections ") + ", ".join(ran) + ":"
    old_head = _sections(old)[0] if old_secs else new_head
    paras = [p for p in old_head.strip("\n").split("\n\n") if not p.startswith(label)]
    paras.append(
        f"{label} {header} (this run; the other sections from the runs above, see the git "
        "history of this file)."
    )
    head = "\n\n".join(paras) + "\n"
    if "Notes" in new_secs:
        merged["Notes"] = new_secs["Notes"]
    return head + "".join("\n## " + v for v in merged.values())
