#!/usr/bin/env python
"""solo_d2 benchmarks, every comparison a ratio of medians measured in the same run (the
code is :mod:`benchmarks`; sections and baselines in ``benchmarks/runner.py``).

    python tools/benchmark.py [--quick] [--only SECTION ...] [--write docs/BENCHMARKS.md]
"""

import os
import sys

# a checkout's solo_d2 first (this directory, tools/, is a folder of scripts, not a package)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.runner import main  # noqa: E402

if __name__ == "__main__":
    main()
