"""``python -m nli_cot.export``: the code lives in ``nli_cot/inference/export.py``, run here as ``__main__``."""

import runpy

if __name__ == "__main__":
    runpy.run_module("nli_cot.inference.export", run_name="__main__", alter_sys=True)
