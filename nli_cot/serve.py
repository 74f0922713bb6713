"""``python -m nli_cot.serve``: the code lives in ``nli_cot/inference/serve.py``, run here as ``__main__``."""

import runpy

if __name__ == "__main__":
    runpy.run_module("nli_cot.inference.serve", run_name="__main__", alter_sys=True)
