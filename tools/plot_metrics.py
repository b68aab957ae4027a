#!/usr/bin/env python
"""Plot the loss curves of a detectron2 ``metrics.json`` into a PNG.

tools/plot_metrics.py output/solov2/metrics.json -o output/solov2/losses.png
"""

import argparse
import json
import os
import sys
from collections import defaultdict


def read_metrics(path):
    """Per-key lists of (iteration, value) for every ``loss*`` / ``total_loss`` entry."""
    curves = defaultdict(list)
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}:{n}: not a JSON line ({e})")
            if "iteration" not in rec:
                continue
            for k, v in rec.items():
                if k == "total_loss" or k.startswith("loss"):
                    curves[k].append((rec["iteration"], v))
    if not curves:
        raise SystemExit(f"{path} has no loss entries")
    return curves


def plot(curves, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for k in sorted(curves):
        it, val = zip(*curves[k])
        ax.plot(it, val, label=k, linewidth=2 if k == "total_loss" else 1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("metrics", help="metrics.json written by detectron2's JSONWriter")
    ap.add_argument("-o", "--output", help="PNG path (default: losses.png beside metrics.json)")
    args = ap.parse_args(argv)
    out = args.output or os.path.join(os.path.dirname(os.path.abspath(args.metrics)), "losses.png")
    plot(read_metrics(args.metrics), out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
