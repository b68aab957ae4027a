"""``tools/`` is a folder of scripts, not a package: with another top-level package named
``tools`` first on ``sys.path`` (detectron2 main's ``setup.py`` installs its ``tools/`` as
one) every script still starts and the test modules still import, because the code they
import lives in ``solo_d2`` or in the checkout's ``benchmarks/`` folder."""

import ast
import json
import os
import subprocess
import sys

from tests.helpers import REPO_ROOT

SCRIPTS = sorted(p.name for p in (REPO_ROOT / "tools").glob("*.py"))
# test modules that import what used to be in tools/ (and the benchmark package itself)
MODULES = [
    "tests.benchmarks.test_benchmark_baselines",
    "tests.modeling.test_autocast",
    "tests.test_cuda",
    "benchmarks.runner",
    "benchmarks.baselines",
    "benchmarks.cuda",
    "benchmarks.report",
]

# in one fresh process: `tools` must be the foreign package, then every script's --help
# (run as __main__ by runpy) and every module import
_CHECK = r"""
import contextlib, importlib, io, json, os, runpy, sys, traceback
import tools
out = {"tools": tools.__file__, "scripts": {}, "modules": {}}
scripts, modules = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for name in scripts:
    path = os.path.join("tools", name)
    buf = io.StringIO()
    try:
        sys.argv = [path, "--help"]
        with contextlib.redirect_stdout(buf):
            runpy.run_path(path, run_name="__main__")
        out["scripts"][name] = "returned without printing --help"
    except SystemExit as e:
        out["scripts"][name] = (
            "ok" if e.code in (0, None) and "usage:" in buf.getvalue()
            else "exit %r: %s" % (e.code, buf.getvalue()[-300:])
        )
    except BaseException:
        out["scripts"][name] = traceback.format_exc()[-1500:]
for name in modules:
    try:
        importlib.import_module(name)
        out["modules"][name] = "ok"
    except BaseException:
        out["modules"][name] = traceback.format_exc()[-1500:]
print(json.dumps(out))
"""


def _foreign_tools(tmp_path):
    """A top-level ``tools`` package whose only content fails loudly when imported from."""
    pkg = tmp_path / "shadow" / "tools"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        '"""Not solo_d2\'s tools (stands in for detectron2 main\'s)."""\n'
    )
    for name in ("benchmark_baselines", "benchmark_report", "benchmark_cuda", "benchmark"):
        (pkg / (name + ".py")).write_text(
            "raise ImportError('the foreign tools package was imported')\n"
        )
    return pkg


def test_no_module_imports_from_a_tools_package():
    """Static check of every Python file of the repository: nothing imports ``tools``."""
    offenders = []
    for path in [
        *REPO_ROOT.glob("solo_d2/**/*.py"),
        *REPO_ROOT.glob("tests/**/*.py"),
        *REPO_ROOT.glob("benchmarks/*.py"),
        *REPO_ROOT.glob("tools/*.py"),
        *REPO_ROOT.glob("datasets/*.py"),
    ]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            offenders += [
                "{}:{} {}".format(path.relative_to(REPO_ROOT), node.lineno, n)
                for n in names
                if n == "tools" or n.startswith("tools.")
            ]
    assert not offenders, offenders
    assert not (REPO_ROOT / "tools" / "__init__.py").exists()


def test_scripts_and_test_modules_work_with_a_foreign_tools_package_first(tmp_path):
    pkg = _foreign_tools(tmp_path)
    path = os.environ.get("PYTHONPATH")
    env = dict(
        os.environ,
        PYTHONPATH=str(pkg.parent) + (os.pathsep + path if path else ""),
        OMP_NUM_THREADS="1",
    )
    proc = subprocess.run(
        [sys.executable, "-c", _CHECK, json.dumps(SCRIPTS), json.dumps(MODULES)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["tools"] == str(
        pkg / "__init__.py"
    )  # the foreign package is the one `import tools` finds
    assert len(out["scripts"]) == len(SCRIPTS) >= 12
    assert {k: v for k, v in out["scripts"].items() if v != "ok"} == {}
    assert {k: v for k, v in out["modules"].items() if v != "ok"} == {}
