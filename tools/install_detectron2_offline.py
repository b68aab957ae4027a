#!/usr/bin/env python
"""Install detectron2 v0.6's Python sources without compiling them.

detectron2 is not on the package index. The sdist ``pb1-detectron2==0.6`` holds
the official v0.6 Python sources (``detectron2/`` and ``projects/``) but not the
C++ sources, so ``pip`` cannot build it. This script:

1. fetches the sdist from the package index (or uses ``--sdist PATH``),
2. verifies its sha256,
3. copies ``detectron2/`` and the projects (as ``detectron2.projects.*``, the
   mapping of detectron2's own setup.py) into the target ``site-packages``,
4. writes ``detectron2-0.6.dist-info`` so ``pip show detectron2`` reports 0.6,
5. installs ``detectron2/_C.py``: a stand-in for the compiled extension whose
   import succeeds and whose ops raise a clear error naming the missing op;
6. makes ``detectron2/evaluation/fast_eval_api.py``'s ``COCOeval_opt`` (the C++ COCO
   evaluation that ``COCOEvaluator`` uses by default, ``use_fast_impl=True``) fall back to
   pycocotools' Python ``COCOeval`` when ``_C`` is the stand-in, so ``COCOEvaluator(name)``
   built the standard way works (same AP, the official implementation, slower).

``--patch-installed`` applies steps 5-6 to an offline install made before them (``make setup``
runs it when it finds one), without downloading anything.

Users with internet access should instead install detectron2 from its official
repository (``pip install 'git+https://github.com/facebookresearch/detectron2.git'``);
``tools/bootstrap.sh`` leaves an importable detectron2 alone.
"""

import argparse
import hashlib
import json
import os
import shutil
import sys
import sysconfig
import tarfile
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

SDIST_NAME = "pb1-detectron2"
SDIST_VERSION = "0.6"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
PROJECTS = {
    "point_rend": "projects/PointRend/point_rend",
    "deeplab": "projects/DeepLab/deeplab",
    "panoptic_deeplab": "projects/Panoptic-DeepLab/panoptic_deeplab",
}

C_STANDIN = '''"""Stand-in for detectron2's compiled extension (``detectron2._C``).

This detectron2 was installed from Python sources only (see solo_d2's
tools/install_detectron2_offline.py). Importing this module works; calling any
compiled op raises ``RuntimeError`` naming the op. solo_d2 never needs these ops:
it uses torchvision's deformable convolution and pycocotools' COCOeval.
"""

SOLO_D2_STANDIN = True


def get_compiler_version():
    return "none (detectron2._C stand-in: compiled ops unavailable)"


def get_cuda_version():
    return "none (detectron2._C stand-in: compiled ops unavailable)"


def has_cuda():
    return False


class _UnavailableOp:
    def __init__(self, name):
        self.name = name

    def __call__(self, *args, **kwargs):
        raise RuntimeError(
            f"detectron2._C.{self.name} is a compiled detectron2 op that is not available: "
            "detectron2 was installed from Python sources without its C++/CUDA extension. "
            "Install detectron2 from https://github.com/facebookresearch/detectron2 to use it "
            "(for COCOEvaluator pass use_fast_impl=False)."
        )

    def __repr__(self):
        return f"<unavailable compiled op detectron2._C.{self.name}>"


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _UnavailableOp(name)
'''


FAST_EVAL_MARKER = "# --- solo_d2 offline install: Python fallback of COCOeval_opt ---"
FAST_EVAL_FALLBACK = (
    FAST_EVAL_MARKER
    + """
# detectron2/_C.py is solo_d2's stand-in (tools/install_detectron2_offline.py): the C++
# evaluateImg/accumulate above are not available. COCOeval_opt becomes pycocotools' COCOeval
# (the official implementation: the same AP, slower), so COCOEvaluator(dataset_name), whose
# default is use_fast_impl=True, works.
if getattr(_C, "SOLO_D2_STANDIN", False):
    SOLO_D2_PYTHON_FALLBACK = True
    COCOeval_opt = COCOeval
"""
)


def index_url():
    return os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")


def fetch_sdist(dest: Path) -> Path:
    url = f"{index_url()}/{SDIST_NAME}/"
    with urllib.request.urlopen(url, timeout=120) as r:
        page = r.read().decode()
    fname = f"{SDIST_NAME}-{SDIST_VERSION}.tar.gz"
    for part in page.split('href="')[1:]:
        href = part.split('"', 1)[0]
        if fname in href:
            href = urllib.parse.urljoin(url, href.split("#", 1)[0])
            out = dest / fname
            with urllib.request.urlopen(href, timeout=600) as r, open(out, "wb") as f:
                shutil.copyfileobj(r, f)
            return out
    raise SystemExit(f"{fname} not found in the package index at {url}")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def install(sdist: Path, site: Path):
    digest = sha256(sdist)
    if digest != SDIST_SHA256:
        raise SystemExit(
            f"sha256 mismatch for {sdist}: got {digest}, expected "
            f"{SDIST_SHA256}; refusing to install"
        )
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp)
        root = Path(tmp) / f"{SDIST_NAME}-{SDIST_VERSION}"
        target = site / "detectron2"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(root / "detectron2", target)
        for name, src in PROJECTS.items():
            shutil.copytree(root / src, target / "projects" / name)
        (target / "_C.py").write_text(C_STANDIN)
        patch_fast_eval(target)
        files = [p.relative_to(site).as_posix() for p in target.rglob("*") if p.is_file()]
    info = site / "detectron2-0.6.dist-info"
    if info.exists():
        shutil.rmtree(info)
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: detectron2\nVersion: 0.6\n"
        "Summary: Detectron2 v0.6 Python sources (from pb1-detectron2 sdist), "
        "compiled ops replaced by a stand-in\n"
    )
    (info / "INSTALLER").write_text("solo_d2-offline\n")
    (info / "direct_url.json").write_text(json.dumps({"url": sdist.resolve().as_uri()}))
    files += [
        f"detectron2-0.6.dist-info/{n}"
        for n in ("METADATA", "INSTALLER", "direct_url.json", "RECORD")
    ]
    (info / "RECORD").write_text("".join(f"{f},,\n" for f in files))
    print(f"installed detectron2 0.6 (Python sources, sha256 verified) into {site}")


def patch_fast_eval(package: Path) -> bool:
    """Append :data:`FAST_EVAL_FALLBACK` to ``package/evaluation/fast_eval_api.py`` (``package``:
    a detectron2 folder) unless it is there. Returns whether the file changed."""
    path = Path(package) / "evaluation" / "fast_eval_api.py"
    text = path.read_text()
    if FAST_EVAL_MARKER in text:
        return False
    path.write_text(text.rstrip("\n") + "\n\n\n" + FAST_EVAL_FALLBACK)
    return True


def patch_installed(site: Path) -> int:
    """Steps 5-6 on the offline install in ``site`` (only when its ``_C.py`` is the stand-in)."""
    target = site / "detectron2"
    c_file = target / "_C.py"
    if not c_file.is_file() or "SOLO_D2_STANDIN = True" not in c_file.read_text():
        print(f"{target} is not solo_d2's offline install (no _C.py stand-in): nothing to patch")
        return 0
    c_file.write_text(C_STANDIN)
    changed = patch_fast_eval(target)
    print(
        f"{target}: COCOeval_opt falls back to pycocotools' COCOeval "
        f"({'patched' if changed else 'already patched'})"
    )
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--sdist", type=Path, help="use this pb1-detectron2-0.6.tar.gz instead of downloading"
    )
    ap.add_argument("--site", type=Path, default=Path(sysconfig.get_paths()["purelib"]))
    ap.add_argument(
        "--patch-installed",
        action="store_true",
        help="only update the _C stand-in and the COCOeval_opt fallback of an "
        "offline install in --site",
    )
    args = ap.parse_args()
    if args.patch_installed:
        return patch_installed(args.site)
    with tempfile.TemporaryDirectory() as tmp:
        sdist = args.sdist or fetch_sdist(Path(tmp))
        install(sdist, args.site)


if __name__ == "__main__":
    sys.exit(main())
