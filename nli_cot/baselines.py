"""``python -m nli_cot.baselines``: the code lives in ``nli_cot/evaluation/baselines.py``, run here as ``__main__``."""

import runpy

if __name__ == "__main__":
    runpy.run_module("nli_cot.evaluation.baselines", run_name="__main__", alter_sys=True)
