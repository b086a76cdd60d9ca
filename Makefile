# The two commands a new user needs: `make demo` and `make test`. Both install first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean gpu-wheels

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned exactly, so pip takes the local CPU build instead of CUDA packages.
	$(PY) -m pip install -q -c constraints.txt torch
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/tmpq demo

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -n 2 --dist loadfile

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Wheels the GPU check (bench/gpu_check.sh) installs on a device machine: Python 3.12 with CUDA torch, no index.
GPU_WHEELS := diffusers==0.42.1 importlib_metadata==10.2.0 zipp==4.1.2 pytest-timeout==2.4.0 transformers==5.25.0 tokenizers==0.23.3
gpu-wheels: install
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
		--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .wheels $(GPU_WHEELS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
