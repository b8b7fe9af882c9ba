# Each target is one line; `.venv/.ready` builds the environment on a fresh machine from this repo alone.
SHELL := /bin/bash
PY := .venv/bin/python
PYTEST := .venv/bin/pytest
PURE := rewards rollout learner/config.py learner/grpo.py learner/correction.py learner/packing.py learner/mlae_masks.py learner/mlae.py learner/export.py learner/adapter_files.py learner/expert_similarity.py learner/durable.py services/config.py services/config_checks.py services/logging_config.py services/data
export DS_ACCELERATOR ?= cpu
export TOKENIZERS_PARALLELISM ?= false
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: setup demo test test-unit test-slow lint bench bench-medloc bench-medloc-main bench-medloc-reduced bench-medloc-sparse bench-mlae-lora bench-objectives bench-vrft bench-multibox bench-vs-trl bench-learner bench-serve bench-shapes bench-faults base gpu-check gpu-check-dry-run clean-runtime

setup: .venv/.ready

.venv/.ready: pyproject.toml tools/setup_env.sh tools/medground_cpu_shim.py tools/install_browser.sh
	bash tools/setup_env.sh cpu

demo: .venv/.ready
	$(PY) -m services.cli demo

# two pytest workers, one test file each at a time (--dist loadfile keeps a module's engine fixtures in one
# process; tests/conftest.py makes the files of each shared engine one unit and sends the longest first)
test: .venv/.ready lint
	$(PYTEST) -m "not slow and not gpu" --timeout=900 -n 2 --dist loadfile --durations=25 tests

# the edit loop: pure unit tests and the architecture rules, no Ray, no engines (about a minute)
test-unit: .venv/.ready
	$(PYTEST) -m "not slow and not gpu" --timeout=300 -n 2 tests/unit tests/architecture

test-slow: .venv/.ready
	$(PYTEST) -m "slow and not gpu" --timeout=3600 tests

lint: .venv/.ready
	.venv/bin/ruff check . && .venv/bin/lint-imports && .venv/bin/mypy $(PURE)

bench: .venv/.ready
	$(PY) -m bench --all

bench-medloc: .venv/.ready
	$(PY) -m bench.studies.medloc_ablation

bench-medloc-main: .venv/.ready
	$(PY) -m bench.studies.medloc_ablation --main

bench-medloc-reduced: .venv/.ready
	$(PY) -m bench.studies.medloc_ablation --reduced

# issue 28: MedLoc-R1 in its sparse regime on the demo base, 7 arms x 3 seeds (~2 h on 2 cores, the base built
# once); reruns reuse finished arm runs
bench-medloc-sparse: .venv/.ready
	$(PY) -m bench.studies.medloc_sparse

bench-mlae-lora: .venv/.ready
	$(PY) -m bench.studies.mlae_vs_lora

# issue 29's objective study: 9 arms x 3 seeds (~45 min on 2 cores); reruns reuse finished arm runs
bench-objectives: .venv/.ready
	$(PY) -m bench.studies.objectives

bench-vrft: .venv/.ready
	$(PY) -m bench.studies.vrft_aug

bench-multibox: .venv/.ready
	$(PY) -m bench.studies.multibox

.venv/.bench: .venv/.ready pyproject.toml
	.venv/bin/pip install -q -e ".[bench]" && touch $@

bench-vs-trl: .venv/.bench
	$(PY) -m bench.vs_trl

bench-learner: .venv/.ready
	$(PY) -m bench.learner

bench-serve: .venv/.ready
	$(PY) -m bench.serve_load

bench-shapes: .venv/.ready
	$(PY) -m bench.shapes

bench-faults: .venv/.ready
	$(PY) -m bench.faults

# the study base (deploy/configs/bases/study.yaml) into models/base-study: ~15 min on 2 cores, once (cached by recipe)
base: .venv/.ready
	$(PY) -m services.cli pretrain-base deploy/configs/bases/study.yaml models/base-study

gpu-check:
	bash tools/gpu_check.sh

gpu-check-dry-run: .venv/.ready
	PYTHON=$(PY) bash tools/gpu_check.sh --dry-run

clean-runtime:
	bash tools/clean_runtime.sh
