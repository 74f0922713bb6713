"""Orchestration: recipes that run the stages in order: the study, the card's ablation chain, the
demo, the resumable Optuna sweeper.
"""
