#!/usr/bin/env python
"""Prepare the folder that ``tools/gpu_check.py`` imports detectron2 from on a machine without it.

The device machines that ``make gpu-check`` runs on have their own Python (torch + CUDA, NumPy 2,
Pillow >= 10) and no detectron2. This script copies, from the Python that runs it (the project's
``.venv``, where detectron2 0.6 is installed), the pure-Python packages that importing solo_d2 and
building its models needs into one ignored folder (default ``build/gpu_bundle``), which a device
call carries along::

    build/gpu_bundle/
        detectron2/ fvcore/ iopath/ yacs/ omegaconf/ antlr4/ hydra/ termcolor/ tabulate/ ...
                              pure Python; ``PYTHONPATH=build/gpu_bundle:.`` makes them importable
        bin-cp312/            compiled packages (pycocotools, shapely) for CPython 3.12
                              (the device's): wheels of the versions installed here, fetched
                              with pip; ``--local-binaries`` also copies this interpreter's own
                              (bin-cp311). gpu_check.py adds the folder of its own version.
        fallback/             pytest and its deps, used only where the running Python lacks them
        AdelaiDet/            the AdelaiDet port's ``adet/modeling/solov2/*.py``,
                              ``adet/config/*.py`` and ``configs/SOLOv2/*.yaml`` (from
                              ``--adelaidet``), for the port's baselines (``ADELAIDET_ROOT``);
                              never committed
        MANIFEST.json         what was copied, from where, the patches applied, the size

Only the copy is patched, never the source environment: detectron2 0.6 uses NumPy aliases that
NumPy 1.24 removed and ``Image.LINEAR`` that Pillow 10 removed; the renames below are the ones
detectron2 main made (``np.int`` -> ``int``, ``np.bool`` -> ``bool``, ``np.float`` -> ``float``,
``np.str`` -> ``str``, ``np.object`` -> ``object``, ``Image.LINEAR`` -> ``Image.BILINEAR``).
detectron2's compiled ``_C`` ops are not needed: the installed detectron2 has a ``_C.py`` stand-in
and solo_d2 uses ``torchvision.ops.deform_conv2d`` for deformable convolutions.

    python tools/gpu_bundle.py [--out build/gpu_bundle] [--adelaidet /work/refs/AdelaiDet]
        [--no-download]
"""

import argparse
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "build" / "gpu_bundle"
DEFAULT_ADELAIDET = os.environ.get("ADELAIDET_SRC", "/work/refs/AdelaiDet")
DEVICE_PY = "cp312"  # the device machines' python3 (3.12)

# (import name, distribution folder prefix in site-packages) of the pure-Python packages
PURE = [
    ("detectron2", "detectron2"),
    ("fvcore", "fvcore"),
    ("iopath", "iopath"),
    ("yacs", "yacs"),
    ("omegaconf", "omegaconf"),
    ("antlr4", "antlr4_python3_runtime"),
    ("hydra", "hydra_core"),
    ("termcolor", "termcolor"),
    ("tabulate", "tabulate"),
    ("portalocker", "portalocker"),
    ("cloudpickle", "cloudpickle"),
    ("panopticapi", "panopticapi_lite"),
    ("cityscapesscripts", "cityscapesscripts"),
    ("pyquaternion", "pyquaternion"),
]
# parts of packages that no import of solo_d2, its tests or its tools reaches
SKIP = {"cityscapesscripts": ("annotation", "viewer", "download")}
FALLBACK = [
    ("pytest", "pytest"),
    ("_pytest", None),
    ("pluggy", "pluggy"),
    ("iniconfig", "iniconfig"),
    ("packaging", "packaging"),
    ("pygments", "pygments"),
    ("py", None),
]
# compiled packages that solo_d2 or detectron2 import and the device's Python lacks:
# (distribution, folders of its wheel); the version is the one installed here
BINARY = [("pycocotools", ("pycocotools",)), ("shapely", ("shapely", "shapely.libs"))]

# detectron2 main's renames for NumPy >= 1.24 / 2.x and Pillow >= 10 (applied to the copy only)
RENAMES = [
    (re.compile(r"\bnp\.(int|bool|float|str|object)\b"), r"\1"),
    (re.compile(r"\bImage\.LINEAR\b"), "Image.BILINEAR"),
    (re.compile(r"\bImage\.ANTIALIAS\b"), "Image.LANCZOS"),
]


def site_packages():
    return Path(sysconfig.get_paths()["purelib"])


def _ignore(skip=()):
    def ignore(folder, names):
        out = {n for n in names if n == "__pycache__" or n.endswith((".pyc", ".so", ".pyd"))}
        if skip:
            out |= {n for n in names if n in skip}
        return out

    return ignore


def _copy_package(site, name, dist, dest, skip=()):
    """Copy the module or package ``name`` (and its ``dist*.dist-info``)
    from ``site`` to ``dest``."""
    src = site / name
    copied = []
    if src.is_dir():
        shutil.copytree(src, dest / name, ignore=_ignore(skip))
        copied.append(name)
    elif (site / f"{name}.py").is_file():
        shutil.copy2(site / f"{name}.py", dest / f"{name}.py")
        copied.append(f"{name}.py")
    else:
        raise FileNotFoundError(f"{name} is not installed in {site}")
    if dist:
        for info in site.glob("*.dist-info"):
            if info.name.lower().replace("-", "_").startswith(dist.lower() + "-"):
                shutil.copytree(info, dest / info.name, ignore=_ignore())
                copied.append(info.name)
    return copied


def patch_detectron2(folder):
    """Apply :data:`RENAMES` to every ``.py`` file under ``folder``; returns ``{file: count}``."""
    changed = {}
    for path in sorted(Path(folder).rglob("*.py")):
        text = path.read_text()
        new, total = text, 0
        for pattern, repl in RENAMES:
            new, n = pattern.subn(repl, new)
            total += n
        if total:
            path.write_text(new)
            changed[str(path.relative_to(folder))] = total
    return changed


def _download_binary(pkg, version, dest, pyver):
    """Fetch ``pkg==version``'s manylinux wheel for CPython ``pyver`` (e.g. ``cp312``) with pip and
    unpack it into ``dest`` (without its ``tests``). Returns the wheel's name."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            pyver[2:3] + "." + pyver[3:],
            "--implementation",
            "cp",
            "--platform",
            "manylinux_2_28_x86_64",
            "--platform",
            "manylinux_2_17_x86_64",
            "--platform",
            "manylinux2014_x86_64",
            "-d",
            tmp,
            f"{pkg}=={version}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode or not wheels:
            raise RuntimeError(
                f"pip download {pkg}=={version} for {pyver} failed: {proc.stderr.strip()[-300:]}"
            )
        with zipfile.ZipFile(wheels[0]) as z:
            z.extractall(dest, [n for n in z.namelist() if "/tests/" not in n])
        return wheels[0].name


def copy_adelaidet(src, dest):
    """Copy the AdelaiDet port's ``adet/modeling/solov2/*.py``, ``adet/config/*.py`` and
    ``configs/SOLOv2/*.yaml`` (what :mod:`benchmarks.adelaidet_port` reads)."""
    src = Path(src)
    files = (
        sorted(src.glob("adet/modeling/solov2/*.py"))
        + sorted(src.glob("adet/config/*.py"))
        + sorted(src.glob("configs/SOLOv2/*.yaml"))
    )
    if not files:
        raise FileNotFoundError(f"no adet/modeling/solov2/*.py under {src}")
    for f in files:
        target = dest / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target)
    commit = None
    head = src / ".git"
    if head.exists():
        try:
            commit = (
                subprocess.run(
                    ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True
                ).stdout.strip()
                or None
            )
        except OSError:
            pass
    return [str(f.relative_to(src)) for f in files], commit


def folder_size(folder):
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


DEVICE_TREE_LIMIT = (
    64 * 2**20
)  # what a device call may carry: tracked + untracked-not-ignored + carried


def travel_size(carry=(DEFAULT_OUT,)):
    """``(bytes of the files a device call sends, bytes of the carried folders)``: the files git
    lists as tracked or untracked-not-ignored, and ``carry``."""
    names = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    tree = sum((ROOT / n).stat().st_size for n in set(names) if n and (ROOT / n).is_file())
    return tree, sum(folder_size(c) for c in carry if Path(c).exists())


def travel_note(carry=(DEFAULT_OUT,)):
    tree, carried = travel_size(carry)
    total = tree + carried
    verdict = (
        "fits"
        if total <= DEVICE_TREE_LIMIT
        else "is OVER the limit: the device call will be refused"
    )
    return (
        f"a device call sends {total / 2**20:.1f} MiB (working tree {tree / 2**20:.1f} "
        f"MiB + carried {carried / 2**20:.1f} MiB) of at most "
        f"{DEVICE_TREE_LIMIT / 2**20:.0f} MiB: {verdict}"
    )


def _ignore_tests(folder, names):
    return {n for n in names if n in ("__pycache__", "tests")}


def build(
    out=DEFAULT_OUT, adelaidet=DEFAULT_ADELAIDET, download=True, site=None, local_binaries=False
):
    """Build the bundle in ``out`` (replaced if present); returns the manifest dict."""
    out = Path(out)
    site = Path(site) if site else site_packages()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    manifest = {
        "python": sys.version.split()[0],
        "site_packages": str(site),
        "packages": {},
        "notes": [],
    }
    for name, dist in PURE:
        manifest["packages"][name] = _copy_package(site, name, dist, tmp, SKIP.get(name, ()))
    manifest["detectron2_patches"] = patch_detectron2(tmp / "detectron2")
    # pytest & co: only where the running Python has none (gpu_check.py decides)
    (tmp / "fallback").mkdir()
    for name, dist in FALLBACK:
        try:
            _copy_package(site, name, dist, tmp / "fallback")
        except FileNotFoundError:
            manifest["notes"].append(f"fallback {name}: not installed here, not bundled")
    here = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    for dist, folders in BINARY:
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            manifest["notes"].append(f"{dist}: not installed here, not bundled")
            continue
        if local_binaries or here == DEVICE_PY:  # this interpreter's own copies
            for folder in folders:
                shutil.copytree(site / folder, tmp / f"bin-{here}" / folder, ignore=_ignore_tests)
            manifest["packages"][f"bin-{here}/{dist}"] = version
        if here != DEVICE_PY and download:
            try:
                wheel = _download_binary(dist, version, tmp / f"bin-{DEVICE_PY}", DEVICE_PY)
                manifest["packages"][f"bin-{DEVICE_PY}/{dist}"] = wheel
            except Exception as e:  # noqa: BLE001 - reported in the manifest and by gpu_check's imports
                manifest["notes"].append(f"{dist} for {DEVICE_PY}: {e}")
        elif here != DEVICE_PY:
            manifest["notes"].append(
                f"{dist} {version} for {DEVICE_PY}: not downloaded (--no-download)"
            )
    if adelaidet:
        try:
            files, commit = copy_adelaidet(adelaidet, tmp / "AdelaiDet")
            manifest["adelaidet"] = {"source": str(adelaidet), "commit": commit, "files": files}
        except FileNotFoundError as e:
            manifest["notes"].append(f"AdelaiDet port not bundled: {e}")
    manifest["size_bytes"] = folder_size(tmp)
    (tmp / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return manifest


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument(
        "--adelaidet",
        default=DEFAULT_ADELAIDET,
        help="a checkout of aim-uofa/AdelaiDet ('' to leave the port out)",
    )
    ap.add_argument(
        "--no-download",
        action="store_true",
        help=f"do not fetch the {DEVICE_PY} wheels of the compiled packages (pycocotools)",
    )
    ap.add_argument(
        "--local-binaries",
        action="store_true",
        help="also copy this Python's compiled packages (bin-cpXY), for a dry run "
        "from a Python without them",
    )
    ap.add_argument(
        "--travel-size", action="store_true", help="only print what a device call would send"
    )
    args = ap.parse_args(argv)
    if args.travel_size:
        print(f"[gpu_bundle] {travel_note([args.out])}")
        return
    if importlib.util.find_spec("detectron2") is None:
        sys.exit(
            "gpu_bundle.py: run it with the Python that has detectron2 0.6 (the project's .venv)"
        )
    m = build(
        args.out,
        args.adelaidet or None,
        download=not args.no_download,
        local_binaries=args.local_binaries,
    )
    for note in m["notes"]:
        print(f"[gpu_bundle] note: {note}")
    print(
        f"[gpu_bundle] {args.out}: {m['size_bytes'] / 2**20:.1f} MiB, {len(m['packages'])} "
        f"packages, {sum(m['detectron2_patches'].values())} renames in "
        f"{len(m['detectron2_patches'])} detectron2 files"
        + (
            f", AdelaiDet {len(m['adelaidet']['files'])} files"
            if "adelaidet" in m
            else ", no AdelaiDet port"
        )
    )
    try:
        print(f"[gpu_bundle] {travel_note([args.out])}")
    except (OSError, subprocess.SubprocessError) as e:
        print(f"[gpu_bundle] could not size the working tree ({e})")


if __name__ == "__main__":
    main()
