"""``python -m nli_cot.report``: the code lives in ``nli_cot/evaluation/report.py``, run here as ``__main__``."""

import runpy

if __name__ == "__main__":
    runpy.run_module("nli_cot.evaluation.report", run_name="__main__", alter_sys=True)
