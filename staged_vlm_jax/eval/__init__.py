"""Evaluation: greedy generation over held-out prompt sets, scored by the training rewards or benchmark scorers."""
