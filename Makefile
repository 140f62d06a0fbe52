# The two commands a new machine needs:  `make serve`  and  `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 0.0.0.0
PORT ?= 8000
DEMO_DIR ?= var/demo
DEMO_BUNDLE := $(DEMO_DIR)/demo.tar.gz

export HOST PORT

.PHONY: help venv demo serve test check-tools lint format clean bench-compress bench-serve bench-swap \
	bench-catalog bench-scoring bench-int8-activations bench-model-cost

help:
	@echo "make serve   build the demo bundle if needed and serve on $$HOST:$$PORT (default 0.0.0.0:8000)"
	@echo "make test    set up and run lint, type checks and the whole test suite"
	@echo "             (needs redis-server, nginx, docker-compose, chromium: sudo .ci/tools installs them)"
	@echo "make bench-compress DATA=../shared/data/amazon-beauty.txt   compression benchmark (long)"
	@echo "make bench-serve [DATA=...] [SERVE_ARGS='--bundle DIR']        serving benchmark (~16 min)"
	@echo "make bench-swap [DATA=...] [SWAP_ARGS='--cycles 100']          swap / fault benchmark (~10 min)"
	@echo "make bench-catalog [DATA=...] [CATALOG_ARGS='--items 1000']    live catalog under load (~3 min)"
	@echo "make bench-scoring                                              int8 rows vs pq4 codes, top 10 (~1 min)"
	@echo "make bench-model-cost                                            model CPU per request by batch size (~30 s)"
	@echo "make bench-int8-activations                                     float, static and dynamic INT8 encoder (~2 min)"

# The environment: serving deps + the offline pipeline (CPU torch, pinned) + dev and bench tools.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[pipeline,dev,bench]'
	touch $@

venv: $(VENV)/.installed

# A demo bundle from the project's own synthetic data (about a minute on 2 cores).
$(DEMO_BUNDLE): | $(VENV)/.installed
	$(PY) -m models demo --out $(DEMO_DIR) --version demo

demo: $(DEMO_BUNDLE)

serve: venv demo
	BOOTSTRAP_BUNDLE=$(DEMO_BUNDLE) $(PY) -m service

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

# The programs the suite runs (redis-server, nginx, docker-compose, chromium): stop in the
# first second, naming the command that installs the missing ones (`sudo .ci/tools`).
check-tools:
	@PYTHON=$(PYTHON) .ci/tools --check

test: check-tools venv lint
	$(PY) -m pytest

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache

# The compression benchmark on real data (issues 3, 18), never part of `make test`:
#   make bench-compress DATA=../shared/data/amazon-beauty.txt [BENCH_ARGS='--seeds 3']
#   (BENCH_ARGS='--teacher benchmarks/work/amazon-beauty/teacher-seed0.pt' reuses the last
#   run's teacher) writes benchmarks/results/compress-<dataset>.{json,md,png} and
#   compress-<dataset>-ranks.npz; bundles and the teacher go to benchmarks/work/.
DATA ?= ../shared/data/amazon-beauty.txt
BENCH_ARGS ?=

bench-compress: venv
	$(PY) -m benchmarks.compress --data $(DATA) $(BENCH_ARGS)

# Full-catalog top 10 from int8 rows vs from 4-bit PQ codes (the service's scorers), pinned.
bench-scoring: venv
	taskset -c 1 $(PY) -m benchmarks.scoring --out benchmarks/results/scoring.json

# Static vs dynamic INT8 activations of the served encoder (speed, batch independence), pinned.
bench-int8-activations: venv
	taskset -c 1 $(PY) -m benchmarks.int8_activations --out benchmarks/results/int8-activations.json

# The model's CPU time per served request by batch size (the speed-only Beauty bundle), pinned.
bench-model-cost: venv
	taskset -c 1 $(PY) -m benchmarks.model_cost --data $(DATA) --out benchmarks/results/model-cost.json

# The serving benchmark (issue 4), never part of `make test`: each variant's server pinned to
# core 0, locust on core 1, a ladder of offered loads.
#   make bench-serve [DATA=../shared/data/amazon-beauty.txt] [SERVE_ARGS='--duration 10 --bundle DIR']
# serves the newest bundle of `make bench-compress` (benchmarks/work/<dataset>/) and writes
# benchmarks/results/serve.{json,md,png}. wrk is optional (the ceiling's closed-loop figure).
SERVE_ARGS ?=

bench-serve: venv
	@command -v wrk >/dev/null || apt-get install -y -q wrk >/dev/null 2>&1 \
		|| echo "wrk not installed and not installable: its figures are skipped"
	$(PY) -m benchmarks.serve --data $(DATA) $(SERVE_ARGS)

# The swap benchmark (issue 5), never part of `make test`: a two-replica fleet on one Redis,
# 20 swaps under load, 100 swap cycles of memory, Redis stopped under load, fuzzer and corpus.
# Writes benchmarks/results/swap.{json,md,png}.
SWAP_ARGS ?=

bench-swap: venv
	$(PY) -m benchmarks.swap --data $(DATA) $(SWAP_ARGS)

# The live-catalog benchmark, never part of `make test`: the swap benchmark's two-replica
# fleet under load, 1,000 items made unavailable (leaks counted in every answer), 1,000 new
# items added, FLUSHALL under load, then a replica started with no bootstrap bundle.
# Writes benchmarks/results/catalog.{json,md}.
CATALOG_ARGS ?=

bench-catalog: venv
	$(PY) -m benchmarks.catalog_live --data $(DATA) $(CATALOG_ARGS)
