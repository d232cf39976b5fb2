# Developer and CI entry points. `make test` is the one command that runs every test; it
# creates .venv with what the tests need (the stock MLflow client among them) on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: test unit e2e config clean

test: $(VENV)/.installed config
	$(PY) -m pytest tests

unit: $(VENV)/.installed
	$(PY) -m pytest tests/unit

e2e: $(VENV)/.installed
	$(PY) -m pytest tests/e2e

# The compose file must parse with no .env at all (a fresh clone).
config:
	env -u COMPOSE_FILE -u COMPOSE_PROJECT_NAME docker compose -f docker-compose.yml config -q

$(VENV)/.installed: tests/requirements.txt docker/mlflow/pyproject.toml trainer/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r tests/requirements.txt
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache
