# The one interface to the project. `make run` and `make test` set everything up themselves.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# Installs are recorded in stamp files, redone when pyproject.toml changes.
RUNTIME := $(VENV)/.runtime-installed
DEV := $(VENV)/.dev-installed

.DEFAULT_GOAL := help
.PHONY: help install run test generate client check check-generated check-handlers lint typecheck fuzz clean \
	bench bench-prefect bench-wrk

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUNTIME): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --editable .
	touch $@

$(DEV): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --editable '.[dev]'
	touch $@ $(RUNTIME)

install: $(DEV) ## create .venv with the service and every development tool

run: $(RUNTIME) ## migrate the database and serve the API on $$HOST:$$PORT (127.0.0.1:4200)
	$(BIN)/taskrun-api serve

test: $(DEV) ## run every test (PostgreSQL ones too when TEST_POSTGRES_URL is set)
	$(BIN)/pytest

generate: $(DEV) ## regenerate generated/ from openapi.yaml
	$(BIN)/openapi-spec-validator openapi.yaml
	$(BIN)/datamodel-codegen
	$(BIN)/python -m app.codegen.routes

client: $(DEV) ## generate a typed Python client from openapi.yaml into build/client (git-ignored)
	$(BIN)/python -m app.codegen.client --output build/client

check-generated: $(DEV)
	@$(BIN)/openapi-spec-validator openapi.yaml
	@$(BIN)/datamodel-codegen --check
	@$(BIN)/python -m app.codegen.routes --check

check-handlers: $(DEV)
	@$(BIN)/taskrun-api check-handlers

lint: $(DEV) ## ruff, ruff format --check and the import-linter layers
	@$(BIN)/ruff check .
	@$(BIN)/ruff format --check .
	@$(BIN)/lint-imports

typecheck: $(DEV) ## mypy (strict)
	@$(BIN)/mypy

check: check-generated check-handlers lint typecheck ## generated/ current, every operation handled, lint, types
	@echo "check: all clean"

fuzz: $(DEV) ## Schemathesis against a running server (EXAMPLES=1000 per operation)
	$(BIN)/python -m tests.fuzz --examples $(or $(EXAMPLES),1000)

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) $(PREFECT_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .schemathesis

# ---------------------------------------------------------------------------------------
# Benchmarks (tests/bench): wrk against the service as a real process, on SQLite and on
# PostgreSQL (TEST_POSTGRES_URL; set it empty to skip PostgreSQL). QUICK=1 takes about a
# minute. Results are printed and written to bench-results/ (git-ignored).
BENCH_POSTGRES_URL ?= postgresql://postgres@127.0.0.1:5432/test
BENCH_FLAGS = $(if $(filter-out 0 false no,$(QUICK)),--quick)
# Prefect's own server, in a virtualenv of its own, for `make bench-prefect`.
PREFECT_VENV ?= .venv-prefect-server
PREFECT_VERSION := 3.9.1
# prefect 3.9.1 asks for a certifi newer than the registry has: this one instead.
PREFECT_CERTIFI := certifi==2026.10.18
PREFECT_INSTALLED := $(PREFECT_VENV)/.prefect-$(PREFECT_VERSION)-installed

bench-wrk:
	@command -v wrk >/dev/null 2>&1 || { \
	  sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "installing wrk: $${sudo:+$$sudo }apt-get install -y wrk"; \
	  $$sudo apt-get install -y wrk || { $$sudo apt-get update && $$sudo apt-get install -y wrk; }; \
	}; \
	command -v wrk >/dev/null 2>&1 || { \
	  echo "make bench needs wrk (Debian package wrk) and could not install it" >&2; exit 1; }

$(PREFECT_INSTALLED): tests/bench/prefect_install.py | $(DEV)
	$(BIN)/python -m tests.bench.prefect_install --venv $(PREFECT_VENV) \
	  --version $(PREFECT_VERSION) --replace $(PREFECT_CERTIFI)
	touch $@

bench: $(DEV) bench-wrk ## wrk against the service on SQLite and PostgreSQL (QUICK=1: ~1 min)
	TEST_POSTGRES_URL="$${TEST_POSTGRES_URL-$(BENCH_POSTGRES_URL)}" \
	  $(BIN)/python -m tests.bench $(BENCH_FLAGS)

bench-prefect: $(DEV) bench-wrk $(PREFECT_INSTALLED) ## the same cells against Prefect 3.9.1 too, side by side
	TEST_POSTGRES_URL="$${TEST_POSTGRES_URL-$(BENCH_POSTGRES_URL)}" \
	  $(BIN)/python -m tests.bench --prefect $(BENCH_FLAGS)
