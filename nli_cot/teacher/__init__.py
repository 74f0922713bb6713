"""Teacher: pairs -> thoughts (``thoughts``) -> reflections (``reflect``) -> SFT sets (``sft``), with the
teachers, their prompts and the runner the teacher stages share.
"""
