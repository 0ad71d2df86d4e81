# fedseg: the two set-up commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed

.PHONY: demo test bench install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: a bare `torch` would pull a newer CUDA build (GBs).
	$(PIP) install --disable-pip-version-check -q torch==2.13.0
	$(PIP) install --disable-pip-version-check -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fedseg demo --out runs/demo

# two pytest workers (pytest-xdist), one torch thread each: CI has 2 cores
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m mypy
	OMP_NUM_THREADS=1 $(PY) -m pytest -p no:cacheprovider -n $(TEST_WORKERS)

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf runs .fedseg_cache
