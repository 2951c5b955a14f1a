"""Staged training: the stage loop, checkpoints, metrics and plots."""
