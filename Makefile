# The one interface to the project. `make run` and `make test` set everything up themselves.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# Installs are recorded in stamp files, redone when pyproject.toml changes.
RUNTIME := $(VENV)/.runtime-installed
DEV := $(VENV)/.dev-installed

.DEFAULT_GOAL := help
.PHONY: help install run test generate check check-generated check-handlers lint typecheck fuzz clean

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
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .schemathesis
