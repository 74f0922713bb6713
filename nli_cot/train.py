"""``python -m nli_cot.train``: the code lives in ``nli_cot/training/train.py``, run here as ``__main__``."""

import runpy

if __name__ == "__main__":
    runpy.run_module("nli_cot.training.train", run_name="__main__", alter_sys=True)
