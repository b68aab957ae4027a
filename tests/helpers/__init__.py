"""Helpers shared by the tests: the repository's paths and running its scripts.

Importing this package imports neither solo_d2 nor detectron2 (``tests/conftest.py`` uses it
before it sets ``DETECTRON2_DATASETS``); the heavier helpers are its modules: ``parity_utils``
and ``parity_solo`` (the parity fixtures), ``checkpoint_shapes`` (reference state-dict layouts),
``models``, and the distributed workers ``dist_workers`` and ``dist_solo_workers``.
"""

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT / "tests" / "data"  # the parity fixtures (tests/data/README.md)
CONVERTER = REPO_ROOT / "tools" / "convert_checkpoint.py"


def run_tool(*args, timeout=600, **env):
    """``python *args`` in the repository root (a script of ``tools/`` and its arguments), with
    the environment variables ``env`` set."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **env)
    return subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def run_converter(source, src, out, *extra, timeout=600):
    """``tools/convert_checkpoint.py --from source src out *extra`` on one thread."""
    return run_tool(
        CONVERTER, "--from", source, src, out, *extra, timeout=timeout, OMP_NUM_THREADS="1"
    )
