"""nli_cot: QLoRA fine-tuning of causal LMs for natural-language inference with written chain-of-thought.

The data flows one way through packages (ARCHITECTURE.md), one command per stage (``python -m nli_cot.<stage>``):
core -> teacher (thoughts, reflect, sft) -> training (train) -> inference (predict, serve, export)
-> evaluation (evaluate, compare, report, baselines); models is shared; orchestration runs them in order.
"""

__version__ = "0.1.0"
