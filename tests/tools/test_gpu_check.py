"""``make gpu-check`` (``tools/gpu_check.py``, ``tools/gpu_bundle.py``): the CPU dry run of the
prepared GPU script, so that a lent GPU's few minutes are not lost to a crash.

The dry run runs as the device run does: in a subprocess, detectron2 imported from a bundle
built here by ``tools/gpu_bundle.py`` (the device machine has no detectron2). Each part must
produce its rows or say clearly why it skipped them; no wall-clock assertions.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

ADELAIDET = os.environ.get("ADELAIDET_SRC", "/work/refs/AdelaiDet")


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_{name}", REPO_ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    gpu_bundle = _load("gpu_bundle")
    out = tmp_path_factory.mktemp("gpu") / "bundle"
    adelaidet = (
        ADELAIDET
        if os.path.isfile(os.path.join(ADELAIDET, "adet", "modeling", "solov2", "solov2.py"))
        else None
    )
    manifest = gpu_bundle.build(out, adelaidet, download=False)
    return out, manifest


def test_bundle_holds_patched_detectron2_and_only_the_ports_solov2(bundle):
    out, manifest = bundle
    for pkg in (
        "detectron2",
        "fvcore",
        "iopath",
        "yacs",
        "omegaconf",
        "antlr4",
        "hydra",
        "termcolor",
        "tabulate",
        "portalocker",
        "cloudpickle",
        "panopticapi",
        "cityscapesscripts",
    ):
        assert (out / pkg).is_dir() or (out / f"{pkg}.py").is_file(), pkg
    assert not list(out.rglob("*.so")) or all("bin-cp" in str(p) for p in out.rglob("*.so"))
    assert not list(out.rglob("__pycache__"))
    # detectron2 main's renames, in the copy only
    old = re.compile(r"\bnp\.(int|bool|float|str|object)\b|\bImage\.LINEAR\b")
    assert not [p for p in (out / "detectron2").rglob("*.py") if old.search(p.read_text())]
    assert (
        "interp=Image.BILINEAR"
        in (out / "detectron2" / "data" / "transforms" / "transform.py").read_text()
    )
    # the installed detectron2's own files: v0.6 has the old names (so the copy was patched),
    # main has none (nothing to patch)
    installed = Path(importlib.util.find_spec("detectron2").origin).parent
    renames = [pattern for pattern, _ in _load("gpu_bundle").RENAMES]
    needs_patches = any(
        pattern.search(text)
        for text in (p.read_text() for p in installed.rglob("*.py"))
        for pattern in renames
    )
    assert bool(manifest["detectron2_patches"]) == needs_patches
    assert manifest["size_bytes"] < 40 * 2**20
    if "adelaidet" in manifest:
        files = sorted(
            str(p.relative_to(out / "AdelaiDet"))
            for p in (out / "AdelaiDet").rglob("*")
            if p.is_file()
        )
        assert files and all(
            f.startswith(("adet/modeling/solov2/", "adet/config/", "configs/SOLOv2/"))
            for f in files
        )


def test_dry_run_from_the_bundle(bundle, tmp_path):
    out_dir, manifest = bundle
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "ADELAIDET_ROOT")}
    env["PYTHONPATH"] = os.pathsep.join([str(out_dir), str(REPO_ROOT)])
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "tools" / "gpu_check.py"),
            "--dry-run",
            "--bundle",
            str(out_dir),
            "--out",
            str(out),
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    errors = (out / "errors.txt").read_text() if (out / "errors.txt").exists() else ""
    # what a device call brings back: at most 8 plain files, simple names
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files), files
    assert {"rows.md", "results.json", "log.txt", "pytest.txt", "profiles.txt"} <= set(files), files
    rows = (out / "rows.md").read_text()
    results = json.loads((out / "results.json").read_text())
    assert "detectron2 from the bundle" in results["header"], results["header"]
    sections = dict(
        re.findall(
            r"\n## (gpu_check_\w+)\n\n[^\n]*\n\n\| what \| solo_d2 \| baseline \| ratio "
            r"\|\n\|---\|---\|---\|---\|\n((?:\|[^\n]*\|\n)+)",
            rows,
        )
    )
    assert set(sections) == {
        f"gpu_check_{p}" for p in ("tests", "inference", "training", "bisenet", "profile")
    }, rows
    assert "| part " not in rows, errors  # no whole part failed
    assert (
        "pytest tests/test_cuda.py" in sections["gpu_check_tests"]
        and "skipped" in sections["gpu_check_tests"]
    )
    inf = sections["gpu_check_inference"]
    assert (
        inf.count("post-processing, ~") == 2
        and "backbone+FPN" in inf
        and "whole DefaultPredictor call" in inf
    )
    train = sections["gpu_check_training"]
    assert "train step SOLOv2/R50_3x.yaml" in train and "failed" not in train, errors
    assert (
        train.count("not run in the dry run") + train.count("ms/step") >= 20
    )  # every recipe config planned or run
    assert "AMPTrainer needs CUDA" in train
    assert ("AdelaiDet port" in train) and ("AdelaiDet port" in inf or "port rows skipped" in rows)
    if "adelaidet" in manifest:  # the port loads from the bundle: its rows hold numbers
        assert "(AdelaiDet port)" in inf and "vs the port" in inf, rows
        assert "ms/step, peak n/a (CPU) (AdelaiDet port)" in train, rows
    bis = sections["gpu_check_bisenet"]
    assert all(
        k in bis
        for k in (
            "BiSeNetV1 R18 inference",
            "BiSeNetV2 inference",
            "amp channels last",
            "amp cudnn off",
        )
    )
    prof = sections["gpu_check_profile"]
    assert prof.count("profile ") >= 4 and "failed" not in prof, errors
    tables = (out / "profiles.txt").read_text()
    assert tables.count("==== ") == prof.count("profile ") and "Self CPU" in tables
    assert "[gpu_check]" in (out / "log.txt").read_text()


def test_recipe_plan():
    """The recipe batch per GPU and training size of each recipe config,
    as the GPU run uses them."""
    gpu_check = _load("gpu_check")
    from benchmarks.runner import configs_dir, recipe_configs
    from solo_d2.checkpoint.core import build_cfg

    s = gpu_check.Settings(False, "cuda")
    plan = {}
    for path in recipe_configs():
        cfg = build_cfg(path)
        plan[os.path.relpath(path, configs_dir())] = (s.batch_per_gpu(cfg), s.train_size(cfg))
    assert plan["SOLOv2/R50_3x.yaml"] == (2, (800, 1216))
    assert plan["SOLOv2/Light448_R50_3x.yaml"] == (2, (512, 768))
    assert plan["Cityscapes/SOLOv2_R50.yaml"] == (1, (1024, 2048))
    assert plan["BiSeNet/V2_cityscapes.yaml"] == (2, (1024, 1024))
    assert plan["Panoptic/SOLOv2_R50_3x_coco.yaml"] == (2, (800, 1216))
    assert len(plan) >= 20 and not any(p.startswith(("Synthetic", "Converted")) for p in plan)


def test_no_cuda_without_dry_run_says_how(tmp_path):
    """Without CUDA and without --dry-run the script does nothing but print the device command."""
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "gpu_check.py"), "--out", str(tmp_path / "o")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (
        proc.returncode == 2
        and "--dry-run" in proc.stdout
        and "PYTHONPATH=build/gpu_bundle:." in proc.stdout
    )
