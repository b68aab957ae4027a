#!/usr/bin/env python
"""`make demo`: train a small SOLOv2 and a small BiSeNet on CPU, evaluate, visualize.

Everything goes through the paths users run: ``tools/train_net.py`` (training with
progress/ETA, COCO and Cityscapes/SemSeg evaluation), ``tools/demo.py`` (DefaultPredictor
+ Visualizer on held-out images) and ``tools/plot_metrics.py``. Outputs land in
``--output`` (default ``output/demo``); the summary at the end names them.

The demo configs fix ``SEED``, so two runs on one machine print the same numbers. The
numbers also depend on the number of torch threads (it changes the order of float
reductions); ``--threads N`` fixes it for the training and demo processes (torch's default
is the machine's core count).
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# (name, config, metric keys to report, dataset whose held-out images are visualized)
JOBS = [
    (
        "solov2",
        "configs/Synthetic/SOLOv2_demo.yaml",
        ("segm/AP", "segm/AP50", "bbox/AP"),
        "synthetic_coco_val",
    ),
    (
        "bisenet",
        "configs/Synthetic/BiSeNetV1_demo.yaml",
        ("sem_seg/mIoU", "sem_seg/pACC", "cityscapes_sem_seg/IoU"),
        "synthetic_cityscapes_fine_sem_seg_val",
    ),
]


def run(cmd, env=None):
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, env=env)


def final_metrics(metrics_json, keys):
    found = {}
    with open(metrics_json) as f:
        for line in f:
            rec = json.loads(line)
            found.update({k: rec[k] for k in keys if k in rec})
    return found


def held_out_images(dataset, n):
    from detectron2.data import DatasetCatalog

    import solo_d2  # noqa: F401

    return [d["file_name"] for d in DatasetCatalog.get(dataset)[:n]]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--output", default=os.path.join(ROOT, "output", "demo"))
    ap.add_argument(
        "--num-images", type=int, default=4, help="held-out images to visualize per model"
    )
    ap.add_argument("--only", choices=[j[0] for j in JOBS], help="run one model only")
    ap.add_argument(
        "--threads",
        type=int,
        help="torch threads of the training and demo processes "
        "(OMP_NUM_THREADS; default: torch's, the machine's cores). The metrics depend on it",
    )
    args = ap.parse_args()
    if args.threads is not None and args.threads < 1:
        ap.error("--threads must be at least 1")
    env = None if args.threads is None else dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    py = sys.executable
    start = time.time()
    summary = []
    for name, config, keys, val_set in JOBS:
        if args.only and name != args.only:
            continue
        out = os.path.join(args.output, name)
        t0 = time.time()
        run(
            [
                py,
                "tools/train_net.py",
                "--config-file",
                config,
                "--num-gpus",
                "0",
                "OUTPUT_DIR",
                out,
            ],
            env,
        )
        train_s = time.time() - t0
        metrics = final_metrics(os.path.join(out, "metrics.json"), keys)
        run(
            [
                py,
                "tools/plot_metrics.py",
                os.path.join(out, "metrics.json"),
                "-o",
                os.path.join(out, "losses.png"),
            ]
        )
        vis_dir = os.path.join(out, "vis")
        run(
            [
                py,
                "tools/demo.py",
                "--config-file",
                config,
                "--output",
                vis_dir,
                "--input",
                *held_out_images(val_set, args.num_images),
                "--opts",
                "MODEL.WEIGHTS",
                os.path.join(out, "model_final.pth"),
            ],
            env,
        )
        summary.append(
            (
                name,
                config,
                train_s,
                metrics,
                vis_dir,
                sorted(glob.glob(os.path.join(vis_dir, "*.png"))),
            )
        )
    print("\n===== solo_d2 demo summary =====")
    for name, config, train_s, metrics, vis_dir, pngs in summary:
        scores = ", ".join(f"{k} = {v:.1f}" for k, v in metrics.items())
        print(f"{name:8s} {config}: trained + evaluated in {train_s:.0f} s; {scores}")
        print(f"         {len(pngs)} visualizations in {vis_dir}")
    print(f"output folder: {args.output}")
    print(f"demo took {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
