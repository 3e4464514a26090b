# margincall: one entry point for setup, tests, demo, benchmarks and lint.
SHELL := /bin/bash
VENV := .venv
ANVIL_BIN := $(CURDIR)/node_modules/@foundry-rs/anvil-linux-amd64/bin
# ape-vyper finds the compiler with `which vyper`; ape-foundry finds `anvil` on PATH.
export PATH := $(CURDIR)/$(VENV)/bin:$(ANVIL_BIN):$(PATH)
export VIRTUAL_ENV := $(CURDIR)/$(VENV)

.PHONY: setup setup-lint test demo story bench-gas bench-cli lint clean

$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	test -x $(VENV)/bin/uv || $(VENV)/bin/python -m pip install -q uv==0.13.9
	$(VENV)/bin/uv pip sync -q requirements.lock
	$(VENV)/bin/uv pip install -q --no-deps -e .
	touch $@

# mamushi (Vyper formatter) pins click 8.1.3, so it lives in its own venv, from its own lock.
LINT_VENV := .venv-lint
$(LINT_VENV)/.installed: requirements-lint.lock $(VENV)/.installed
	test -x $(LINT_VENV)/bin/python || $(VENV)/bin/python -m venv $(LINT_VENV)
	$(VENV)/bin/uv pip sync -q --python $(LINT_VENV)/bin/python requirements-lint.lock
	touch $@

setup-lint: $(LINT_VENV)/.installed

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

setup: $(VENV)/.installed node_modules/.installed

test: setup lint
	ape test tests -q

# a crash with ~50 traders, the keeper and the notifier as real processes, and the report
demo: setup
	ape run demo

# the scripted walk-through of one margin call, cure, tranches and a bankruptcy
story: setup
	ape run story

bench-gas: setup
	ape run bench_gas

# CLI wall time (`margincall status` and others, repeated runs): the cli-speed block of
# docs/benchmarks.md
bench-cli: setup
	python -m margincall.bench.cli_speed --repeat 10 --write docs/benchmarks.md

lint: setup setup-lint
	# every contract compiles (tests/unit/test_bytecode_size.py checks EIP-170)
	ape compile > /dev/null
	# and the protocol's contracts compile without a single compiler warning
	for c in contracts/*.vy; do vyper -W error -f bytecode_runtime $$c > /dev/null || exit 1; done
	ruff check src scripts bots tests
	ruff format --check src scripts bots tests
	# Vyper formatting (line length as ruff's); fix with `.venv-lint/bin/mamushi -l 100 contracts`
	$(LINT_VENV)/bin/mamushi --check -l 100 contracts

clean:
	rm -rf .build .cache $(VENV) $(LINT_VENV) node_modules

.PHONY: fuzz
# Deep stateful campaign in titanoboa (tests/stateful/test_engine_machine.py): MARGINCALL_FUZZ=deep
# selects the deep Hypothesis profile: 1,000 examples per collateral decimals, each of 20 to 29
# steps after the seeding step (shorter ones are rejected, not counted). The 6- and 18-decimal
# campaigns run side by side, one per core, and each prints its summary (examples, steps, partial
# tranches, full closes, bad debts, refusals). Plain pytest: no Anvil, no Ape fixtures.
FUZZ_TEST := tests/stateful/test_engine_machine.py
fuzz: setup
	MARGINCALL_FUZZ=deep pytest $(FUZZ_TEST) -q -s -p no:ape_test --noconftest -k usdc6 & \
	pid=$$!; \
	MARGINCALL_FUZZ=deep pytest $(FUZZ_TEST) -q -s -p no:ape_test --noconftest -k dai18; \
	rc=$$?; wait $$pid || rc=1; exit $$rc

.PHONY: bench
# Every benchmark, into docs/benchmarks.md and docs/img/: gas (ape run bench_gas), then
# scripts/bench.py: keeper scan throughput, the stress simulator on every scenario against the
# liquidate-at-maintenance baseline (500 traders), a sensitivity sweep, the section 7 summary.
# Each simulation starts and stops an Anvil of its own. About half an hour on 2 cores.
bench: setup
	ape run bench_gas
	python scripts/bench.py
