# fedseg: the two set-up commands are `make demo` and `make test` (docs/install.md).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
CONSTRAINTS := constraints.txt

# torch is installed first, pinned, as the CPU build: a bare `pip install torch==X` on Linux x86_64
# pulls the CUDA build from PyPI (GBs). Where pip is configured with a local wheel folder holding
# torch-X+cpu (PIP_FIND_LINKS or find-links in a pip.conf, as on the CI machine, which reaches no
# index but PyPI) it comes from there; elsewhere from PyTorch's CPU index. Override with
# `make TORCH_SOURCE="--index-url https://download.pytorch.org/whl/cu126"` for a CUDA build.
TORCH_VERSION   := 2.13.0
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
PIP_LINKS   = $(patsubst file://%,%,$(PIP_FIND_LINKS) $(shell $(PYTHON) -m pip config list 2>/dev/null \
              | sed -n "s/^[^=]*find-links='\(.*\)'$$/\1/p"))
TORCH_WHEEL = $(firstword $(wildcard $(addsuffix /torch-$(TORCH_VERSION)+cpu-*.whl,$(sort $(PIP_LINKS)))))
TORCH_SOURCE ?= $(if $(TORCH_WHEEL),--find-links $(patsubst %/,%,$(dir $(TORCH_WHEEL))),--index-url $(TORCH_CPU_INDEX))
PY_CHECK := import sys; v = sys.version_info; sys.exit(0 if v >= (3, 11) else \
            f"fedseg needs Python >= 3.11, found {v.major}.{v.minor} ({sys.executable}): run `make PYTHON=python3.11`")

.PHONY: demo test bench install constraints clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@$(PYTHON) -c '$(PY_CHECK)'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c '$(PY_CHECK)'
	$(PIP) install --disable-pip-version-check -q $(TORCH_SOURCE) torch==$(TORCH_VERSION)
	$(PIP) install --disable-pip-version-check -q -c $(CONSTRAINTS) -e ".[dev]"
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

# rewrite the lock from the working .venv (after a deliberate upgrade; docs/install.md)
constraints:
	printf '%s\n' "# Every package fedseg runs with, as in a working .venv (make constraints; docs/install.md)." \
	  "# Used as pip -c: pins versions, installs nothing by itself. torch: any build of this version." \
	  > $(CONSTRAINTS)
	$(PIP) freeze --exclude-editable | grep -v -i '^fedseg' | sed 's/^torch==\([^+]*\)+.*/torch==\1/' >> $(CONSTRAINTS)

clean:
	rm -rf runs .fedseg_cache
