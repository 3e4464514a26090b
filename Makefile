# margincall: one entry point for setup, tests, demo, benchmarks and lint.
SHELL := /bin/bash
VENV := .venv
ANVIL_BIN := $(CURDIR)/node_modules/@foundry-rs/anvil-linux-amd64/bin
# ape-vyper finds the compiler with `which vyper`; ape-foundry finds `anvil` on PATH.
export PATH := $(CURDIR)/$(VENV)/bin:$(ANVIL_BIN):$(PATH)
export VIRTUAL_ENV := $(CURDIR)/$(VENV)

.PHONY: setup setup-lint test demo story bench-gas bench-cli bench-peers lint clean check-install

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

# the dashboard's wallet bundle (viem, from package-lock.json), built into the package: not committed
WALLET_BUNDLE := src/margincall/web/static/wallet.bundle.js
$(WALLET_BUNDLE): src/margincall/web/js/wallet.js node_modules/.installed
	node_modules/.bin/esbuild $< --bundle --minify --format=iife --target=es2020 \
		--log-level=warning --outfile=$@

# Debian's Chromium for the dashboard's browser tests (Playwright from PyPI drives it; it cannot
# download a browser of its own here). Installed only when missing; apt-get needs root.
.PHONY: browser
browser:
	command -v chromium > /dev/null || (apt-get update && apt-get install -y chromium)

# Ape recompiles a contract when its own file changes, not when a module or interface it imports
# does (contracts/modules/ is excluded from compile), and then runs stale bytecode: compile
# everything again whenever one of those changed since the last compile.
COMPILED := .build/.modules-compiled
$(COMPILED): $(wildcard contracts/modules/*.vy contracts/interfaces/*.vyi) $(VENV)/.installed
	ape compile --force > /dev/null
	touch $@

setup: $(VENV)/.installed node_modules/.installed $(WALLET_BUNDLE) browser $(COMPILED)

# The suite in two processes, one per core: ALONGSIDE (the end-to-end tests, which mostly wait on
# blocks and on the bots as real processes; the CLI as new processes; the state machines, so
# that the two halves take about as long) beside everything else.
# Each process starts its own Anvil (`host: auto`) and has its own pytest temp dir (two
# sessions sharing /tmp/pytest-of-$$USER delete each other's). The second's output is printed
# when it is done; the target fails if either fails. `make test-serial` runs them one by one.
# Each prints its 15 slowest tests (the suite aims at 20 minutes on 2 cores).
ALONGSIDE ?= tests/e2e tests/stateful tests/unit/test_cli_local.py
test: setup lint
	@tmp=$$(mktemp -d); \
	echo "ape test $(ALONGSIDE), in the background: $$tmp/alongside.log"; \
	ape test $(ALONGSIDE) -q -p no:cacheprovider --durations=15 --basetemp=$$tmp/alongside \
		> $$tmp/alongside.log 2>&1 & pid=$$!; \
	ape test tests -q --durations=15 $(foreach t,$(ALONGSIDE),--ignore=$(t)) --basetemp=$$tmp/rest; \
		rc=$$?; \
	echo "waiting for ape test $(ALONGSIDE) (pid $$pid)"; \
	wait $$pid; rc2=$$?; \
	echo "--- ape test $(ALONGSIDE) (exit $$rc2) ---"; cat $$tmp/alongside.log; rm -rf $$tmp; \
	test $$rc -eq 0 && test $$rc2 -eq 0

.PHONY: test-serial
test-serial: setup lint
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

# margincall next to Morpho Blue 1.0.0 on one Anvil (same feed, same OpenZeppelin token):
# solcjs compiles Morpho and bench/peers/ (cached in .build/peers), then the side-by-side
# table goes into docs/benchmarks.md (margincall.bench.peers)
bench-peers: setup
	ape run bench_peers

lint: setup setup-lint
	# every contract compiles (tests/unit/test_bytecode_size.py checks EIP-170)
	ape compile > /dev/null
	# and the protocol's contracts compile without a single compiler warning
	for c in contracts/*.vy; do vyper -W error -f bytecode_runtime $$c > /dev/null || exit 1; done
	ruff check src scripts bots tests
	ruff format --check src scripts bots tests
	# Vyper formatting (line length as ruff's); fix with `.venv-lint/bin/mamushi -l 100 contracts`
	$(LINT_VENV)/bin/mamushi --check -l 100 contracts
	# the house's layers and no import cycle (the importlinter contracts in pyproject.toml)
	PYTHONPATH=src $(LINT_VENV)/bin/lint-imports --no-logo --no-cache

# `pip install .` into a throwaway venv (pyproject's dependencies only: no lock, no Ape
# plugins): the CLI starts and the SDK, the keeper step and the simulator import.
CHECK_VENV := $(shell mktemp -d -u /tmp/margincall-install.XXXXXX)
check-install: setup
	$(VENV)/bin/uv venv -q --python 3.11 $(CHECK_VENV)
	$(VENV)/bin/uv pip install -q --python $(CHECK_VENV)/bin/python .
	cd /tmp && $(CHECK_VENV)/bin/margincall --help > /dev/null
	cd /tmp && $(CHECK_VENV)/bin/python -c "import margincall.sdk, margincall.keeper.step, \
	margincall.sim; from importlib.resources import files; \
	assert files('margincall').joinpath('py.typed').is_file()"
	rm -rf $(CHECK_VENV)

clean:
	rm -rf .build .cache $(VENV) $(LINT_VENV) node_modules

.PHONY: clean-anvil
# Anvil keeps old chain states on disk under ~/.foundry/anvil/tmp/anvil-state-* and deletes them
# when it exits cleanly; an Anvil that a test, a bot or a simulation killed leaves its directory
# behind (measured on a 2-core workstation: 3.1 GB after 75 minutes of test runs; left alone for
# days it filled a 250 GB disk). Refused while an Anvil runs: its state would go with it.
ANVIL_TMP := $(HOME)/.foundry/anvil/tmp
clean-anvil:
	@if pgrep -x anvil >/dev/null; then \
		echo "clean-anvil: an Anvil is running (pgrep -x anvil); stop it first" >&2; exit 1; fi
	@du -sh $(ANVIL_TMP) 2>/dev/null || true
	rm -rf $(ANVIL_TMP)/anvil-state-*

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

.PHONY: mutants
# Mutation check of the state machine (tests/stateful/mutants.py): every mutant of the engine,
# two at a time (one per core), each in a process of its own, stopped at the machine's first
# failure or after its time budget; a line per mutant and a table; exits 1 unless every
# mutant deploys and is killed.
mutants: setup
	python -m tests.stateful.mutants

.PHONY: bench
# Every benchmark, into docs/benchmarks.md and docs/img/: gas (ape run bench_gas), margincall
# next to Morpho Blue (ape run bench_peers), then
# scripts/bench.py: keeper scan throughput, the stress simulator on every scenario against the
# liquidate-at-maintenance baseline (500 traders), a sensitivity sweep, the section 7 summary.
# Each simulation starts and stops an Anvil of its own. About half an hour on 2 cores.
bench: setup
	ape run bench_gas
	ape run bench_peers
	python scripts/bench.py
	$(MAKE) bench-campaign

.PHONY: bench-campaign
# The crash campaign (margincall.bench.campaign): every path of margincall.sim.paths.SCENARIOS
# (the five named scenarios and the CSV crash paths) x seeds 1, 2 and 3, 500 traders, each run
# `margincall simulate --baseline --check`; the worst case per path, every run and every miss
# into the campaign block of docs/benchmarks.md; exits 1 on any miss (after writing the block).
# Sequential by default (30 runs, each phased + baseline: hours at 500 traders on 2 cores);
# CAMPAIGN_ARGS="--jobs 2" halves the wall time, CAMPAIGN_ARGS="--gas-price-gwei 50" runs the
# 50-gwei campaign into a block of its own, CAMPAIGN_ARGS="--keep DIR" saves each run's JSON.
CAMPAIGN_ARGS ?=
bench-campaign: setup
	python -m margincall.bench.campaign --write docs/benchmarks.md $(CAMPAIGN_ARGS)
