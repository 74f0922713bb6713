"""Models: models and tokenizers (built here and nowhere else), batched decoding, adapter checkpoint
folders. Shared by the stage packages; imports only ``core``.
"""
