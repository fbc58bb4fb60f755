# The two commands: `make run` (the demo service) and `make test` (everything CI runs).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install run replay bench bench-quick bench-deps profile soak test lint typecheck pytest system-deps clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(STAMP)

run: install
	$(BIN)/cachegate serve --host $(HOST) --port $(PORT)

UNLEASH_VERSION := 7.5.1
UNLEASH := .cache/unleash/node_modules/unleash-server/package.json

# The Unleash server the end-to-end tests start (pinned; npm, into an ignored folder).
$(UNLEASH):
	npm install --prefix .cache/unleash --no-audit --no-fund --loglevel=error unleash-server@$(UNLEASH_VERSION)

# The rollout stages measured against the running demo (start `make run` first).
replay: install
	$(BIN)/cachegate replay --url http://$(HOST):$(PORT)

BENCH := .venv-bench
BENCH_STAMP := $(BENCH)/.installed

# Benchmark peers live in their own environment, never in the package's dependencies.
$(BENCH_STAMP): pyproject.toml benchmarks/requirements.txt
	test -x $(BENCH)/bin/python || $(PYTHON) -m venv $(BENCH)
	$(BENCH)/bin/python -m pip install -q --upgrade pip
	$(BENCH)/bin/python -m pip install -q -e '.[crypto]' -r benchmarks/requirements.txt
	touch $@

bench-deps:
	@command -v redis-server >/dev/null && command -v wrk >/dev/null && command -v valgrind >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server wrk valgrind)

bench: install $(BENCH_STAMP) bench-deps
	$(BENCH)/bin/python -m benchmarks

bench-quick: install $(BENCH_STAMP) bench-deps
	$(BENCH)/bin/python -m benchmarks --quick

# Call trees (pyinstrument) of the hot paths: Redis hit, MemoryStore hit, flags-off bypass and
# L2 all-hit, each on a private redis-server; writes benchmarks/results/profile-<path>.txt, the
# flags-off bypass step by step to benchmarks/results/steps-flags-off.md, and the in-process
# paths' instructions per request (callgrind) to benchmarks/results/instructions.md.
profile: $(BENCH_STAMP) bench-deps
	$(BENCH)/bin/python -m benchmarks.profiles
	$(BENCH)/bin/python -m benchmarks.steps
	$(BENCH)/bin/python -m benchmarks.instructions

# 200 clients for 60 s through uvicorn against a private redis-server; writes
# benchmarks/results/soak.md and fails on any failed request or memory growth.
soak: install
	@command -v redis-server >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server)
	$(BIN)/python -m benchmarks.soak

# Debian packages the suite uses (promtool and prometheus); installed only when missing.
system-deps: $(UNLEASH)
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus)
	@command -v redis-server >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server)

lint: install
	$(BIN)/ruff check src tests dashboards
	$(BIN)/ruff format --check src tests dashboards

typecheck: install
	$(BIN)/mypy --strict src

pytest: install system-deps
	$(BIN)/pytest -q

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache .hypothesis
