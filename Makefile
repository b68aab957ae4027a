# `make test` and `make demo` each set up .venv on first use (tools/bootstrap.sh).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.solo_d2-setup
PYTEST_ARGS ?=

.PHONY: setup lint test demo benchmark clean gpu-bundle gpu-check gpu-check-dry

$(STAMP): tools/bootstrap.sh tools/install_detectron2_offline.py constraints.txt setup.py
	bash tools/bootstrap.sh
	touch $(STAMP)

setup: $(STAMP)

# ruff (ruff.toml: 100 columns, pycodestyle/pyflakes/isort rules, as detectron2's black + isort +
# flake8); `$(VENV)/bin/ruff format .` and `ruff check --fix .` fix what it reports
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --durations=15 tests $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) tools/run_demo.py

benchmark: $(STAMP)
	$(PY) tools/benchmark.py

clean:
	rm -rf output build *.egg-info

# GPU check (issues 29 and 33; docs/DEVELOPMENT.md): tools/gpu_check.py on one GPU in <= 8 minutes.
# The device machine has its own python3 (torch + CUDA) and no detectron2: `make gpu-bundle` (here,
# with .venv) copies detectron2 0.6's Python sources (NumPy 2 / Pillow 10 renames applied to the
# copy), their pure-Python deps, pycocotools for CPython 3.12 and the AdelaiDet port's SOLOv2 code
# into $(GPU_BUNDLE) (ignored), which the device call carries. `make gpu-check` runs the check
# where CUDA is available, and elsewhere prints the device call to make.
GPU_BUNDLE ?= build/gpu_bundle
ADELAIDET ?= /work/refs/AdelaiDet
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
GPU_OUT ?= $(if $(OUT),$(OUT),output/gpu_check)

gpu-bundle:
	$(PY) tools/gpu_bundle.py --out $(GPU_BUNDLE) --adelaidet "$(ADELAIDET)"

gpu-check:
	@if [ ! -f $(GPU_BUNDLE)/MANIFEST.json ]; then \
	  if [ -x $(PY) ]; then $(MAKE) --no-print-directory gpu-bundle; \
	  else echo "gpu-check: no $(GPU_BUNDLE) (make gpu-bundle where .venv has detectron2, then carry it)"; exit 1; fi; fi
	@if $(GPU_PY) -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then \
	  PYTHONUNBUFFERED=1 PYTHONPATH=$(GPU_BUNDLE):. $(GPU_PY) tools/gpu_check.py --out "$(GPU_OUT)"; \
	else \
	  echo "gpu-check: no CUDA here. $(GPU_BUNDLE) is ready ($$(du -sh --apparent-size $(GPU_BUNDLE) | cut -f1)); on the device machine, run:"; \
	  echo "  run(command='PYTHONUNBUFFERED=1 PYTHONPATH=$(GPU_BUNDLE):. python3 tools/gpu_check.py --out \"\$$OUT\"', carry=[\"$(GPU_BUNDLE)\"], timeout_s=600)"; \
	  echo "(or command='make gpu-check' where the device has make; the CPU dry run: make gpu-check-dry)"; \
	  $(GPU_PY) tools/gpu_bundle.py --travel-size --out $(GPU_BUNDLE); \
	fi

gpu-check-dry:
	@[ -f $(GPU_BUNDLE)/MANIFEST.json ] || $(MAKE) --no-print-directory gpu-bundle
	PYTHONPATH=$(GPU_BUNDLE):. $(GPU_PY) tools/gpu_check.py --dry-run --bundle $(GPU_BUNDLE) --out output/gpu_check_dry
