# One command per task. Each installs what is missing first (Debian packages, then a .venv).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get
PYTEST_ARGS ?=

.PHONY: setup system demo test lint unit bench clean

setup: system $(STAMP)

# Debian packages, installed only when their command is missing; `apt-get update` runs once, only then.
system:
	@missing=""; \
	command -v nix-instantiate >/dev/null 2>&1 || missing="$$missing nix-bin"; \
	command -v git >/dev/null 2>&1 || missing="$$missing git"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	$(PYTHON) -c 'import venv, ensurepip' >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages:$$missing"; \
	  $(APT) update -qq && $(APT) install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: setup
	NIXGITOPS=$(CURDIR)/$(BIN)/nixgitops examples/demo.sh

lint: setup
	$(BIN)/ruff check controller webhooks tests bench
	$(BIN)/ruff format --check controller webhooks tests bench
	$(BIN)/mypy controller webhooks
	$(BIN)/lint-imports

unit: setup
	$(BIN)/pytest $(PYTEST_ARGS)

test: setup lint unit

bench: setup
	$(BIN)/python bench/run.py
	$(BIN)/python bench/latency.py
	$(BIN)/python bench/latency.py --webhook

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
