"""Helpers shared by the benchmark sections (:mod:`.runner`, :mod:`.cuda`): timing, formatting
and the recipe configs."""

import glob
import os
import statistics
import time

from solo_d2.model_zoo import configs_root


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


def configs_dir():
    """solo_d2's ``configs/`` (of the checkout, or shipped in the installed package)."""
    return str(configs_root())


def recipe_configs():
    """Paths of the recipe configs (not the bases, synthetic or converted-checkpoint configs)."""
    configs = sorted(glob.glob(os.path.join(configs_dir(), "*", "*.yaml")))
    return [
        c
        for c in configs
        if not os.path.basename(c).startswith("Base")
        and os.sep + "Synthetic" + os.sep not in c
        and os.sep + "Converted" + os.sep not in c
    ]
