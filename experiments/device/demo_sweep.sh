#!/usr/bin/env bash
# Demo variants on the GPU machine (issue #8): experiments/demo_sweep.py with a deadline inside one call's budget.
#
#   bash experiments/device/demo_sweep.sh stash                          call 1: carries .gguf-parts/a .study-wheels
#   bash experiments/device/demo_sweep.sh run experiments/demo_sweep/round1.yaml   call 2: .gguf-parts/b .study-wheels
#   DEMO=1 bash experiments/device/demo_sweep.sh run <variants.yaml>   then `python -m nli_cot.demo` as a user runs it
#   CHOOSE=1 (with DEMO=1): the demo's gpu.train_steps/eval_every := the best variant on dev (ties: fewer steps),
#   so the demo runs after the sweep; without CHOOSE it runs beside the sweep (its defaults, nothing chosen)
#
# The model setup is study.sh's (experiments/device/smollm2_env.sh). Results go to outputs/demo_sweep/<round> (kept
# on a warm machine, so a later `run` of the same file skips finished variants) and are packed into $OUT:
# summary.jsonl, the sweep's table, and each variant's predictions, metrics and training log.
# Env: BUDGET (s, default 570), PACK_S (default 30), JOBS (variants side by side, default 4).
set -u
T0=$(date +%s)
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # the H100 machine has 4 cores: one per variant side by side
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
REPO=$(cd "$(dirname "$0")/../.." && pwd); cd "$REPO"
BUDGET=${BUDGET:-570}; PACK_S=${PACK_S:-30}; JOBS=${JOBS:-4}
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
log() { echo "[demo_sweep.sh $(( $(date +%s) - T0 ))s] $*"; }
source "$REPO/experiments/device/smollm2_env.sh"

case "${1:-}" in
  stash) stash_gguf; exit 0 ;;
  run) VARIANTS=${2:?usage: $0 run <variants.yaml>} ;;
  *) echo "usage: $0 stash | run <variants.yaml>"; exit 2 ;;
esac

ready_model || exit 2
ROUND=outputs/demo_sweep/$(basename "$VARIANTS" .yaml)
# Variants take ~1-3 min each: none starts later than this, so the running ones can finish before packing.
DEADLINE=$(( $(left) - PACK_S - 150 ))
demo_run() {  # the demo with its defaults (on a GPU: conf/demo.yaml gpu.*), exactly as typed, plus "$@"
  log "python -m nli_cot.demo (defaults) $*"
  timeout $(( $(left) - PACK_S )) python3 -m nli_cot.demo out_dir=outputs/demo_gpu/out data_dir=outputs/demo_gpu/data \
    "$@" > "$OUT/demo_gpu.log" 2>&1; log "demo exit $?"
}
if [ "${DEMO:-0}" = 1 ] && [ "${CHOOSE:-0}" != 1 ]; then  # nothing to choose: the demo runs beside the sweep
  demo_run & DEMO_PID=$!
fi
log "sweep $VARIANTS -> $ROUND, jobs $JOBS, start deadline ${DEADLINE}s"
timeout $(( $(left) - PACK_S )) python3 experiments/demo_sweep.py "$VARIANTS" --out "$ROUND" --jobs "$JOBS" \
  --deadline-s "$DEADLINE" 2>&1 | tee "$OUT/sweep.log" | grep -v '^\s*$' | tail -n 40
if [ "${DEMO:-0}" = 1 ]; then  # the demo with its defaults (on a GPU: conf/demo.yaml gpu.*), exactly as typed
  if [ "${CHOOSE:-0}" = 1 ]; then  # gpu.train_steps := the variant with the best dev accuracy (ties: fewer steps)
    STEPS=$(python3 - "$ROUND/summary.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
ok = [r for r in rows if r.get("rc") == 0]
best = max(ok, key=lambda r: (r["fine_tuned"]["accuracy"], -r["settings"]["train_steps"]))
print(best["settings"]["train_steps"], best["settings"]["eval_every"])
PY
)
    read -r S E <<< "$STEPS"; CHOSEN=("gpu.train_steps=$S" "gpu.eval_every=$E")
    log "chosen on dev: ${CHOSEN[*]}"; echo "${CHOSEN[*]}" > "$OUT/chosen_on_dev.txt"
    demo_run "${CHOSEN[@]}"
  else
    wait "$DEMO_PID"  # started beside the sweep
  fi
  grep -v 'it/s\]' "$OUT/demo_gpu.log" | tail -n 40
  tar czf "$OUT/demo_gpu.tgz" --exclude='*.safetensors' --exclude='*/checkpoint-*' --exclude='*/data/train.jsonl' \
    outputs/demo_gpu 2>/dev/null
fi
cp "$ROUND/summary.jsonl" "$OUT/" 2>/dev/null
tar czf "$OUT/variants.tgz" --exclude='*.safetensors' --exclude='*/checkpoint-*' --exclude='*/data/train.jsonl' \
  "$ROUND" 2>/dev/null
ls -la "$OUT"
log "done; $(left) s of the budget left"
