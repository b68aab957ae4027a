#!/usr/bin/env python
"""Import structure of the solo_d2 package, read from its source with ``ast`` (nothing is
imported): the circles among its modules and the imports made inside functions.

    python tools/check_imports.py [--package solo_d2] [--allow-local NAME ...]

Every ``import`` and ``from ... import`` of a ``solo_d2`` module is an edge (inside functions
too, since such an import only defers a circle); ``from pkg import name`` is an edge to the
module ``pkg.name`` when that is a module, else to ``pkg`` (its ``__init__``). A package's
``__init__`` is not implied by importing one of its modules. Exits 1 when there is a circle,
or an import inside a function of a module that is neither optional (``--allow-local``,
default: the optional dependencies) nor a ``solo_d2`` module.
"""

import argparse
import ast
import os
import sys
from typing import Dict, List, Set, Tuple

OPTIONAL = (
    "onnx",
    "onnxruntime",
    "panopticapi",
    "cityscapesscripts",
    "cv2",
    "scipy",
    "shapely",
    "pycocotools",
    "tensorboard",
    "matplotlib",
    "hypothesis",
    "detectron2._C",
)


def modules(root: str, package: str) -> Dict[str, str]:
    """``{module name: file}`` of every ``.py`` file of ``package`` under ``root``."""
    out = {}
    base = os.path.join(root, package)
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__pycache__")))
        for f in sorted(filenames):
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, f), root)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                out[".".join(rel)] = os.path.join(dirpath, f)
    return out


def _resolve(mod: str, is_pkg: bool, level: int, name: str) -> str:
    parts = mod.split(".") if is_pkg else mod.split(".")[:-1]
    if level > 1:
        parts = parts[: len(parts) - (level - 1)]
    return ".".join(parts + ([name] if name else []))


def imports(
    mods: Dict[str, str], package: str
) -> Tuple[Dict[str, Set[str]], List[Tuple[str, int, str]]]:
    """The edges among ``mods`` and the imports inside functions ``(file, line, module)``."""
    edges: Dict[str, Set[str]] = {m: set() for m in mods}
    local: List[Tuple[str, int, str]] = []
    for mod, path in mods.items():
        is_pkg = path.endswith("__init__.py")
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        func_nodes = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                func_nodes.update(id(n) for n in ast.walk(node) if n is not node)
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = (
                    _resolve(mod, is_pkg, node.level, node.module or "")
                    if node.level
                    else (node.module or "")
                )
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names
                ]
            for t in targets:
                if t.split(".")[0] == package:
                    while t not in mods and "." in t:  # `import pkg.mod.attr` forms
                        t = t.rsplit(".", 1)[0]
                    if t in mods and t != mod:
                        edges[mod].add(t)
                if id(node) in func_nodes:
                    local.append((path, node.lineno, t))
    return edges, local


def circles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap.add_argument("--package", default="solo_d2")
    ap.add_argument(
        "--allow-local",
        nargs="*",
        default=list(OPTIONAL),
        help="modules that may be imported inside functions",
    )
    args = ap.parse_args(argv)
    mods = modules(args.root, args.package)
    edges, local = imports(mods, args.package)
    found = circles(edges)
    for comp in found:
        print("import circle: " + " <-> ".join(comp))
    bad = [
        (p, n, t)
        for p, n, t in local
        if not any(t == a or t.startswith(a + ".") for a in args.allow_local)
        and t.split(".")[0] != args.package
    ]
    ours = [(p, n, t) for p, n, t in local if t.split(".")[0] == args.package]
    for p, n, t in ours + bad:
        print(f"import inside a function: {os.path.relpath(p, args.root)}:{n}: {t}")
    print(
        f"{len(mods)} modules, {sum(len(e) for e in edges.values())} imports among them, "
        f"{len(found)} circles, {len(ours) + len(bad)} imports inside functions not allowed"
    )
    return 1 if found or ours or bad else 0


if __name__ == "__main__":
    sys.exit(main())
