# Every target creates the environment it needs (.venv, from pyproject.toml).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: demo test docs lint bench bench-quick kernels clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m compileall -q gpuflat  # as a wheel install does (PYTHONDONTWRITEBYTECODE may be set)
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/gpuflat simulate demo/night --overwrite -q
	$(VENV)/bin/gpuflat run demo/night -o demo/masters --plots --overwrite --report demo/masters/report.json
	@echo
	@echo "products: demo/masters/combined_flat_filter_*.fits"
	@echo "plots:    demo/masters/*.png"
	@echo "report:   demo/masters/report.json"

# on every core (at most 4): most of a first run's time is compiling, one core per process
test: $(VENV)/.installed
	$(PY) -m pytest -q -n auto --maxprocesses 4

# the documentation site (docs/_build/html), warnings as errors; the tutorial is executed
docs: $(VENV)/.installed
	$(VENV)/bin/sphinx-build -W --keep-going -q -b html docs docs/_build/html

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check gpuflat tests bench
	$(VENV)/bin/ruff format --check gpuflat tests bench

bench: $(VENV)/.installed
	$(PY) bench/bench.py

bench-quick: $(VENV)/.installed
	$(PY) bench/bench.py --quick

# The prebuilt CUDA kernels (kernels/*.fatbin and kernels/prebuilt.json), from kernels/*.cu:
# run after editing a kernel (tests/test_cuda_prebuilt.py fails until then). Needs nvcc
# (NVCC=/path/to/nvcc); the same nvcc rebuilds the same bytes.
NVCC ?= nvcc
kernels: $(VENV)/.installed
	$(PY) -m gpuflat.backends._build --nvcc $(NVCC)

clean:
	rm -rf demo .pytest_cache build *.egg-info docs/_build docs/generated
