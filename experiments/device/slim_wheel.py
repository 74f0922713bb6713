"""Copy a wheel without the native libraries a device call does not need, so more fits in its 64 MiB carry.

bitsandbytes 0.50.2 ships one CUDA library per toolkit (cuda118 ... cuda132, 43 MB compressed); the GPU machine's
torch is cu130 and loads only ``libbitsandbytes_cuda130.so``. Keeping that one (plus the CPU one it falls back to)
frees ~40 MB, room for the pinned transformers stack beside it (see ``run_bench.sh``, ``EXTRA``).

    python experiments/device/slim_wheel.py .device-wheels/bitsandbytes-*.whl --keep cuda130 --out .device-wheels-slim

Members named ``*/lib<pkg>_<tag>.so`` whose tag is not in ``--keep`` are dropped, and so are their RECORD lines
(pip rewrites RECORD on install and does not check the dropped entries). Everything else is copied byte for byte.
"""

from __future__ import annotations

import argparse
import re
import sys
import zipfile
from pathlib import Path

_NATIVE = re.compile(r"/lib[a-z0-9_]+?_(?P<tag>(cuda|rocm|xpu)[0-9a-z]*)\.so$")


def slim(wheel: Path, keep: set[str], out_dir: Path) -> tuple[Path, list[str]]:
    """Write ``out_dir/<wheel name>`` without the native libraries whose tag is not kept; return it and the drops."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / wheel.name
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
        dropped = [n for n in src.namelist() if (m := _NATIVE.search(n)) and m.group("tag") not in keep]
        gone = set(dropped)
        for info in src.infolist():
            if info.filename in gone:
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(ln for ln in lines if ln.split(",", 1)[0] not in gone).encode()
            dst.writestr(info, data)
    return target, dropped


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("wheel", type=Path)
    p.add_argument("--keep", nargs="+", required=True, help="native tags to keep, e.g. cuda130")
    p.add_argument("--out", type=Path, required=True, help="folder for the slim wheel")
    a = p.parse_args(argv)
    if not a.wheel.is_file():
        print(f"slim_wheel: {a.wheel}: no such wheel", file=sys.stderr)
        return 2
    target, dropped = slim(a.wheel, set(a.keep), a.out)
    kept = [n for n in zipfile.ZipFile(target).namelist() if _NATIVE.search(n)]
    if not kept:
        print(f"slim_wheel: {a.wheel.name}: no native library tagged {sorted(a.keep)} is left", file=sys.stderr)
        return 2
    print(f"{target}: {target.stat().st_size / 2**20:.1f} MiB (from {a.wheel.stat().st_size / 2**20:.1f}); "
          f"kept {kept}; dropped {len(dropped)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
