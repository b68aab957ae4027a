#!/usr/bin/env bash
# Create or reuse .venv and install everything solo_d2 needs. Idempotent.
# Used by `make test`, `make demo` and CI; prints how long the set-up took.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
PIP=("$PY" -m pip install -q -c constraints.txt)
"$PY" -m pip install -q -U "pip<25" wheel
# torch first: its CUDA wheels also run on CPU (the CPU-only 2.13 wheel breaks torchvision's ops).
"${PIP[@]}" torch torchvision numpy
if "$PY" -c "import detectron2" 2>/dev/null; then
  echo "[bootstrap] using the detectron2 already installed: $("$PY" -c 'import detectron2,os;print(detectron2.__version__, os.path.dirname(detectron2.__file__))')"
  # an offline install from before the COCOeval_opt fallback: add it (a no-op for any other detectron2)
  "$PY" tools/install_detectron2_offline.py --patch-installed
else
  echo "[bootstrap] no importable detectron2: installing v0.6 Python sources offline (pb1-detectron2 sdist)"
  # detectron2 v0.6's own install_requires (black, future and pydot are for caffe2 export only).
  "${PIP[@]}" "Pillow>=7.1" matplotlib "pycocotools>=2.0.2" "termcolor>=1.1" "yacs>=0.1.8" tabulate \
    cloudpickle "tqdm>4.29.0" tensorboard fvcore iopath "omegaconf>=2.1" "hydra-core>=1.1" setuptools
  "$PY" tools/install_detectron2_offline.py
fi
# panopticapi (COCOPanopticEvaluator): --no-deps, its declared Pillow>=10.4 / numpy<2 contradict
# detectron2 v0.6's Pillow<10 (and numpy 2 on detectron2 main); the code needs only numpy + Pillow.
"${PIP[@]}" --no-deps panopticapi-lite
"${PIP[@]}" -e ".[dev,export]"
"$PY" -c "import detectron2, solo_d2; print('[bootstrap] detectron2', detectron2.__version__, '| solo_d2', solo_d2.__version__)"
echo "[bootstrap] set-up took $(( $(date +%s) - start )) s"
