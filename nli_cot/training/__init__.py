"""Training: SFT set -> adapter checkpoints (``train``), with its batches, LightningModule, loggers,
decoded dev accuracy, speed levers and loss weights.
"""
