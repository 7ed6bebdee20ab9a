PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test test-fast lint quickstart camvid
install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	$(BIN)/python -m vpnext.ops.native   # compiles the native CPU kernel now (once; skipped without a compiler)

# pytest in two worker processes (one thread each), one test module (or the group of multi-process
# modules, tests/conftest.py) per worker at a time.
PYTEST_WORKERS ?= 2
test:
	$(BIN)/ruff check src tests scripts
	$(BIN)/lint-imports
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The inner loop: lint, the layers contract and every test not marked slow (no training run, no
# extra process).
test-fast:
	$(BIN)/ruff check src tests scripts
	$(BIN)/lint-imports
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not slow"

lint:
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts

quickstart:
	$(BIN)/vpnext fit --config experiments/quickstart.yaml

# CamVid from scratch in 30 minutes on a 2-core CPU (docs/results/camvid.md); CAMVID= sets the root.
CAMVID ?= ../shared/data/camvid
camvid:
	$(BIN)/vpnext fit --config experiments/camvid/recipe.yaml --data.root=$(CAMVID) --run.name=camvid

# ---- Reproducing the paper's Tables I-III (docs/reproducing.md) ---------------------------------
# make ablate-vitup                        local runner, one run after another, into $(RUNS)
# make ablate-vitup GPUS=0,1               one run at a time on each listed GPU
# make ablate-vitup ARGS="--config experiments/cpu.yaml"   overrides for every run (here: CPU scale)
# make ablate-vitup SWEEP=wandb            register the sweep with W&B and start an agent here
RUNS ?= runs/sweeps
ARGS ?=
GPUS ?=
SWEEP ?= local
WANDB_PROJECT ?= vpnext
# W&B runs must log to W&B, the local ones need not; add the W&B logger only to the W&B sweep.
WANDB_ARGS ?= --trainer.logger+=WandbLogger --trainer.logger.init_args.project=$(WANDB_PROJECT)

ifeq ($(SWEEP),wandb)
# The exported copy carries ARGS in its command; `wandb sweep` prints the agent command to run.
run_sweep = $(BIN)/vpnext sweep $(1) --export $(RUNS)/wandb/$(notdir $(1)) -- $(WANDB_ARGS) $(ARGS) && \
	$(BIN)/wandb sweep --project $(WANDB_PROJECT) $(RUNS)/wandb/$(notdir $(1)) 2>&1 | tee $(RUNS)/wandb/$(basename $(notdir $(1))).log && \
	$(BIN)/wandb agent $$(sed -n 's/.*wandb agent \([^ ]*\).*/\1/p' $(RUNS)/wandb/$(basename $(notdir $(1))).log | tail -n 1)
else ifeq ($(SWEEP),local)
run_sweep = $(BIN)/vpnext sweep $(1) --runs-dir $(RUNS) $(if $(GPUS),--gpus $(GPUS)) -- $(ARGS)
else
run_sweep = $(error SWEEP must be local or wandb, not '$(SWEEP)')
endif

.PHONY: ablate-vcr ablate-vitup ablate-extra flops tables
ablate-vcr:    ## Table I: deep supervision, mask decoder, VCR with 1-3 layers
	$(call run_sweep,sweeps/vcr_layers.yaml)

ablate-vitup:  ## Table II: bilinear, mock pyramid, HiCLR depth 1-5
	$(call run_sweep,sweeps/vitup.yaml)

ablate-extra:  ## no aux loss, naive align, VCR with/without stop-gradient
	$(call run_sweep,sweeps/extras.yaml)

# Table III: inference GMACs at the paper's setting (ViT-L/16, 480x480, 59 classes), every row for
# the paper-width and the efficient decoder, beside the paper's figures (counted on the meta
# device: a few seconds). The mask-decoder rows use Segmenter at its published width for the
# backbone (d 1024, 16 heads for ViT-L), the same default `make ablate-vcr` trains.
FLOPS_CONFIG ?= experiments/vitup.yaml
FLOPS_SIZE ?= 480 480
FLOPS_ARGS ?= --data.dataset=pascal_context --model.num_classes=59 --model.img_size=480 \
	--model.backbone=vit_large_patch16_384 --model.aux_layers=2
flops:         ## Table III for the paper and the efficient decoder, beside the paper; JSON into $(RUNS)/flops
	$(BIN)/vpnext flops --table3 --config $(FLOPS_CONFIG) --image-size $(FLOPS_SIZE) $(FLOPS_ARGS) \
		--json-dir $(RUNS)/flops

tables:        ## Markdown Tables I-III and a plot from every results.json under $(RUNS)
	$(BIN)/vpnext report $(RUNS)
