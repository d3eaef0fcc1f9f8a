"""Metrics and per-model evaluation of a run (numbers, CSVs and the evaluation's own figures)."""
