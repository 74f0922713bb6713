"""lm-evaluation-harness task YAMLs and their filter (``--include_path`` this folder; see utils.py)."""
