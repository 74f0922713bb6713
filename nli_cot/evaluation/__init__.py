"""Evaluation: predictions -> metrics (``evaluate``), comparisons (``compare``), one report per sweep
(``report``); the baselines' predictions (``baselines``).
"""
