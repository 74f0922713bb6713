"""``python -m nli_cot.demo``: the code lives in ``nli_cot/orchestration/demo.py``, run here as ``__main__``."""

import runpy

if __name__ == "__main__":
    runpy.run_module("nli_cot.orchestration.demo", run_name="__main__", alter_sys=True)
