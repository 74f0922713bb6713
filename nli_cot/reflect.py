"""``python -m nli_cot.reflect``: the code lives in ``nli_cot/teacher/reflect.py``, run here as ``__main__``."""

import runpy

if __name__ == "__main__":
    runpy.run_module("nli_cot.teacher.reflect", run_name="__main__", alter_sys=True)
