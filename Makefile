# Two commands on a fresh machine: `make run` (the pipeline) and `make test`.
# The environment (.venv) is built from requirements.lock with uv, and rebuilt
# only when the lock or setup.py changes.

SHELL := /bin/bash
PYTHON_VERSION := $(shell cat .python-version)
UV_VERSION := 0.13.9
UV := .tools/uv/bin/uv
VENV := .venv
STAMP := $(VENV)/.installed

DATASET ?= 1m
DATA_DIR ?=
OUTPUT_DIR ?=
PYTEST_ARGS ?=
# make test runs the suite in this many processes, handed out a module at a time,
# the longest first (pytest-xdist --dist loadfile; tests/conftest.py
# LONGEST_MODULES; docs/testing.md has the times): most of a test's time
# is single-threaded (Beam's in-process runner, imports), so two processes use two
# cores.
TEST_WORKERS ?= 2

RUN_ARGS := --dataset $(DATASET) $(if $(DATA_DIR),--data-dir $(DATA_DIR)) \
	$(if $(OUTPUT_DIR),--output-dir $(OUTPUT_DIR))

.PHONY: run replay test test-fast lint fuzz env lock clean flink-up flink-down flink-status flink-install spark-up spark-down spark-status bench-engines bench bench-serving bench-train bench-deepctr bench-catalogue bench-recommender bench-warm-start bench-replay bench-replay-1m bench-transform-window bench-time-features report tensorboard browser

run: $(STAMP)
	$(VENV)/bin/recsys run $(RUN_ARGS)

# Continuous training replayed: MovieLens-100K span after span on one folder, each
# span learning from those before it and judged on itself (docs/continuous-training.md).
# Resumable: run it again after an interruption. DATA_DIR as for `make run`.
EVERY ?= 1w
REPLAY_DIR ?= runs/replay-movielens-100k-$(EVERY)
replay: $(STAMP)
	$(VENV)/bin/recsys replay --dataset 100k $(if $(DATA_DIR),--data-dir $(DATA_DIR)) \
	  --every $(EVERY) --output-dir $(REPLAY_DIR)

test: $(STAMP) browser flink-install lint
	$(VENV)/bin/python -m pytest tests -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# Imports run down the layers of docs/architecture.md (.importlinter), and ruff is clean.
lint: $(STAMP)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check .

# Chromium for the TensorBoard browser test: Debian's package where apt-get can
# install it; elsewhere that test says it skipped and why.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "Installing Debian's chromium for the TensorBoard browser test..."; \
	    apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || \
	    { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; }; \
	  else echo "note: install Chromium (Debian: apt-get install chromium) to run the TensorBoard browser test"; fi; }

# Unit tests only: no pipeline runs, and no fixture that runs Beam or trains models.
test-fast: $(STAMP) lint
	$(VENV)/bin/python -m pytest tests -m "not e2e and not slow" $(PYTEST_ARGS)

# The MovieLens parsers' fuzz tests at length: FUZZ_EXAMPLES examples per test
# (make test runs up to FUZZ_CI_EXAMPLES, default 150, per test).
FUZZ_EXAMPLES ?= 5000
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) \
	  $(VENV)/bin/python -m pytest tests/test_fuzz_parsing.py $(PYTEST_ARGS)

env: $(STAMP)

# A finished run's comparison table, and TensorBoard on it (training and evaluation).
RUN_DIR ?= runs/movielens-$(DATASET)
report: $(STAMP)
	$(VENV)/bin/recsys report $(RUN_DIR)

PORT ?= 6006
tensorboard: $(STAMP)
	$(VENV)/bin/recsys tensorboard $(RUN_DIR) --port $(PORT)

# uv itself, in a private venv: the only thing bootstrapped from the system python3.
$(UV):
	python3 -m venv .tools/uv
	.tools/uv/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# Python $(PYTHON_VERSION): uv uses one on PATH or from pyenv, else installs its own.
$(STAMP): requirements.lock setup.py | $(UV)
	@echo "Creating $(VENV) (Python $(PYTHON_VERSION)) from requirements.lock..."
	$(UV) venv --allow-existing --python $(PYTHON_VERSION) $(VENV)
	$(UV) pip sync --python $(VENV)/bin/python requirements.lock
	$(UV) pip install --python $(VENV)/bin/python --no-deps -e .
	@touch $(STAMP)

# Re-resolve the pinned lock from requirements.in (needs only PyPI).
lock: | $(UV)
	$(UV) pip compile requirements.in -o requirements.lock --python-version 3.10 \
		--python-platform x86_64-manylinux2014

# The whole pipeline at MovieLens-1M scale (bench/results.json: time per component,
# peak memory, training speed, AUC), then the serving speed of the models it pushed.
BENCH_DIR := runs/bench-1m
bench: $(STAMP)
	$(VENV)/bin/python bench/pipeline_1m.py --work-dir $(BENCH_DIR) --output bench/results.json
	$(VENV)/bin/python bench/serving_speed.py $(BENCH_DIR)/run --output bench/results/serving_speed_1m.json

# The same 1M-scale release through the DirectRunner and through the local Flink
# cluster (started and stopped here unless it is up): per-component seconds and peak
# memory side by side (docs/performance.md#beam-engines).
bench-engines: $(STAMP)
	$(VENV)/bin/python bench/engines.py --data-dir $(BENCH_DIR)/data/ml-1m \
	  --output bench/results/engines_1m.json

# In-process serving speed of a finished run's pushed models: predictions/s at
# batch 1, 100 and 10,000, and recommend(k=10) latency.
bench-serving: $(STAMP)
	@test -d $(RUN_DIR)/serving || { echo "no pushed models in $(RUN_DIR)/serving: make run first"; exit 1; }
	$(VENV)/bin/python bench/serving_speed.py $(RUN_DIR) --output bench/results/serving_speed.json

# Stops a benchmark's recipe unless RUN_DIR holds a finished run to read.
NEED_FINISHED_RUN = @test -d $(RUN_DIR)/tfx/Transform || { echo "no finished run in $(RUN_DIR): make run DATASET=100k DATA_DIR=..."; exit 1; }

# Training speed and AUC of both presets of both models, on a finished run's
# examples and Transform graph (e.g. make bench-train DATASET=100k), once per
# training seed: AUC as the mean and range over SEEDS.
SEEDS ?= 42,1,2,3,4
bench-train: $(STAMP)
	$(NEED_FINISHED_RUN)
	$(VENV)/bin/python bench/train_speed.py $(RUN_DIR) --preset seed --seeds $(SEEDS) --output bench/results/train_speed_seed.json
	$(VENV)/bin/python bench/train_speed.py $(RUN_DIR) --preset best --seeds $(SEEDS) --output bench/results/train_speed_best.json

# DeepCTR's DeepFM (the reference, in its own venv) against ours at batch 1024 on real
# MovieLens-100K: interleaved runs, on a finished run (make run DATASET=100k ...).
# Retrieval over a 1,000,000-movie catalogue: the BruteForce index as served, and
# ScaNN in process (scann is not in the lock: stock TF Serving has no ScaNN ops, so
# it goes to its own folder for this measurement only).
SCANN_DIR := .tools/scann
bench-catalogue: $(STAMP) | $(UV)
	test -d $(SCANN_DIR)/scann || $(UV) pip install --python $(VENV)/bin/python \
	  --target $(SCANN_DIR) --no-deps scann==1.3.2
	PYTHONPATH=$(SCANN_DIR) $(VENV)/bin/python bench/catalogue_1m.py --output bench/results/catalogue_1m.json

# The recommender's settings chosen on the eval split of a finished temporal run
# (make run DATASET=100k DATA_DIR=... and recsys run --split temporal).
bench-recommender: $(STAMP)
	$(NEED_FINISHED_RUN)
	$(VENV)/bin/python bench/tune_recommender.py $(RUN_DIR) --output bench/results/tune_recommender.json
	$(VENV)/bin/python bench/tune_co_occurrence.py $(RUN_DIR) --output bench/results/tune_co_occurrence.json

DEEPCTR_VENV := .tools/deepctr
MOVIELENS_100K ?= ../shared/data/movielens/ml-100k
bench-deepctr: $(STAMP) | $(UV)
	$(NEED_FINISHED_RUN)
	test -x $(DEEPCTR_VENV)/bin/python || { $(UV) venv --python $(PYTHON_VERSION) $(DEEPCTR_VENV) && \
	  $(UV) pip install --python $(DEEPCTR_VENV)/bin/python tensorflow==2.10.1 "numpy<1.24" \
	    deepctr==0.9.3 scikit-learn pandas; }
	$(VENV)/bin/python bench/deepfm_vs_deepctr.py $(RUN_DIR) --movielens-dir $(MOVIELENS_100K) \
	  --deepctr-python $(DEEPCTR_VENV)/bin/python --output bench/results/deepfm_vs_deepctr.json

# What warm start buys on real MovieLens-100K: a model of the ratings before the last
# four weeks, warm-started on all of them, against a cold start (docs/models.md).
bench-warm-start: $(STAMP)
	$(VENV)/bin/python bench/warm_start.py --data-dir $(MOVIELENS_100K) --seeds $(WARM_START_SEEDS) \
	  --output bench/results/warm_start.json
WARM_START_SEEDS ?= 42,1,2

# Whether the request time (hour, weekday, the user's recency) helps the like model on
# the next span of real MovieLens-100K (docs/continuous-training.md).
bench-time-features: $(STAMP)
	$(VENV)/bin/python bench/time_features.py --data-dir $(MOVIELENS_100K) \
	  --output bench/results/time_features.json

# A weekly replay of real MovieLens-100K against a full run of it: each span's time
# as a share of the full run's (target < 0.4), and the replay's timeline
# (docs/continuous-training.md). Resumes an interrupted replay in runs/bench-replay.
bench-replay: $(STAMP)
	$(VENV)/bin/python bench/replay_time.py --data-dir $(MOVIELENS_100K) --every $(EVERY) \
	  --output bench/results/replay_100k_$(EVERY).json

# The same at 1M scale: monthly spans of the synthetic release `make bench` uses,
# each learning from the 6 months before it, from September 2002 to the end
# (target: every span under 6 minutes, no stage over 90 s).
bench-replay-1m: $(STAMP)
	$(VENV)/bin/python bench/replay_time.py --synthetic-1m --data-dir $(BENCH_DIR)/data/ml-1m \
	  --every 1m --window-spans 6 --from 2002-09-01 --output bench/results/replay_1m_1m.json

# Transform over a window of 29 Examples artifacts, as many as span 29 of the weekly
# replay reads: TFX's executor, the pipeline's, and TFX's on the same examples in
# one artifact (docs/performance.md#transform).
bench-transform-window: $(STAMP)
	$(VENV)/bin/python bench/transform_window.py --data-dir $(MOVIELENS_100K) --artifacts 29 \
	  --output bench/results/transform_window.json

# A local Flink cluster for `recsys run --beam-runner FlinkRunner`: a JobManager, two
# TaskManagers and Beam's Flink job server, each its own JVM on loopback; the pinned
# Flink and job server go into .tools/flink on first use (docs/scaling-out.md).
flink-up: $(STAMP)
	$(VENV)/bin/recsys cluster up

# The pinned Flink and job server alone, for the Flink tests (make test); a machine
# without Java gets a note, and those tests say they skipped and why.
flink-install: $(STAMP)
	@if command -v java >/dev/null; then $(VENV)/bin/recsys cluster install; \
	else echo "note: install a Java 17 runtime (Debian: apt-get install openjdk-17-jre-headless) to run the Flink tests"; fi

flink-down: $(STAMP)
	$(VENV)/bin/recsys cluster down

flink-status: $(STAMP)
	$(VENV)/bin/recsys cluster status

# A Spark master, worker and Beam job server for `recsys run --beam-runner SparkRunner`.
spark-up: $(STAMP)
	$(VENV)/bin/recsys cluster up --engine spark

# Stops the Spark JVMs (master, worker, job server, executors) to give their memory back.
spark-down: $(STAMP)
	$(VENV)/bin/recsys cluster down --engine spark

# One line on the Spark cluster (exit 3 when it does not answer), for scripts and people.
spark-status: $(STAMP)
	$(VENV)/bin/recsys cluster status --engine spark

clean:
	-test -x $(VENV)/bin/recsys && $(VENV)/bin/recsys cluster down
	-test -x $(VENV)/bin/recsys && $(VENV)/bin/recsys cluster down --engine spark
	rm -rf $(VENV) .tools
