# segloss — every target installs what it needs into .venv first.
#   make train [EXP=name] [ARGS="hydra overrides"]    make eval CKPT=path [EXP=name]    make test
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA_DIR ?= $(if $(DATA_ROOT),$(DATA_ROOT),data)
SYNTHETIC := $(DATA_DIR)/synthetic_city/synthetic_city.json
EXP_ARG := $(if $(EXP),experiment=$(EXP))
# LAUNCHER=slurm|local: run through hydra-submitit-launcher (configs/launcher/), i.e. as a multirun.
LAUNCHER_ARG := $(if $(LAUNCHER),--multirun launcher=$(LAUNCHER))
ifdef DATA_ROOT
export DATA_ROOT
endif

.DEFAULT_GOAL := help
.PHONY: browser export report bench-crf bench-tta bench-volumes bench-sliding help install install-latest lock data download train sweep search compare rescore eval predict cityscapes-eval stats test lint format bench bench-losses bench-data bench-overhead bench-metrics bench-train-step bench-recipe bench-shared-cpu clean clean-logs clean-data

help: ## show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  make %-11s %s\n", $$1, $$2}'

# The exact versions of requirements/lock.txt (hash-checked), then segloss itself, editable, with nothing more.
LOCK := requirements/lock.txt
$(STAMP): pyproject.toml $(LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

install: ## create .venv and install the locked versions (requirements/lock.txt) with the dev tools
	@rm -f $(STAMP)
	@$(MAKE) --no-print-directory $(STAMP)

install-latest: ## instead of the lock: the newest releases pyproject.toml allows (make install goes back)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --upgrade --upgrade-strategy eager -e ".[dev]"
	@touch $(STAMP)

lock: ## refresh requirements/lock.txt: the newest releases pyproject.toml allows, requirements/pins.txt held
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv
	$(VENV)/bin/uv pip compile -q pyproject.toml --extra dev --universal --python-version 3.11 --generate-hashes \
		--upgrade -c requirements/pins.txt -o $(LOCK)

$(SYNTHETIC): | $(STAMP)
	$(VENV)/bin/segloss-synthetic --root $(DATA_DIR)/synthetic_city

data: $(SYNTHETIC) ## generate the embedded synthetic_city dataset (once)

# A real dataset into DATA_ROOT (configs/download/<DATA>.yaml) and/or encoder weights into paths.weights_dir.
download: $(STAMP) ## fetch + verify + unpack: make download DATA=voc|voc_aug|msd|kvasir|cityscapes [TASK=Task09_Spleen] [WEIGHTS=resnet50] [EXP=ce_voc] [ARGS=…]
	$(PY) -m segloss.download $(if $(DATA),download=$(DATA)) $(if $(TASK),download.task=$(TASK)) $(if $(WEIGHTS),'weights="$(WEIGHTS)"') $(if $(EXP),weights_from=$(EXP)) $(ARGS)

train: $(STAMP) $(SYNTHETIC) ## train: make train [EXP=focal_cityscapes] [LAUNCHER=slurm] [ARGS="trainer.max_epochs=2"]
	$(PY) -m segloss.train $(LAUNCHER_ARG) $(EXP_ARG) $(ARGS)

LOSSES ?= ce,focal,dice_ce,lovasz
SEEDS ?= 0,1,2
sweep: $(STAMP) $(SYNTHETIC) ## losses × seeds multirun: make sweep [EXP=name] [LOSSES=ce,focal] [SEEDS=0,1,2] [ARGS=…]
	$(PY) -m segloss.train --multirun $(if $(LAUNCHER),launcher=$(LAUNCHER)) $(EXP_ARG) loss=$(LOSSES) seed=$(SEEDS) $(ARGS)

HPARAMS ?= focal_optuna
search: $(STAMP) $(SYNTHETIC) ## Optuna search of loss hyper-parameters: make search [HPARAMS=focal_optuna|tversky_optuna|dice_ce_optuna] [EXP=…] [ARGS=…]
	$(PY) -m pip install -q -e ".[search]"
	$(PY) -m segloss.train hparams_search=$(HPARAMS) $(EXP_ARG) $(ARGS)

compare: $(STAMP) ## table (intervals over seeds × images, Holm-corrected tests) + plots of a sweep: make compare [DIR=…] [ARGS="--baseline ce --plan 1 --out folder"]
	$(PY) -m segloss.compare $(DIR) $(ARGS)

report: $(STAMP) ## the study as a self-contained HTML page + PNG/PDF/SVG figures: make report [DIR=sweep] [ARGS="--baseline ce --pair lovasz,ce --out folder"]
	$(PY) -m segloss.report $(if $(DIR),"$(DIR)") $(ARGS)

rescore: $(STAMP) ## add the per-image quality counts to older runs from their best checkpoints: make rescore DIR=…
	@test -n "$(DIR)" || { echo "usage: make rescore DIR=logs/train/multiruns/<sweep>"; exit 2; }
	$(PY) -m segloss.rescore $(DIR) $(ARGS)

eval: $(STAMP) ## evaluate a checkpoint: make eval CKPT=logs/.../best.ckpt [EXP=name] [ARGS="split=val"]
	@test -n "$(CKPT)" || { echo "usage: make eval CKPT=path/to/checkpoint.ckpt [EXP=name]"; exit 2; }
	$(PY) -m segloss.eval 'ckpt_path="$(CKPT)"' $(EXP_ARG) $(ARGS)

predict: $(STAMP) ## label a folder of images: make predict CKPT=… INPUT=folder OUTPUT=folder [EXP=name] [ARGS="overlay=true"]
	@test -n "$(CKPT)" -a -n "$(INPUT)" -a -n "$(OUTPUT)" || { echo "usage: make predict CKPT=… INPUT=folder OUTPUT=folder [EXP=name] [ARGS=…]"; exit 2; }
	$(PY) -m segloss.predict 'ckpt_path="$(CKPT)"' 'input_dir="$(INPUT)"' 'output_dir="$(OUTPUT)"' $(EXP_ARG) $(ARGS)

export: $(STAMP) ## ONNX/TorchScript file of a checkpoint's net, normalisation folded in, parity checked: make export CKPT=… [FORMAT=onnx|torchscript] [OUTPUT=file] [EXP=…] [ARGS=…]
	@test -n "$(CKPT)" || { echo "usage: make export CKPT=path/to/checkpoint.ckpt [FORMAT=onnx|torchscript] [OUTPUT=file] [EXP=name]"; exit 2; }
	$(PY) -m segloss.export 'ckpt_path="$(CKPT)"' $(if $(FORMAT),format=$(FORMAT)) $(if $(OUTPUT),'output="$(OUTPUT)"') $(EXP_ARG) $(ARGS)

cityscapes-eval: $(STAMP) ## official Cityscapes evaluation (iIoU too) of exported PNGs: make cityscapes-eval PRED=<run>/predictions/val [DATASET=data/cityscapes] [ARGS="--export-dir DIR"]
	@test -n "$(PRED)" || { echo "usage: make cityscapes-eval PRED=logs/eval/runs/<run>/predictions/val [DATASET=…]"; exit 2; }
	$(PY) -m segloss.cityscapes_eval "$(PRED)" --dataset "$(if $(DATASET),$(DATASET),$(DATA_DIR)/cityscapes)" $(ARGS)

stats: $(STAMP) ## label statistics + class weights: make stats [DATA=cityscapes] [ARGS="data.root=…"]
	$(PY) -m segloss.stats $(if $(DATA),data=$(DATA)) $(ARGS)

# Paths reach Hydra quoted ('key="$(PATH)"'), so names with non-ASCII letters, spaces, commas or '=' are taken
# as they are (unquoted, Hydra's override grammar refuses them or reads a comma as a sweep).
# One pytest worker per core (pytest-xdist), each test module on one worker (its module fixtures built once);
# each worker runs torch single-threaded. TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= auto
test: $(STAMP) browser ## run the whole test suite (in parallel: TEST_WORKERS=auto|N|0)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope $(ARGS)

# The report test opens make report's page in a real browser: Debian's chromium, installed here when missing and
# this is root on Debian (CI); elsewhere the test says how to install it (in CI, CI=true, it fails without one).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium (the report test renders its page)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "make test: no chromium; the report's browser test needs it (sudo apt-get install chromium)"; fi; }

bench-losses: $(STAMP) ## loss fwd+bwd time and peak memory vs smp / MONAI / torch (ARGS="--device cuda")
	$(PY) benchmarks/bench_losses.py $(ARGS)

bench-data: $(STAMP) ## decode + augment images/s per worker at Cityscapes resolution, torchvision v2 vs albumentations
	$(PY) -m pip install -q -e ".[dev,bench]"
	$(PY) benchmarks/bench_data.py $(ARGS)

bench-overhead: $(STAMP) ## framework overhead: our LightningModule + Trainer vs a hand-written loop (ARGS="--device cuda")
	$(PY) benchmarks/bench_overhead.py $(ARGS)

bench-metrics: $(STAMP) ## metric update vs torchmetrics MulticlassJaccardIndex, host syncs (ARGS="--device cuda")
	$(PY) benchmarks/bench_metrics.py $(ARGS)

bench-crf: $(STAMP) ## CRF post-processing (inference.crf) vs the U-Net's forward on a 512×1024 frame
	$(PY) benchmarks/bench_crf.py $(ARGS)

bench-tta: $(STAMP) ## test-time augmentation (inference.tta) vs the same net without it on a 512×1024 frame
	$(PY) benchmarks/bench_tta.py $(ARGS)

bench-volumes: $(STAMP) ## 3D distance/skeleton losses vs dice_ce, and the dense-CRF loss vs CE, fwd+bwd
	$(PY) benchmarks/bench_volumes.py $(ARGS)

bench-sliding: $(STAMP) ## Gaussian sliding window vs MONAI's on a volume; time and memory per 3D patch
	$(PY) benchmarks/bench_sliding.py $(ARGS)

bench-train-step: $(STAMP) ## GPU training step: fp32 / bf16 / channels_last / compile, images/s, memory, MFU
	$(PY) benchmarks/bench_train_step.py $(ARGS)

bench-recipe: $(STAMP) ## training recipe (Trainer + Cityscapes loader) vs the raw step, img/s (ARGS="--device cpu --quick")
	$(PY) benchmarks/bench_recipe.py $(ARGS)

bench-shared-cpu: $(STAMP) $(SYNTHETIC) ## make train beside a busy process: threads=auto vs a fixed count (ARGS="--repeat 3 --late")
	$(PY) benchmarks/bench_shared_cpu.py $(ARGS)

bench: bench-losses bench-overhead bench-data bench-metrics bench-train-step bench-recipe ## every benchmark (tables + benchmarks/results/*.json)

lint: $(STAMP) ## ruff check + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP) ## ruff fix + format
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean: ## remove caches (keeps .venv, data and logs)
	rm -rf .pytest_cache .ruff_cache build src/*.egg-info
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +

clean-logs: ## remove all run directories under logs/
	rm -rf logs

clean-data: ## remove the generated synthetic_city (real datasets are never touched)
	rm -rf $(DATA_DIR)/synthetic_city
