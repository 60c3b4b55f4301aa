# The one interface to the project. `make run` and `make test` set everything up themselves.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# Installs are recorded in stamp files, redone when pyproject.toml changes.
RUNTIME := $(VENV)/.runtime-installed
DEV := $(VENV)/.dev-installed

.DEFAULT_GOAL := help
.PHONY: help install run test browser generate client check check-generated check-handlers \
	check-asyncapi lint typecheck fuzz clean \
	bench bench-queries bench-prefect bench-wrk bench-cpu profile

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

run: $(RUNTIME) ## migrate the database and serve the API on 127.0.0.1:4200 (HOST, PORT)
	$(BIN)/taskrun-api serve

test: $(DEV) browser ## run every test (PostgreSQL ones too when TEST_POSTGRES_URL is set)
	$(BIN)/pytest

# $(call apt-install,COMMANDS,PACKAGES): install Debian's PACKAGES unless all of COMMANDS are
# on PATH; fails when one is still missing afterwards.
define apt-install
missing=; for command in $(1); do command -v $$command >/dev/null 2>&1 || missing=1; done; \
if [ -n "$$missing" ]; then \
  sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
  echo "installing $(2): $${sudo:+$$sudo }apt-get install -y $(2)"; \
  $$sudo apt-get install -y $(2) || { $$sudo apt-get update && $$sudo apt-get install -y $(2); }; \
fi; \
( for command in $(1); do command -v $$command >/dev/null 2>&1 || exit 1; done )
endef

# The browser test of /api/docs (tests/browser) drives Debian's Chromium through ChromeDriver.
browser:
	@$(call apt-install,chromium chromedriver,chromium chromium-driver) || \
	  echo "warning: no Chromium: the browser test of /api/docs is skipped (and fails under CI)" >&2

generate: $(DEV) ## regenerate generated/ from openapi.yaml
	$(BIN)/openapi-spec-validator openapi.yaml
	$(BIN)/datamodel-codegen
	$(BIN)/python -m app.codegen.routes

client: $(DEV) ## generate a typed Python client from openapi.yaml into build/client (git-ignored)
	$(BIN)/python -m app.codegen.client --output build/client

check-generated: $(DEV)
	@$(BIN)/openapi-spec-validator openapi.yaml
	@$(BIN)/datamodel-codegen --check || { \
	  echo "generated/models.py is out of date: run \`make generate\`" >&2; exit 1; }
	@$(BIN)/python -m app.codegen.routes --check

check-handlers: $(DEV)
	@$(BIN)/taskrun-api check-handlers

# asyncapi.yaml is checked against the AsyncAPI 3.0 JSON Schema of the official package.
ASYNCAPI_SPECS := @asyncapi/specs@6.11.1
ASYNCAPI_TOOLS := .tools/asyncapi-specs-6.11.1
ASYNCAPI_SCHEMA := $(ASYNCAPI_TOOLS)/schemas/3.0.0.json

$(ASYNCAPI_SCHEMA):
	@command -v npm >/dev/null 2>&1 || { \
	  echo "make check needs npm (Node.js) to fetch $(ASYNCAPI_SPECS)" >&2; exit 1; }
	@mkdir -p $(ASYNCAPI_TOOLS)
	cd $(ASYNCAPI_TOOLS) && npm pack --silent $(ASYNCAPI_SPECS) > package.txt
	tar -xzf $(ASYNCAPI_TOOLS)/$$(cat $(ASYNCAPI_TOOLS)/package.txt) -C $(ASYNCAPI_TOOLS) \
	  --strip-components=1 package/schemas/3.0.0.json

check-asyncapi: $(DEV) $(ASYNCAPI_SCHEMA)
	@$(BIN)/python -m app.contract.asyncapi --check $(ASYNCAPI_SCHEMA)

lint: $(DEV) ## ruff, ruff format --check and the import-linter layers
	@$(BIN)/ruff check .
	@$(BIN)/ruff format --check .
	@$(BIN)/lint-imports

typecheck: $(DEV) ## mypy (strict)
	@$(BIN)/mypy

check: check-generated check-handlers check-asyncapi lint typecheck ## generated/ current, every operation handled, asyncapi.yaml, lint, types
	@echo "check: all clean"

fuzz: $(DEV) ## Schemathesis against a running server (EXAMPLES=1000 per operation)
	$(BIN)/python -m tests.fuzz --examples $(or $(EXAMPLES),1000)

clean: ## remove the virtualenvs (the service's and Prefect's server's), .tools and the caches
	rm -rf $(VENV) $(PREFECT_VENV) .tools .pytest_cache .mypy_cache .ruff_cache .hypothesis \
	  .schemathesis

# ---------------------------------------------------------------------------------------
# Benchmarks (tests/bench): wrk against the service as a real process, on SQLite and on
# PostgreSQL (TEST_POSTGRES_URL; set it empty to skip PostgreSQL), then the query cells on
# a table loaded by tests/bench/seed.py (200,000 runs on SQLite, 1,000,000 on PostgreSQL;
# QUICK=1: 20,000) with the plan of each. QUICK=1 takes about three minutes. Results are
# printed and written to bench-results/ (git-ignored).
BENCH_POSTGRES_URL ?= postgresql://postgres@127.0.0.1:5432/test
BENCH_FLAGS = $(if $(filter-out 0 false no,$(QUICK)),--quick)
# Prefect's own server, in a virtualenv of its own, for `make bench-prefect`.
PREFECT_VENV ?= .venv-prefect-server
PREFECT_VERSION := 3.9.1
# prefect 3.9.1 asks for a certifi newer than the registry has: this one instead.
PREFECT_CERTIFI := certifi==2026.10.18
PREFECT_INSTALLED := $(PREFECT_VENV)/.prefect-$(PREFECT_VERSION)-installed

bench-wrk:
	@$(call apt-install,wrk,wrk) || { \
	  echo "make bench needs wrk (Debian package wrk) and could not install it" >&2; exit 1; }

$(PREFECT_INSTALLED): tests/bench/prefect_install.py | $(DEV)
	$(BIN)/python -m tests.bench.prefect_install --venv $(PREFECT_VENV) \
	  --version $(PREFECT_VERSION) --replace $(PREFECT_CERTIFI)
	touch $@

bench: $(DEV) bench-wrk ## wrk against the service on SQLite and PostgreSQL, query cells too (QUICK=1: ~3 min)
	TEST_POSTGRES_URL="$${TEST_POSTGRES_URL-$(BENCH_POSTGRES_URL)}" \
	  $(BIN)/python -m tests.bench $(BENCH_FLAGS)

bench-queries: $(DEV) bench-wrk ## only the query cells, on a loaded table, with their plans
	TEST_POSTGRES_URL="$${TEST_POSTGRES_URL-$(BENCH_POSTGRES_URL)}" \
	  $(BIN)/python -m tests.bench --queries-only $(BENCH_FLAGS)

bench-prefect: $(DEV) bench-wrk $(PREFECT_INSTALLED) ## the same cells against Prefect 3.9.1 too, side by side
	TEST_POSTGRES_URL="$${TEST_POSTGRES_URL-$(BENCH_POSTGRES_URL)}" \
	  $(BIN)/python -m tests.bench --prefect $(BENCH_FLAGS)

OP ?= read
bench-cpu: $(DEV) ## CPU ms per request of each operation in this process, no HTTP server
	$(BIN)/python -m tests.bench.inprocess

profile: $(DEV) ## the top frames by self time of one operation (OP=read|create|set_state|health|filter)
	$(BIN)/python -m tests.bench.profile --operation $(OP)
