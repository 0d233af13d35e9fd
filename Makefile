# `make repro` and `make test` set up everything on a fresh clone.
# VENV=path reuses an existing virtual environment.
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

J ?= 2

.PHONY: here repro test test-fast gpu-check peers bench mlflow-ui mlflow-server task folds exps typecheck

# the pipeline's own dependencies; the tests' (pytest, Playwright, Ray, psycopg) on top, only for
# `make test`, so that a first `make repro` does not wait for them
$(VENV)/.foldwise-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --no-compile -e .
	# bytecode on every core (pip compiles on one; ~35 s saved); a file that does not compile
	# is a package's own test fixture, and bytecode is only a cache
	$(BIN)/python -m compileall -qq -j 0 $(VENV)/lib || true
	touch $@

$(VENV)/.foldwise-test-installed: $(VENV)/.foldwise-installed pyproject.toml
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

$(VENV)/.foldwise-server-installed: $(VENV)/.foldwise-installed
	$(BIN)/python -m pip install -q -e '.[server]'
	touch $@

# the editable install is the one way foldwise reaches the path: with a VENV shared between
# checkouts, point it at this one
here: $(VENV)/.foldwise-installed
	@$(BIN)/python -c "import foldwise, sys; sys.exit(not foldwise.__file__.startswith('$(CURDIR)/src/'))" \
		|| $(BIN)/python -m pip install -q --no-deps -e .
	@test -f .foldwise/vega/vega-embed.js || $(BIN)/python -m foldwise.ensemble.plots

repro: here
	dvc repro

# the experiments side by side in a terminal: the params that differ, the OOF figures and the
# folds' mean and spread, best first (DVC's own flags; README, "Comparing experiments")
# (dropped: per-fold figures, the other metrics files, the sample's sizes, and every file or
# folder a stage depends on, your own data root too: their hashes are columns named by path)
EXPS_DROP ?= ^(folds\.|k$$|distill$$|sample\.|models|weights$$|.*/)
# (METRIC=accuracy --sort-order desc: another order; EXPS_FLAGS=--csv: a table for a program)
exps:
	dvc exp show --no-pager --only-changed --drop '$(EXPS_DROP)' --keep '^(oof|spread)\.' \
		--sort-by metrics/metrics.json:oof.$(or $(METRIC),logloss) --precision 4 $(EXPS_FLAGS)
	@echo "(bag.mean changes the test predictions only: each OOF row comes from one fold's model, so the OOF figures do not move with it)"

# CI: the type check, then every test on JOBS pytest-xdist workers, a module's tests on one
# (its module fixtures made once; `--dist loadgroup` ignores its groups under pytest 9.2), the
# 25 slowest listed; test-fast: the type check and the unit tests only, for the inner loop
JOBS ?= 2
test: typecheck
	$(BIN)/python -m pytest -q -n $(JOBS) --dist loadfile --durations=25

test-fast: typecheck
	$(BIN)/python -m pytest -q -m "not e2e and not extended and not gpu" --durations=10

# src/ against the task protocols (tasks.Task, tasks.ClassTask) and its own signatures
typecheck: here $(VENV)/.foldwise-test-installed
	$(BIN)/python -m mypy

# on a lent GPU machine, with its own Python (no venv, no DVC, no MLflow): docs/gpu.md
OUT ?= gpu-check
gpu-check:
	bash benchmarks/gpu_check.sh $(OUT)

# timm's benchmark.py beside foldwise's bench, from a fetched copy of timm's repository
# (TIMM_GIT=path/to/its/git dir); .peers/ is ignored by git and carried to the GPU machine
peers:
	mkdir -p .peers/timm
	git --git-dir=$(TIMM_GIT) show HEAD:benchmark.py > .peers/timm/benchmark.py

folds: here  # make folds J=4: the folds 4 at a time (a GPU each), then the rest
	$(BIN)/python -m foldwise.scale.parallel --jobs $(J)

bench: here  # make bench ARGS="--scale 1.0"
	$(BIN)/python benchmarks/bench.py $(ARGS)

task: here  # make task TASK=keypoints
	$(BIN)/python -m foldwise.presets $(TASK)

# the page to open: the last pipeline's parent run, in the model-training view (dashboard.py)
mlflow-ui: here
	@$(BIN)/python -c "import json; print('the last run\'s folds:', json.load(open('metrics/mlflow.json'))['url'])" \
		2>/dev/null || echo "no pipeline run yet: http://127.0.0.1:5000"
	mlflow ui --backend-store-uri sqlite:///mlflow.db --port 5000

# a team's tracking server: PostgreSQL backend, artifacts served by the server (README)
# make mlflow-server ARGS="--host 0.0.0.0"; or ARGS="--backend-store-uri postgresql+psycopg://..."
mlflow-server: $(VENV)/.foldwise-server-installed
	$(BIN)/python -m foldwise.scale.server $(ARGS)
