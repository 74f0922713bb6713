#!/usr/bin/env bash
# Downloads, on this machine, the wheels that experiments/device/serve_gpu.sh installs on the GPU machine (whose
# python3 3.12 has torch, transformers, peft, lightning, numpy, but not the server stack) into <repo>/.serve-wheels/
# (git-ignored through .git/info/exclude). Versions as in this venv (what tests/test_serve.py passed with).
#   bash experiments/device/serve_wheels.sh [repo]        # repo: where .serve-wheels/ goes (default: this checkout)
#   WITH_OPENAI=1 bash experiments/device/serve_wheels.sh  # + the official openai client (2.9 MB more)
# Default set (~4 MB): the server (fastapi, starlette, uvicorn, pydantic, pydantic-core and their small deps, among
# them opentelemetry-api, which fastapi >= 0.16x imports) and the client's httpx stack (httpx, httpcore, certifi;
# likely on the machine already, as huggingface_hub needs httpx, but small). serve_gpu.sh installs only those the
# machine lacks or has in an older version.
# Without openai the bench sends the same JSON body with httpx (experiments/serve_gpu.py --client auto).
set -euo pipefail
HERE=$(cd "$(dirname "$0")/../.." && pwd)
DEST=$(cd "${1:-$HERE}" && pwd)
PY=${PY:-$HERE/.venv/bin/python}
[ -x "$PY" ] || PY=/work/main/.venv/bin/python
exclude=$(git -C "$DEST" rev-parse --git-common-dir)/info/exclude
case "$exclude" in /*) ;; *) exclude=$DEST/$exclude ;; esac
mkdir -p "$(dirname "$exclude")"
grep -qx "/.serve-wheels/" "$exclude" 2>/dev/null || echo "/.serve-wheels/" >> "$exclude"
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
pkgs=(fastapi starlette uvicorn click h11 annotated-doc opentelemetry-api pydantic pydantic-core annotated-types
      typing-inspection typing-extensions anyio idna sniffio httpx httpcore certifi)
[ "${WITH_OPENAI:-0}" = 1 ] && pkgs+=(openai jiter distro)
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
W=$DEST/.serve-wheels
rm -rf "$W" && mkdir -p "$W"
for p in "${pkgs[@]}"; do
  "$PY" -m pip download -q --no-deps "${plat[@]}" -d "$W" "$p==$(version "$p")" 2>&1 | grep -v "is ignored: it is neither" || true
done
ls "$W"
echo "$(ls "$W" | wc -l) wheels, $(du -sh "$W" | cut -f1) in $W (expected ${#pkgs[@]})"
[ "$(ls "$W" | wc -l)" -eq "${#pkgs[@]}" ]
