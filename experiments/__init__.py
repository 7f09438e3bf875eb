"""Experiments on finished or running training runs: sweeps, curves, summaries, evaluation.

Every module reads run directories through `experiments.runs`; a run directory
(config.json, metrics.jsonl, checkpoints/) is the contract with training.
"""
