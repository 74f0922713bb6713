"""Core: the pure pieces every package shares: config schemas and start-up checks, the one io module,
output parsing, prompts, pair reading and the split hash, metrics and statistics, sweep bookkeeping.
"""
