"""Evaluation layer: LongBench tasks, official metrics, data loading, prompts, synthetic tasks."""
