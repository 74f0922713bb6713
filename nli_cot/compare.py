"""``python -m nli_cot.compare``: the code lives in ``nli_cot/evaluation/compare.py``, run here as ``__main__``."""

import runpy

if __name__ == "__main__":
    runpy.run_module("nli_cot.evaluation.compare", run_name="__main__", alter_sys=True)
