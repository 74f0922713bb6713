#!/usr/bin/env bash
# Runs benchmark stages on the GPU device machine inside one wall-clock budget; results land in $OUT.
#
#   bash experiments/device/run_bench.sh STAGE...        (from the repo root)
#
# Stages: env, model, base (card stack training; base:card_abl1 at Abl1's batch), any nli_cot training variant name of
# experiments/bench_train.py (e.g. pf_varlen_ckpt_ce_bf16), prof:<variant> (same, plus a 2-step profile),
# infer:<mode,...> (experiments/bench_infer.py modes), budget:<modes>[:batch[:GiB]] (the same under predict's
# memory budget: expandable segments and a cap), report (prints and writes the tables), speed (writes
# $OUT/speed_summary.json from the repeats). A training stage may end in @N: repeat N (its own fresh work folder);
# interleave repeats (base@0 abl0_1_default@0 base@1 ...) so drift in the machine hits both sides alike.
# Needs, carried with the call: .device-wheels/ (bitsandbytes, hydra-core, omegaconf, antlr4, datasets, dill,
# multiprocess, trl, sentencepiece (the bench tokenizer is saved from the v3 .model file); made by
# `bash ../shared/tools/device-wheels.sh .device-wheels trl sentencepiece`) and .bench/ (the v3 tokenizer file + bench data made
# by `python experiments/bench_common.py data`).
# WHEELS (default .device-wheels) names the wheel folder; .device-wheels-slim is the same with bitsandbytes cut to its
# cu130 library (experiments/device/slim_wheel.py), which leaves room in the carry for EXTRA (below).
#   mkdir .device-wheels-slim && cp .device-wheels/*.whl .device-wheels-slim/ && python experiments/device/slim_wheel.py \
#     .device-wheels/bitsandbytes-*.whl --keep cuda130 --out .device-wheels-slim      (overwrites the fat copy)
#   pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#     -d .device-wheels-tf transformers==5.24.0 peft==0.21.2 huggingface_hub==2.4.0 tokenizers==0.23.3 safetensors==0.8.0 \
#     httpx2==2.17.0 httpcore2==2.17.0 truststore idna==3.21 anyio==4.16.0 h11==0.16.0 click==8.5.1 hf-xet==1.8.0
#   (huggingface_hub 2.x imports httpx2/httpcore2, which the device's python3 lacks: without them every +x stage
#   fails on import, as the 2026-12-07e call 4 did; the device provides the rest of the stack's requirements.)
# Env: DEADLINE (s, default 560) bounds the whole run; a stage starts only with MIN_LEFT (default 60) s left (the
# summaries, speed and report, always run: they take seconds and are what a call is for).
# WARMUP (default 2) optimiser steps dropped, STEPS (default 8) measured, per training run.
# STAGE_TIMES (default /tmp/bench_stage_times.txt, kept while the machine stays warm and copied to $OUT) holds how
# long each stage took when it last succeeded; a stage whose last time does not fit in what is left is skipped
# instead of being started and killed at the deadline (a killed run's time is lost and it leaves no record).
set -u
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled
# No PYTORCH_CUDA_ALLOC_CONF here: the card stack runs with the default allocator; nli_cot sets its own
# (trainer.cuda_alloc_conf, expandable segments by default).
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
REPO=$(cd "$(dirname "$0")/../.." && pwd); cd "$REPO"
T0=$(date +%s); DEADLINE=${DEADLINE:-560}; MODEL=${MODEL:-/tmp/m7b}
TR=$OUT/train.jsonl; IR=$OUT/infer.jsonl
export BENCH_SPM=$REPO/.bench/mistral_instruct_tokenizer_240323.model.v3
WHEELS=${WHEELS:-.device-wheels}; EXTRA=${EXTRA:-.device-wheels-tf}
SITE=${SITE:-/tmp/site}; SITE_X=${SITE_X:-/tmp/site_x}   # where the carried wheels are installed
if [ ! -f "$SITE/.done" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHEELS"/*.whl >/dev/null && touch "$SITE/.done" || echo "PIP INSTALL FAILED"
fi
# EXTRA (optional, carried): wheels for a second stack, e.g. the pinned transformers/peft/hub/tokenizers; a stage
# whose name ends in +x (before any @N) runs with them in front of the device's own (env+x records its versions).
if [ -d "$EXTRA" ] && [ ! -f "$SITE_X/.done" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE_X" \
    "$EXTRA"/*.whl >/dev/null && touch "$SITE_X/.done" || echo "PIP INSTALL (EXTRA) FAILED"
fi
PP0=$SITE:$REPO
left() { echo $(( DEADLINE - ($(date +%s) - T0) )); }
ST=${STAGE_TIMES:-/tmp/bench_stage_times.txt}; touch "$ST"
needs() { awk -v n="$1" '$1 == n { t = $2 } END { print t + 0 }' "$ST"; }   # last success, 0 if never
cap() { local l=$(( $(left) - 15 )); [ "$1" -lt "$l" ] && echo "$1" || echo "$l"; }
for st in "$@"; do
  name=${st%@*}; need=$(needs "$name")
  case $st in report|speed) ;;  # the summaries take seconds and are what a call is for: they always run
    *) if [ "$(left)" -lt "${MIN_LEFT:-60}" ]; then
         echo "{\"stage\":\"skipped\",\"name\":\"$st\",\"left_s\":$(left)}" >> "$TR"; echo "SKIP $st"; continue
       elif [ "$need" -gt 0 ] && [ "$(left)" -lt $(( need + 5 )) ]; then
         echo "{\"stage\":\"skipped\",\"name\":\"$st\",\"left_s\":$(left),\"needs_s\":$need}" >> "$TR"
         echo "SKIP $st (took ${need}s last time, $(left)s left)"; continue
       fi ;;
  esac
  echo "=== $st at $(( $(date +%s) - T0 ))s"; s0=$(date +%s)
  REP=0; case $st in *@*) REP=${st##*@}; st=${st%@*} ;; esac
  export PYTHONPATH=$PP0 BENCH_STACK=
  case $st in *+x) st=${st%+x}; export PYTHONPATH=$SITE_X:$PP0 BENCH_STACK=x ;; esac
  W=(--repeat "$REP" --workdir "/tmp/bench_runs/${st//[:\/]/_}${BENCH_STACK:+_x}_${REP}_$s0"   # a fresh folder per run
     --warmup "${WARMUP:-2}" --steps "${STEPS:-8}")
  case $st in
    env) nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv,noheader
         timeout 90 python3 experiments/bench_common.py env --results "$TR"; cp "$TR" "$IR" ;;
    model) timeout "$(cap 200)" python3 experiments/bench_common.py model --out "$MODEL" --results "$TR" ;;
    base|base:*) V=card; [ "$st" != base ] && V=${st#base:}
            timeout "$(cap 240)" python3 experiments/bench_train.py run --side baseline --variant "$V" --model "$MODEL" \
            --results "$TR" "${W[@]}" ;;
    prof:*) timeout "$(cap 240)" python3 experiments/bench_train.py run --side nli_cot --variant "${st#prof:}" \
            --model "$MODEL" --results "$TR" --profile_steps 2 --profile_out "$OUT/profile.txt" "${W[@]}" ;;
    budget:*) # infer under predict's memory budget: budget:<modes>[:<batch>[:<cap GiB>]] (default batch 512, cap 40)
            IFS=: read -r _ MODES_B BATCH_B CAP_B <<< "$st"
            timeout "$(cap ${INFER_CAP:-400})" python3 experiments/bench_infer.py run --modes "$MODES_B" \
            --model "$MODEL" --results "$IR" --batch "${BATCH_B:-512}" --alloc_conf expandable_segments:True \
            --cuda_memory_gib "${CAP_B:-40}" ;;
    infer:*) timeout "$(cap ${INFER_CAP:-400})" python3 experiments/bench_infer.py run --modes "${st#infer:}" \
            --model "$MODEL" --results "$IR" ;;
    report) python3 experiments/bench_train.py report --results "$TR" --out "$OUT/train_report" | tail -n 40
            if [ -f "$IR" ]; then python3 experiments/bench_infer.py report --results "$IR" \
              --out "$OUT/infer_report" | tail -n 30; fi ;;
    speed) python3 experiments/bench_train.py speed --results "$TR" --infer "$IR" --out "$OUT/speed_summary.json" ;;
    *) timeout "$(cap ${VARIANT_CAP:-200})" python3 experiments/bench_train.py run --side nli_cot --variant "$st" \
            --model "$MODEL" --results "$TR" "${W[@]}" ;;
  esac
  rc=$?; took=$(( $(date +%s) - s0 ))
  [ "$rc" -eq 0 ] && echo "$name $took" >> "$ST"
  echo "=== $st rc=$rc took ${took}s"
done
cp "$ST" "$OUT/stage_times.txt" 2>/dev/null
echo "TOTAL $(( $(date +%s) - T0 ))s"
