# Developer and CI entry points. `make test` is the one command that runs every test, layer by
# layer (unit, then integration, then end to end), stopping at the first layer that fails; it
# creates .venv with what the tests need (the stock MLflow client among them) on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Slowest tests of each layer, so a slow one is noticed.
PYTEST := $(PY) -m pytest --durations=10

.PHONY: test test-unit test-integration test-e2e benchmark-smoke lint config clean

test: $(VENV)/.installed config test-unit test-integration test-e2e

test-unit: $(VENV)/.installed
	$(PYTEST) tests/unit

test-integration: $(VENV)/.installed
	$(PYTEST) tests/integration

test-e2e: $(VENV)/.installed config
	$(PYTEST) tests/e2e

# The side-by-side benchmark against stock MLflow, every path once with tiny sizes: CI checks
# that it runs; its figures mean nothing at these sizes (README, Benchmarks, for real ones).
benchmark-smoke: $(VENV)/.installed config
	$(PY) -m tests.benchmarks.versus_stock --smoke

# ruff for Python, shellcheck for the scripts (both from .venv).
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/shellcheck -S warning scripts/* tests/standins/*.sh tests/standins/*/*.sh .ci/run

# The compose file must parse with no .env at all (a fresh clone).
config:
	env -u COMPOSE_FILE -u COMPOSE_PROJECT_NAME docker compose -f docker-compose.yml config -q

$(VENV)/.installed: tests/requirements.txt docker/platform/pyproject.toml trainer/pyproject.toml docker/tensorboard/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r tests/requirements.txt
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
