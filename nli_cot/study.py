"""``python -m nli_cot.study``: the code lives in ``nli_cot/orchestration/study.py``, run here as ``__main__``."""

import runpy

if __name__ == "__main__":
    runpy.run_module("nli_cot.orchestration.study", run_name="__main__", alter_sys=True)
