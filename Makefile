# Flightlog: one strict Makefile with boring verbs. `make help` lists them.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
MAKEFLAGS += --warn-undefined-variables --no-builtin-rules

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS := server,embedded,dev,pandas

ARGS ?=
PYTEST_ARGS ?=

.PHONY: help install run proto proto-check lint typecheck test bench migrate clean

help: ## List the targets.
	@echo "usage: make TARGET [ARGS=...] [PYTEST_ARGS=...]"
	@awk 'BEGIN { FS = ":.*## " } /^[a-zA-Z_-]+:.*## / { printf "  %-12s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The stamp makes `make test` install only when pyproject.toml has changed since the last install.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

install: $(STAMP) ## Create .venv and install the project with all extras (editable).

run: $(STAMP) ## Start a dev server on localhost:50051 (embedded PostgreSQL unless DATABASE_URL); ARGS=... passes options.
	$(BIN)/python -m flightlog_server dev $(ARGS)

proto: $(STAMP) ## Regenerate client/flightlog/v1 and docs/api.md from protos/ with the pinned tools.
	protos/generate.sh client
	$(BIN)/python protos/gen_docs.py

proto-check: $(STAMP) ## Fail if the committed generated code differs from what protos/ generates.
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	protos/generate.sh "$$tmp"; \
	if ! diff -r "$$tmp/flightlog/v1" client/flightlog/v1 -x __pycache__; then \
		echo "proto-check: client/flightlog/v1 is out of date with protos/; run 'make proto'." >&2; \
		exit 1; \
	fi; \
	echo "proto-check: generated code is up to date."

lint: $(STAMP) ## buf lint/format/breaking, proto-check, ruff check/format, then typecheck.
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code
	@if git rev-parse --verify --quiet 'main^{commit}' >/dev/null \
		&& [ -n "$$(git ls-tree -d main protos)" ]; then \
		echo "$(BIN)/buf breaking --against '.git#branch=main,subdir=protos'"; \
		$(BIN)/buf breaking --against '.git#branch=main,subdir=protos'; \
	else \
		echo "buf breaking: skipped (no commit on branch main contains protos/)"; \
	fi
	$(MAKE) --no-print-directory proto-check
	$(BIN)/python protos/gen_docs.py --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(MAKE) --no-print-directory typecheck

typecheck: $(STAMP) ## mypy --strict on server/flightlog_server, client/flightlog and tests.
	$(BIN)/mypy server/flightlog_server client/flightlog protos/gen_docs.py tests

test: $(STAMP) ## Run the test suite (TEST_DATABASE_URL=... to use a running PostgreSQL); PYTEST_ARGS=... passes options.
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP) ## Run the benchmarks (tests/bench); ARGS=... passes options.
	$(BIN)/python -m tests.bench $(ARGS)

migrate: $(STAMP) ## Apply the Alembic migrations to the database at DATABASE_URL.
	$(BIN)/python -m flightlog_server migrate $(ARGS)

clean: ## Remove .venv, .data, caches, build artifacts and generated Go code.
	rm -rf $(VENV) .data build dist .pytest_cache .mypy_cache .ruff_cache .hypothesis \
		gen tests/polyglot/go/.cache
	find . -path ./.git -prune -o \( -name __pycache__ -o -name '*.egg-info' \) -type d -print0 \
		| xargs -0 rm -rf
