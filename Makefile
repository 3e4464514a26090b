# margincall: one entry point for setup, tests, demo, benchmarks and lint.
SHELL := /bin/bash
VENV := .venv
ANVIL_BIN := $(CURDIR)/node_modules/@foundry-rs/anvil-linux-amd64/bin
# ape-vyper finds the compiler with `which vyper`; ape-foundry finds `anvil` on PATH.
export PATH := $(CURDIR)/$(VENV)/bin:$(ANVIL_BIN):$(PATH)
export VIRTUAL_ENV := $(CURDIR)/$(VENV)

.PHONY: setup test demo bench-gas lint clean

$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	test -x $(VENV)/bin/uv || $(VENV)/bin/python -m pip install -q uv==0.13.9
	$(VENV)/bin/uv pip sync -q requirements.lock
	$(VENV)/bin/uv pip install -q --no-deps -e .
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

setup: $(VENV)/.installed node_modules/.installed

test: setup lint
	ape test tests -q

demo: setup
	ape run demo

bench-gas: setup
	ape run bench_gas

lint: setup
	# every contract compiles (tests/unit/test_bytecode_size.py checks EIP-170)
	ape compile > /dev/null
	ruff check src scripts tests
	ruff format --check src scripts tests

clean:
	rm -rf .build .cache $(VENV) node_modules
