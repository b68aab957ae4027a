"""Imports run one way (no circle among solo_d2's modules, `tools/check_imports.py`), and
``import solo_d2.checkpoint`` alone registers every checkpoint converter."""

import ast
import os
import subprocess
import sys

from tests.helpers import REPO_ROOT

ROOT = str(REPO_ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

import check_imports  # noqa: E402


def test_no_import_circle_in_the_package():
    mods = check_imports.modules(ROOT, "solo_d2")
    edges, _ = check_imports.imports(mods, "solo_d2")
    assert "solo_d2.checkpoint.core" in edges and len(mods) > 50
    assert check_imports.circles(edges) == []
    assert check_imports.main([]) == 0  # and imports inside functions only of optional dependencies


def test_the_checker_finds_a_circle_and_imports_inside_functions(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text(
        "x = 1\n\ndef f():\n    from . import a\n    import onnx\n    import json\n"
    )
    (pkg / "c.py").write_text("from pkg import b\n")
    mods = check_imports.modules(str(tmp_path), "pkg")
    edges, local = check_imports.imports(mods, "pkg")
    assert edges["pkg.c"] == {"pkg.b"}
    assert check_imports.circles(edges) == [["pkg.a", "pkg.b"]]
    assert sorted(t for _, _, t in local) == ["json", "onnx", "pkg.a"]
    assert check_imports.main(["--root", str(tmp_path), "--package", "pkg"]) == 1


def test_importing_solo_d2_checkpoint_alone_registers_every_converter():
    code = "import solo_d2.checkpoint as c; print(','.join(sorted(c.CONVERTERS)))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().split(",") == [
        "adelaidet-solov2",
        "coincheung-bisenetv1",
        "coincheung-bisenetv2",
        "coincheung-bisenetv2-backbone",
        "mmdet",
        "solo-official",
        "torchvision-resnet",
    ]


# Detectron2's private names solo_d2 needs (tests/test_imports.py guards that only compat uses them)
_D2_PRIVATE = {
    "_trainer",
    "_seed",
    "_data_loader_iter",
    "_data_loader_iter_obj",
    "_file_handle",
    "_writers",
    "_period",
    "_func",
    "_eval_after_train",
    "_LOCAL_PROCESS_GROUP",
    "_do_eval",
    "_load_file",
}


def _private_uses(path):
    """``(line, what)`` of each private Detectron2 name used in the file at ``path``: imports of
    ``_names`` from detectron2 and attributes in ``_D2_PRIVATE``."""
    import ast

    with open(path) as f:
        tree = ast.parse(f.read())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("detectron2"):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Attribute) and node.attr in _D2_PRIVATE:
            out.append((node.lineno, node.attr))
    return out


def test_private_detectron2_state_is_touched_only_in_compat(tmp_path):
    uses = {}
    for mod, path in check_imports.modules(ROOT, "solo_d2").items():
        if mod != "solo_d2.compat" and _private_uses(path):
            uses[mod] = _private_uses(path)
    assert uses == {}
    assert _private_uses(os.path.join(ROOT, "solo_d2", "compat.py"))  # the checker sees them there
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from detectron2.engine.launch import _find_free_port\ndef f(s):\n    s._seed = 1\n"
    )
    assert _private_uses(str(bad)) == [(1, "_find_free_port"), (3, "_seed")]


# tests of the repository as a whole; everything else goes to the folder of what it tests
TOP_LEVEL_TESTS = {
    "test_cuda.py",
    "test_config_weights.py",
    "test_docs.py",
    "test_foreign_tools_package.py",
    "test_imports.py",
    "test_package.py",
    "test_solo_configs.py",
}


def test_tests_mirror_the_package_and_share_helpers_from_one_place():
    tests = REPO_ROOT / "tests"
    assert {p.name for p in tests.glob("test_*.py")} == TOP_LEVEL_TESTS
    for folder in ("modeling", "checkpoint", "data", "engine", "evaluation", "export", "tools"):
        assert any((tests / folder).glob("test_*.py")), folder
    for path in tests.rglob("*.py"):
        if "data" in path.relative_to(tests).parts[:-1] and not path.name.startswith("test_"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                last = node.module.split(".")[-1]
                assert not last.startswith("test_"), (
                    f"{path.relative_to(REPO_ROOT)} imports {node.module}: shared helpers "
                    "belong in tests/helpers/"
                )
                assert node.module != "tests.conftest", path
