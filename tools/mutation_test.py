#!/usr/bin/env python
"""A small mutation tester: break one thing in a source file, run its tests, restore.

    python tools/mutation_test.py solo_d2/modeling/bisenet/loss.py \
        tests/modeling/test_bisenet_loss.py tests/modeling/test_bisenet_aux_weight.py \
        --max-mutants 60

Mutations (one at a time, on the AST, so comments and strings are never touched):
comparison swaps (< <=, > >=, == !=), arithmetic swaps (+ -, * /, // *), and/or,
True/False, numeric constants (n -> n + 1, 0 <-> 1, x -> -x for floats), ``not x`` -> ``x``,
and deleting a statement (replaced by ``pass``). Docstrings are skipped. A mutant is
*killed* when the tests fail (or time out), *survives* when they pass. The original file
is kept in a temporary copy and ALWAYS put back (also on Ctrl-C / errors, via
``try/finally`` and a signal handler); the copy's path is printed at start, and the copy
is kept when the file could not be restored (someone else edited it meanwhile).

Mutants are chosen deterministically (every mutation site, evenly thinned to
``--max-mutants``). The test command is
``python -m pytest -x -q -p no:xdist -p no:cacheprovider TESTS`` (``OMP_NUM_THREADS=1``).
Output: one line per mutant and a summary; ``--json`` writes the results.
"""

import argparse
import ast
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CMP_SWAP = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
_BIN_SWAP = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Mult,
    ast.Mod: ast.FloorDiv,
    ast.Pow: ast.Mult,
}


def _is_docstring(node, parent):
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        and parent is not None
        and getattr(parent, "body", [None])[0] is node
    )


def find_sites(tree):
    """All mutation sites: (index, description, lineno) in a deterministic order."""
    sites = []
    parents = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    for i, node in enumerate(ast.walk(tree)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Compare):
            for j, op in enumerate(node.ops):
                if type(op) in _CMP_SWAP:
                    sites.append(
                        (
                            i,
                            ("cmp", j),
                            line,
                            f"{type(op).__name__} -> {_CMP_SWAP[type(op)].__name__}",
                        )
                    )
        elif isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in _BIN_SWAP:
            sites.append(
                (
                    i,
                    ("bin",),
                    line,
                    f"{type(node.op).__name__} -> {_BIN_SWAP[type(node.op)].__name__}",
                )
            )
        elif isinstance(node, ast.BoolOp):
            sites.append((i, ("bool",), line, "and <-> or"))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            sites.append((i, ("not",), line, "not x -> x"))
        elif (
            isinstance(node, ast.Constant)
            and not isinstance(node.value, str)
            and node.value is not None
        ):
            if isinstance(parents.get(node), ast.Expr):
                continue
            if isinstance(node.value, bool):
                sites.append((i, ("const",), line, f"{node.value} -> {not node.value}"))
            elif isinstance(node.value, (int, float)):
                sites.append(
                    (i, ("const",), line, f"{node.value!r} -> {_mutate_number(node.value)!r}")
                )
        elif isinstance(node, ast.stmt) and not isinstance(
            node,
            (
                ast.FunctionDef,
                ast.ClassDef,
                ast.Import,
                ast.ImportFrom,
                ast.AsyncFunctionDef,
                ast.Pass,
            ),
        ):
            parent = parents.get(node)
            if _is_docstring(node, parent) or isinstance(parent, ast.Module):
                continue
            sites.append((i, ("del",), line, f"delete {type(node).__name__} statement"))
    return sites


def _mutate_number(v):
    if isinstance(v, bool):
        return not v
    if v == 0:
        return 1
    if v == 1:
        return 0 if isinstance(v, int) else 2.0
    if isinstance(v, float):
        return -v if v < 0 else v * 2
    return v + 1


def apply(tree, site):
    """A mutated copy of ``tree`` (module AST) at ``site``."""
    tree = copy.deepcopy(tree)
    index, kind = site[0], site[1]
    node = list(ast.walk(tree))[index]
    if kind[0] == "cmp":
        node.ops[kind[1]] = _CMP_SWAP[type(node.ops[kind[1]])]()
    elif kind[0] == "bin":
        node.op = _BIN_SWAP[type(node.op)]()
    elif kind[0] == "bool":
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif kind[0] == "not":
        for parent in ast.walk(tree):
            for field, value in ast.iter_fields(parent):
                if value is node:
                    setattr(parent, field, node.operand)
                elif isinstance(value, list) and node in value:
                    value[value.index(node)] = node.operand
    elif kind[0] == "const":
        node.value = _mutate_number(node.value)
    elif kind[0] == "del":
        for parent in ast.walk(tree):
            for field, value in ast.iter_fields(parent):
                if isinstance(value, list) and node in value:
                    value[value.index(node)] = ast.copy_location(ast.Pass(), node)
    return ast.fix_missing_locations(tree)


def thin(sites, n):
    if len(sites) <= n:
        return sites
    step = len(sites) / float(n)
    return [sites[int(k * step)] for k in range(n)]


def run_tests(tests, timeout):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-x",
        "-q",
        "-p",
        "no:xdist",
        "-p",
        "no:cacheprovider",
        *tests,
    ]
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return "killed (timeout)"
    if proc.returncode == 0:
        return "survived"
    if proc.returncode == 5 or "ERROR collecting" in proc.stdout:
        return "killed (import/collection error)"
    return "killed"


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("target", help="the source file to mutate")
    ap.add_argument(
        "tests", nargs="+", help="test files (or pytest node ids) that should kill the mutants"
    )
    ap.add_argument("--max-mutants", type=int, default=60)
    ap.add_argument(
        "--timeout", type=float, default=600, help="seconds per test run (a hang counts as killed)"
    )
    ap.add_argument("--lines", help="only mutate lines A-B of the target")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--list", action="store_true", help="only list the mutants")
    args = ap.parse_args(argv)

    target = os.path.abspath(args.target)
    source = open(target).read()
    tree = ast.parse(source)
    sites = find_sites(tree)
    if args.lines:
        lo, hi = (int(x) for x in args.lines.split("-"))
        sites = [s for s in sites if lo <= s[2] <= hi]
    sites = thin(sites, args.max_mutants)
    if args.list:
        for s in sites:
            print(f"line {s[2]}: {s[3]}")
        return 0

    backup_dir = tempfile.mkdtemp(prefix="solo_d2_mutation_")
    backup = os.path.join(backup_dir, os.path.basename(target))
    shutil.copy2(target, backup)
    print(f"backup of {args.target}: {backup}", flush=True)

    written = {"text": None}  # the mutant currently in the file

    def restore():
        current = open(target).read()
        if written["text"] is not None and current not in (written["text"], source):
            # someone else edited the file meanwhile: never overwrite their work
            sys.stderr.write(
                f"{args.target} changed during the run; not restoring (backup: {backup})\n"
            )
            raise SystemExit(3)
        if current != source:
            shutil.copy2(backup, target)
        written["text"] = None

    def on_signal(signum, frame):
        restore()
        print(f"\ninterrupted: {args.target} restored", file=sys.stderr)
        sys.exit(130)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    results = []
    start = time.time()
    try:
        baseline = run_tests(args.tests, args.timeout)
        if baseline != "survived":
            print(
                f"the tests fail on the unmutated file ({baseline}); fix that first",
                file=sys.stderr,
            )
            return 2
        for k, site in enumerate(sites):
            mutated = ast.unparse(apply(tree, site))
            if open(target).read() != source:
                print(f"{args.target} was edited by someone else; stopping", file=sys.stderr)
                break
            written["text"] = mutated
            with open(target, "w") as f:
                f.write(mutated)
            try:
                outcome = run_tests(args.tests, args.timeout)
            finally:
                restore()
            results.append({"line": site[2], "mutation": site[3], "outcome": outcome})
            print(f"[{k + 1}/{len(sites)}] line {site[2]}: {site[3]}: {outcome}", flush=True)
    finally:
        restore()
        for s, h in old.items():
            signal.signal(s, h)
        if open(target).read() == source:
            shutil.rmtree(backup_dir, ignore_errors=True)
    killed = sum(r["outcome"].startswith("killed") for r in results)
    print(
        f"\n{args.target}: {len(results)} mutants, {killed} killed, {len(results) - killed} "
        f"survived ({time.time() - start:.0f} s)"
    )
    for r in results:
        if r["outcome"] == "survived":
            print(f"  SURVIVED line {r['line']}: {r['mutation']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"target": args.target, "tests": args.tests, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
