#!/usr/bin/env bash
# Issue #6 on a 2-GPU device machine, in one call: the card's Abl1 settings on a random-weight 7B-shaped Mistral
# (4-bit NF4 + LoRA r16 + paged AdamW 8-bit), one GPU vs two GPUs through Lightning DDP with the same global batch
# (1 GPU: 8 x grad_accum 2; 2 GPUs: 8 per GPU x grad_accum 1 = 16 examples per optimiser step, the same batches in
# the same order), then a one-GPU load of the 2-GPU checkpoint with `subfolder=`. Results land in $OUT.
#
#   bash experiments/device/ddp_scaling.sh [card|fast]...     (from the repo root; default: card fast)
#
# card: the card's padded path; fast: the packed/varlen/chunked-CE/compiled path (conf/trainer/fast.yaml).
# Dry run on a CPU box: SKIP_WHEELS=1 MODEL=/tmp/mtiny MODEL_ARGS=--tiny STEPS=4 PATH=.venv/bin:$PATH bash ...
# Carry: .device-wheels/ (bitsandbytes, hydra-core, omegaconf, antlr4, datasets, dill, multiprocess) and .bench/
# (the v3 tokenizer + bench SFT data from `python experiments/bench_common.py data`).
# LoRA dropout is 0 in these runs so that the two loss curves can match to float noise (dropout masks are drawn
# per rank, so with dropout the curves would differ by more than arithmetic).
set -u
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled
# The device notes: NVLink multicast stays off (it can take the host's GPUs out of service).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
RES=/tmp/ddp_res; R=$RES/raw; rm -rf "$RES"; mkdir -p "$R/runs"  # raw files, tarred into $OUT after each stage
keep() { tar czf "$OUT/raw.tgz" -C "$RES" raw; }   # only 8 files, 2 folders deep, come back from $OUT
REPO=$(cd "$(dirname "$0")/../.." && pwd); cd "$REPO"
T0=$(date +%s); DEADLINE=${DEADLINE:-470}; MODEL=${MODEL:-/tmp/m7b}; STEPS=${STEPS:-24}; W=/tmp/ddp
export BENCH_SPM=$REPO/.bench/mistral_instruct_tokenizer_240323.model.v3
if [ -z "${SKIP_WHEELS:-}" ] && [ ! -f /tmp/site/.done ]; then  # SKIP_WHEELS=1: a dry run in a local venv
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .device-wheels/*.whl >/dev/null && touch /tmp/site/.done || echo "PIP INSTALL FAILED"
fi
export PYTHONPATH=/tmp/site:$REPO
left() { echo $(( DEADLINE - ($(date +%s) - T0) )); }
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee "$R/gpus.txt"
nvidia-smi --query-gpu=timestamp,index,memory.used --format=csv,noheader -lms 500 > "$R/smi_mem.csv" &
SMI=$!
python3 experiments/bench_common.py env --results "$R/env.jsonl" >/dev/null 2>&1
timeout 240 python3 experiments/bench_common.py model --out "$MODEL" ${MODEL_ARGS:-} --results "$R/env.jsonl" | tail -n 2
rm -rf $W; mkdir -p $W; tail -n 64 .bench/sft_train.jsonl > $W/dev.jsonl; head -n 1900 .bench/sft_train.jsonl > $W/train.jsonl

common=(+experiment=abl1 "model.name_or_path=$MODEL" "dataset.train_path=$W/train.jsonl" "dataset.eval_path=$W/dev.jsonl"
  dataset.max_eval_examples=64 logger=csv lora.dropout=0 seed=42 "trainer.max_steps=$STEPS"
  "trainer.save_steps=$STEPS" "trainer.eval_every_n_steps=$STEPS" trainer.log_every_n_steps=1
  trainer.early_stopping_patience=null run_name=Mistral_Thinking_Abl1)
card=(trainer.padding_free=false trainer.packed_attention=model trainer.loss_impl=model trainer.fuse_grad_accum=false
  trainer.compile=false)
fast=(trainer.padding_free=true trainer.packed_attention=varlen trainer.loss_impl=chunked trainer.fuse_grad_accum=true
  trainer.compile=true)
run() {  # name gpus variant...
  local name=$1 gpus=$2; shift 2
  if [ "$(left)" -lt 90 ]; then echo "SKIP $name: $(left) s left"; return; fi
  local extra=(trainer.devices=1 trainer.grad_accum=2 trainer.throughput_window=20)
  [ "$gpus" = 2 ] && extra=(trainer.devices=2 trainer.strategy=ddp trainer.grad_accum=1 trainer.throughput_window=10)
  local vis=0; [ "$gpus" = 2 ] && vis=0,1
  echo "=== $name at $(( $(date +%s) - T0 ))s"; local s0=$(date +%s); mkdir -p "$R/runs/$name"
  CUDA_VISIBLE_DEVICES=$vis timeout $(( $(left) - 30 )) python3 -m nli_cot.train "${common[@]}" "$@" "${extra[@]}" \
    "output_dir=$W/$name" "hydra.run.dir=$W/$name" > "$R/runs/$name/log.txt" 2>&1
  echo "=== $name rc=$? took $(( $(date +%s) - s0 ))s"; tail -n 3 "$R/runs/$name/log.txt"
  cp "$W/$name/Mistral_Thinking_Abl1/logs/metrics.csv" "$R/runs/$name/" 2>/dev/null
  cp "$W/$name/Mistral_Thinking_Abl1/status.json" "$R/runs/$name/" 2>/dev/null
  echo "{\"name\":\"$name\",\"gpus\":$gpus,\"wall_s\":$(( $(date +%s) - s0 )),\"t_start\":$s0}" >> "$R/runs.jsonl"
  keep
}
for v in "${@:-card fast}"; do
  for v2 in $v; do
    if [ "$v2" = card ]; then run card_1gpu 1 "${card[@]}"; run card_2gpu 2 "${card[@]}"; fi
    if [ "$v2" = fast ]; then run fast_1gpu 1 "${fast[@]}"; run fast_2gpu 2 "${fast[@]}"; fi
  done
done
kill $SMI 2>/dev/null
# One GPU loads each 2-GPU checkpoint the card's way and the adapters are compared with the 1-GPU run's.
CUDA_VISIBLE_DEVICES=0 timeout 100 python3 experiments/bench_ddp.py check --work $W --model "$MODEL" --step "$STEPS" \
  --out "$R/load_check.json"
python3 experiments/bench_ddp.py report --results "$RES" --out "$OUT/ddp_report"
keep
echo "TOTAL $(( $(date +%s) - T0 ))s"
