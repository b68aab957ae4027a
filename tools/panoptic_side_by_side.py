#!/usr/bin/env python
"""Train panoptic models over several seeds with tools/train_net.py and print their PQ / SQ / RQ
(all, things, stuff) and training time as markdown (docs/PANOPTIC.md, docs/BENCHMARKS.md).

    # solo_d2's SOLOPanoptic against Detectron2's Panoptic FPN, 3 seeds, two runs at a time
    python tools/panoptic_side_by_side.py --out output/side_by_side --seeds 0 1 2 --jobs 2 \\
        --run solo_d2 configs/Synthetic/SOLOv2_panoptic_textured.yaml \\
        --run panoptic_fpn configs/Synthetic/PanopticFPN_R18_textured.yaml

    # the same, but re-evaluating trained weights with other merge settings (no training)
    python tools/panoptic_side_by_side.py --out output/side_by_side --seeds 0 1 2 \\
        --eval-only solo_d2 --run solo_d2_conf05 configs/Synthetic/SOLOv2_panoptic_textured.yaml \\
        MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH 0.5

``--run LABEL CONFIG [KEY VALUE ...]`` (repeatable) trains CONFIG with the overrides for each
seed (``SEED s``) into ``OUT/LABEL/seed_s``; a run whose directory already holds its results
is not redone, so a table can be extended run by run. Every run uses ``--threads`` threads
(default 1) and, with ``--jobs N``, up to N runs go at once, each pinned to its own cores
(``taskset``, where it exists), so runs are timed alike. Results are read from each run's
``metrics.json`` (the evaluation record, Detectron2's ``panoptic_seg/*``) and ``log.txt``
("Total training time").
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ["PQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"]
_TIME = re.compile(r"Total training time: (\d+):(\d\d):(\d\d)")


def read_result(run_dir):
    """``{"PQ": .., "PQ_th": .., ..., "train_s": .., "iters": ..}`` of a finished run (read from
    the "copypaste" lines Detectron2 logs after evaluating, ``log.txt``), else None."""
    try:
        with open(os.path.join(run_dir, "log.txt")) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    res = None
    for i, line in enumerate(lines[:-2]):
        if line.endswith("copypaste: Task: panoptic_seg"):
            names = lines[i + 1].split("copypaste: ")[-1].split(",")
            values = [float(v) for v in lines[i + 2].split("copypaste: ")[-1].split(",")]
            res = dict(zip(names, values))
    if res is None or any(k not in res for k in KEYS):
        return None
    times = _TIME.findall("\n".join(lines))
    res["train_s"] = None
    if times:
        h, m, s = map(int, times[-1])
        res["train_s"] = 3600 * h + 60 * m + s
    res["iters"] = "eval"
    try:
        with open(os.path.join(run_dir, "metrics.json")) as f:
            res["iters"] = max(json.loads(line).get("iteration", 0) for line in f if line.strip())
    except (OSError, ValueError):
        pass
    return res


def command(config, seed, run_dir, overrides, weights=None):
    cmd = [
        sys.executable,
        os.path.join(ROOT, "tools", "train_net.py"),
        "--config-file",
        config,
        "--num-gpus",
        "0",
    ]
    if weights:
        cmd += ["--eval-only"]
    cmd += ["SEED", str(seed), "OUTPUT_DIR", run_dir, *overrides]
    return cmd + (["MODEL.WEIGHTS", weights] if weights else [])


def run_all(jobs_list, jobs, threads):
    """Run ``(cmd, run_dir)`` pairs, ``jobs`` at a time, each on its own ``threads`` cores."""
    free = list(range(jobs))
    lock = threading.Condition()
    failures = []
    have_taskset = shutil.which("taskset") is not None

    def one(cmd, run_dir):
        with lock:
            lock.wait_for(lambda: free)
            slot = free.pop(0)
        try:
            env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
            cores = ",".join(str(slot * threads + i) for i in range(threads))
            full = (["taskset", "-c", cores] if have_taskset and jobs > 1 else []) + cmd
            os.makedirs(run_dir, exist_ok=True)
            print("running:", " ".join(full), flush=True)
            with open(os.path.join(run_dir, "stdout.txt"), "w") as out:
                rc = subprocess.call(full, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
            if rc != 0 or read_result(run_dir) is None:
                failures.append(f"{run_dir} (exit {rc}; see {run_dir}/stdout.txt)")
        finally:
            with lock:
                free.append(slot)
                lock.notify_all()

    workers = [threading.Thread(target=one, args=job) for job in jobs_list]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return failures


def summary(label, results):
    """A markdown row: mean ± standard deviation over seeds of each metric."""

    def fmt(values, digits=1):
        if len(values) == 1:
            return f"{values[0]:.{digits}f}"
        return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"

    cells = [fmt([r[k] for r in results]) for k in KEYS]
    times = [r["train_s"] / 60 for r in results if r["train_s"] is not None]
    cells.append(fmt(times) if times else "-")
    iters = sorted({r["iters"] for r in results})
    return f"| {label} | {len(results)} | {'/'.join(map(str, iters))} | " + " | ".join(cells) + " |"


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--run",
        nargs="+",
        action="append",
        required=True,
        metavar="LABEL CONFIG [KEY VALUE]",
        help="a model to train: label, config file, config overrides",
    )
    parser.add_argument(
        "--out", default="output/panoptic_side_by_side", help="runs go to OUT/LABEL/seed_S"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="runs at once")
    parser.add_argument("--threads", type=int, default=1, help="threads per run")
    parser.add_argument(
        "--eval-only",
        metavar="LABEL",
        help="no training: evaluate OUT/LABEL/seed_S/model_final.pth with each --run's settings",
    )
    parser.add_argument("--per-seed", action="store_true", help="also print one row per run")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train and evaluate nothing: print the table of the runs already in OUT",
    )
    args = parser.parse_args(argv)

    pending, table = [], []
    for spec in args.run:
        if len(spec) < 2 or len(spec) % 2:
            parser.error(f"--run {' '.join(spec)}: expected LABEL CONFIG and KEY VALUE pairs")
        label, config, overrides = spec[0], spec[1], spec[2:]
        if not os.path.isfile(config):
            parser.error(f"--run {label}: config file {config!r} does not exist")
        for seed in args.seeds:
            run_dir = os.path.join(args.out, label, f"seed_{seed}")
            weights = None
            if args.eval_only and not args.report_only:
                weights = os.path.join(args.out, args.eval_only, f"seed_{seed}", "model_final.pth")
                if not os.path.isfile(weights):
                    parser.error(
                        f"--eval-only {args.eval_only}: {weights} does not exist (train it first)"
                    )
            if read_result(run_dir) is None and not args.report_only:
                pending.append((command(config, seed, run_dir, overrides, weights), run_dir))
        table.append(label)
    failures = run_all(pending, args.jobs, args.threads)

    print(
        "| model | runs | iterations | PQ | things PQ | SQ | RQ | stuff PQ | "
        "SQ | RQ | training (min) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for label in table:
        results = [(s, read_result(os.path.join(args.out, label, f"seed_{s}"))) for s in args.seeds]
        done = [r for _, r in results if r is not None]
        if done:
            print(summary(label, done))
        if args.per_seed:
            for s, r in results:
                if r is not None:
                    print(summary(f"{label} seed {s}", [r]))
    for f in failures:
        print("FAILED:", f, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
