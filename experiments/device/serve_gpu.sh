#!/usr/bin/env bash
# Issue #18 on the GPU machine: SmolLM2-135M-Instruct served with batching (nli_cot.serve) vs predict's batch path,
# same pairs, model and decoding, in one call: experiments/serve_gpu.py, results in $OUT/serve_gpu.md/.json.
#
#   bash experiments/device/serve_gpu.sh          carries .serve-wheels (bash experiments/device/serve_wheels.sh)
#
# Run it after experiments/device/study.sh has prepared the machine (same warm machine): the study's wheels in
# $SITE, SmolLM2 converted under .cache/models, its test sample and checkpoints under outputs/study/$PRESET. On a
# cold machine the model is rebuilt if .gguf-parts (both) and .study-wheels are carried too (smollm2_env.sh).
# Env:
#   ADAPTER  a PEFT checkpoint folder; auto (default): the best checkpoint (status.json) of the study's chosen
#            human run (lr_choice.json), else of human_s0, else of any run; the base model if none; none: the base
#   PAIRS    JSONL (premise, hypothesis, id, label); default outputs/study/$PRESET/data/test.jsonl, or on a bare
#            machine e-SNLI test from the carried study data (.study-data, or .study-dataxz unpacked)
#   N (1024) pairs, CONC (256) requests in flight (= the server's max batch), REPEATS (3), MAX_TOKENS (160),
#   PRED_BS (1024) predict's batch size, BUDGET (540) wall seconds for this script in all, EXTRA: more
#   serve_gpu.py arguments (e.g. "--variants unmerged"), NLI_COT_COMMIT: the commit sent (for the report).
# Bounded: the bench gets BUDGET minus what setup used, under `timeout` (SIGTERM, then SIGKILL 15 s later, to its
# whole process group, the server included); the server's pid is killed at the end in any case.
set -u
T0=$(date +%s)
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
REPO=$(cd "$(dirname "$0")/../.." && pwd); cd "$REPO"
BUDGET=${BUDGET:-540}; PRESET=${PRESET:-review}; STUDY=outputs/study/$PRESET
N=${N:-1024}; CONC=${CONC:-256}; REPEATS=${REPEATS:-3}; MAX_TOKENS=${MAX_TOKENS:-160}; PRED_BS=${PRED_BS:-1024}
PAIRS_GIVEN=${PAIRS:-}; PAIRS=${PAIRS:-$STUDY/data/test.jsonl}; ADAPTER=${ADAPTER:-auto}
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
log() { echo "[serve_gpu.sh $(( $(date +%s) - T0 ))s] $*"; }
source "$REPO/experiments/device/smollm2_env.sh"   # $SITE, PYTHONPATH, .study-wheels, ready_model

ready_model || { log "ERROR: SmolLM2 is not ready (run study.sh first, or carry .gguf-parts and .study-wheels)"; exit 2; }

# --- the server stack: install the carried wheels the machine lacks (or has older), then check the imports
timeout 120 python3 - .serve-wheels > /tmp/serve-wheels.todo <<'PY'
import importlib.metadata as md, pathlib, sys
from packaging.version import Version
for whl in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    name, version = whl.name.split("-")[:2]
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        have = None
    if have is None or Version(have) < Version(version):
        print(whl)
        print(f"  install {name} {version} (machine: {have or 'missing'})", file=sys.stderr)
    else:
        print(f"  keep {name} {have} (carried {version})", file=sys.stderr)
PY
[ -d .serve-wheels ] || log "no .serve-wheels carried: relying on what the machine has"
if [ -s /tmp/serve-wheels.todo ]; then
  timeout 180 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    $(cat /tmp/serve-wheels.todo) 2>&1 | grep -v "WARNING: Running pip as" | tail -5
fi
smoke() { timeout 120 python3 -c "
import importlib.util, fastapi, uvicorn, httpx, pydantic
import nli_cot.inference.serve
print('imports ok: fastapi', fastapi.__version__, 'uvicorn', uvicorn.__version__, 'pydantic', pydantic.__version__,
      'httpx', httpx.__version__, 'openai', 'yes' if importlib.util.find_spec('openai') else 'no (httpx client)')"; }
if ! smoke; then
  log "imports failed; installing every carried wheel into $SITE"
  timeout 180 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    .serve-wheels/*.whl 2>&1 | grep -v "WARNING: Running pip as" | tail -5
  smoke || { log "ERROR: the server stack does not import (see above)"; exit 2; }
fi
preflight

# --- the adapter
if [ "$ADAPTER" = auto ]; then
  ADAPTER=$(timeout 30 python3 - "$STUDY" <<'PY'
import json, pathlib, sys
study = pathlib.Path(sys.argv[1])
def read(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
runs = [read(study / "lr_choice.json").get("run"), "human_s0"] + sorted(p.name for p in study.glob("runs/*"))
for run in [r for r in runs if r]:
    model = study / "runs" / run / "model"
    best = (read(model / "status.json").get("best") or {}).get("checkpoint")
    cands = ([model / best] if best else []) + sorted(model.glob("checkpoint-*"), key=lambda p: -int(p.name.split("-")[-1]))
    found = [c for c in cands if (c / "adapter_model.safetensors").is_file()]
    if found:
        print(found[0])
        break
else:
    print("none")
PY
)
  log "ADAPTER=auto -> ${ADAPTER:-none}"
fi
ADAPTER_ARGS=()
if [ -n "$ADAPTER" ] && [ "$ADAPTER" != none ]; then
  [ -f "$ADAPTER/adapter_model.safetensors" ] || { log "ERROR: no adapter_model.safetensors in $ADAPTER"; exit 2; }
  ADAPTER_ARGS=(--adapter "$ADAPTER")
fi
if [ ! -f "$PAIRS" ] && [ -z "${PAIRS_GIVEN:-}" ]; then  # a bare machine: the study's data copy, e-SNLI test
  if [ ! -d .study-data ] && [ -f .study-dataxz/data.tar.xz ]; then
    mkdir -p .study-data && timeout 120 sh -c 'xz -dc .study-dataxz/data.tar.xz | tar -C .study-data -xf -'
  fi
  [ -f .study-data/esnli/test.jsonl ] && log "no $PAIRS: using .study-data/esnli/test.jsonl" \
    && PAIRS=.study-data/esnli/test.jsonl
fi
[ -f "$PAIRS" ] || { log "ERROR: no pairs file $PAIRS"; exit 2; }
log "pairs $PAIRS ($(wc -l < "$PAIRS") rows), adapter ${ADAPTER:-none}"

# --- the bench
B=$(( $(left) - 20 ))
[ "$B" -gt 60 ] || { log "ERROR: only $(left) s left for the bench"; exit 2; }
PIDFILE=/tmp/serve_gpu.server.pid; rm -f "$PIDFILE"
log "bench: budget ${B}s"
timeout -k 15 $(( B + 5 )) python3 experiments/serve_gpu.py "${ADAPTER_ARGS[@]}" --pairs "$PAIRS" --n "$N" \
  --concurrency "$CONC" --repeats "$REPEATS" --max-tokens "$MAX_TOKENS" --predict-batch-size "$PRED_BS" \
  --budget-s "$B" --out "$OUT/serve_gpu" --pid-file "$PIDFILE" ${EXTRA:-} > "$OUT/serve_gpu.log" 2>&1
RC=$?
if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  log "server $(cat "$PIDFILE") still alive: killing it"; kill -9 "$(cat "$PIDFILE")" 2>/dev/null
fi
rm -f "$PIDFILE"
log "bench exit $RC"
grep -v "Loading weights\|FutureWarning\|warnings.warn\|UserWarning\|Plugin is incompatible\|Recommended to uninstall\|ModuleNotFoundError : No module named 'hydra_plugins\|Error importing 'hydra_plugins" \
  "$OUT/serve_gpu.log" | tail -n 40
cat "$OUT/serve_gpu.md" 2>/dev/null
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader 2>/dev/null
ls -la "$OUT"
log "done; $(left) s of the budget left"
exit "$RC"
