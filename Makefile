# Quick start: `make run` serves zones/ on 127.0.0.1:1053; `make test` runs every check.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck unit venv clean bench e2e e2e-build fuzz

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,fast]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/kdns serve --zones zones --listen 127.0.0.1:1053 --external-zone example.test

lint: $(STAMP)
	$(BIN)/ruff check kdns tests bench testkit
	$(BIN)/ruff format --check kdns tests bench testkit

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q --ignore=tests/e2e

# Builds kube-apiserver, kube-controller-manager, etcd and CoreDNS from Go modules (once; reused).
e2e-build:
	tests/e2e/build.sh

e2e: $(STAMP) e2e-build
	$(BIN)/pytest -q tests/e2e

test: lint typecheck unit e2e

bench: $(STAMP)
	@command -v dnsperf >/dev/null && command -v nsd >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dnsperf nsd)
	$(BIN)/python bench/run.py --append bench/RESULTS.md
	$(BIN)/python bench/cores.py --append bench/RESULTS.md
	$(BIN)/python bench/propagation.py

# The long fuzz run (make test runs 5,000 packets of it).
fuzz: $(STAMP)
	$(BIN)/python -m testkit.fuzz --packets 100000

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
