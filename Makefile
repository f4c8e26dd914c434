# Developer and CI entry points. `make test` is what CI runs (through .ci/run).

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Touched after a successful install: the venv is reinstalled only when pyproject.toml changes.
VENV_STAMP := $(VENV)/.installed
# Directories that may not exist in a fresh clone are skipped.
LINT_PATHS := $(wildcard src tests bench examples)
PYTEST_ARGS ?=

.PHONY: help venv lint format test demo services-up services-down bench waf-eval fuzz

help:
	@echo "make venv           create .venv and install bastion with its dev extras"
	@echo "make lint           ruff check, ruff format --check, mypy --strict"
	@echo "make format         apply ruff's formatting and safe fixes"
	@echo "make test           lint, then pytest with coverage against throwaway Redis/PostgreSQL"
	@echo "make demo           run the demo gateway"
	@echo "make services-up    start the test Redis/PostgreSQL (eval \"\$$(scripts/services.sh env)\")"
	@echo "make services-down  stop them"
	@echo "make waf-eval       inspection detection, false positives and latency → docs/waf.md"
	@echo "make fuzz           fuzz the inspection engine for FUZZ_SECONDS (default 600)"

venv: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

lint: venv
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy

format: venv
	$(BIN)/ruff check --fix $(LINT_PATHS)
	$(BIN)/ruff format $(LINT_PATHS)

# Services are stopped by scripts/test.sh whatever pytest's outcome; its exit code is kept.
test: venv lint
	PYTEST_ARGS='$(PYTEST_ARGS)' scripts/test.sh

demo: venv
	$(BIN)/bastion demo

services-up:
	scripts/services.sh up

services-down:
	scripts/services.sh down

# Benchmarks → docs/benchmarks.md (BENCH_ARGS='--quick' or '--only gateway'; see bench/run.py).
bench: venv
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# Coverage-guided fuzzing of the inspection engine for FUZZ_SECONDS (the suite runs it briefly).
FUZZ_SECONDS ?= 600
fuzz: venv
	$(BIN)/python tests/fuzz/fuzz_inspection.py -max_total_time=$(FUZZ_SECONDS) -max_len=8192

# Inspection engine over the CRS regression and benign corpora at paranoia 1-4 → docs/waf.md.
WAF_CORPUS ?= ../shared/corpus/waf
waf-eval: venv
	$(BIN)/python -m bastion.inspect.report --corpus $(WAF_CORPUS) --out docs/waf.md
