"""The markdown report of the benchmarks (``tools/benchmark.py``): the goals of issues 10 and
12 with a verdict from the run's figures, the tables, the notes, and the merge of a partial run
(``--only``) into an earlier report."""

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
  At 11d9fd9 (2 threads, one process): reading whole masks, no windows, in chunks of 2, 5 or 10
  instances (row counts, column counts and resize per chunk, so that the second and third reads
  come from the 32 MB L3 cache) took 9.3-13.7 ms for those parts alone, about the time of the
  whole `solo_targets` call (10.9-11.9 ms in the same run); the whole-mask column counts (3.6-3.7 ms)
  and resize (4.5-4.7 ms, both images) cost more in arithmetic than the windows save in reads.
- Training rows: batch 2 of random 256x320 images with 4 random instances (SOLO family) or
  random labels (BiSeNet), one torch thread, one warm-up step, median of 2 steps, each config
  in its own process. 800x1216 with R50 on this CPU is too slow for a routine run; these rows
  show relative cost and memory, not production figures.
- CUDA sections (`solo_d2/benchmark/cuda.py`, run only where CUDA is available): medians with a
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
