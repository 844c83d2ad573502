# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv demo demo-network test lint bench clean reference readme test-container

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Installs torch first (the CPU wheel that lies on disk here), then the project.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev,detect]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(BIN)/cleftgan-hpc run jobs/demo.yaml

# The demo's normal-face network, models/demo-normal-64.safetensors, made again (about an hour on 2 cores; docs/evaluation.md).
demo-network: venv
	$(BIN)/python tools/demo_network.py
	$(BIN)/python tools/check_demo_network.py   # issue 12's targets: Spearman >= 0.8, lip-region peaks >= 90%

test: venv
	$(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check cleftgan_hpc tests benchmarks tools

bench: venv
	$(BIN)/python benchmarks/bench_networks.py

clean:
	rm -rf $(VENV) store .pytest_cache .ruff_cache

reference: venv  ## regenerate the spec reference, docs/reference.md, from the models
	$(BIN)/python -m cleftgan_hpc.jobspec.reference docs/reference.md

readme: reference  ## the old name of `make reference`

test-container: venv  ## build the Dockerfile (CPU base) and run doctor and the demo inside (~5 min cold)
	bash containers/test_build.sh
