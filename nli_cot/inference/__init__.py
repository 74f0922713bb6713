"""Inference: base model (+ adapter) -> predictions (``predict``), an OpenAI-compatible server
(``serve``), a hub-ready folder with a model card (``export``).
"""
