# `make run` and `make test` work on a fresh clone: each creates .venv and installs first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch; elsewhere add e.g. TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=

.PHONY: install run test clean

$(BIN)/ryot-ray: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/ryot-ray

run: install
	$(BIN)/ryot-ray tune --space search_spaces/default.yaml

test: install
	$(BIN)/python -m pytest --cov=ryot_ray --cov-report=term -q

clean:
	rm -rf $(VENV) .pytest_cache .coverage
