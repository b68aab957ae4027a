# `make test` and `make demo` each set up .venv on first use (tools/bootstrap.sh).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.solo_d2-setup
PYTEST_ARGS ?=

.PHONY: setup test demo benchmark clean

$(STAMP): tools/bootstrap.sh tools/install_detectron2_offline.py constraints.txt setup.py
	bash tools/bootstrap.sh
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --durations=15 tests $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) tools/run_demo.py

benchmark: $(STAMP)
	$(PY) tools/benchmark.py

clean:
	rm -rf output build *.egg-info
