# Two commands on a fresh machine: `make run` serves the bundled model, `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000

.PHONY: install install-dev deploy-tools system-packages run test test-fast lint format bench attacks docker-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Stamps make re-runs instant until pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

# Offline checkers of deploy/ (tests/test_deploy.py), in a venv of their own: checkov pins many packages.
DEPLOY_VENV ?= .venv-deploy
DEPLOY_TOOLS := checkov==3.3.30 kubernetes-validate==1.37.0
$(DEPLOY_VENV)/.installed:
	$(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(DEPLOY_VENV)/bin/python -m pip install --quiet $(DEPLOY_TOOLS)
	touch $@

deploy-tools: $(DEPLOY_VENV)/.installed

install-dev: $(VENV)/.installed-dev

# The Debian packages the tests run for real (listed in the script); `make test` installs them itself as root.
system-packages:
	scripts/system-packages install

run: install
	PORT=$(PORT) $(BIN)/python -m service

# The whole suite. Without root it runs what this machine has; the closing summary names what did not run.
test: install-dev deploy-tools
	@scripts/system-packages if-root
	$(BIN)/python -m pytest

test-fast: install-dev
	$(BIN)/python -m pytest -m "not slow"

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install-dev
	$(BIN)/python -m bench

attacks: install-dev
	$(BIN)/python -m bench.attacks

docker-test: install-dev
	bash tests/container/run.sh

clean:
	rm -rf $(VENV) $(DEPLOY_VENV) .pytest_cache .mypy_cache .ruff_cache
