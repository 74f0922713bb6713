"""nli_cot: QLoRA fine-tuning of causal LMs for natural-language inference with written chain-of-thought.

The data flows one way through stages, one module each:
pairs -> thoughts -> reflect -> sft -> train (data, module, checkpoints) -> predict -> evaluate -> compare/report.
"""

__version__ = "0.1.0"
