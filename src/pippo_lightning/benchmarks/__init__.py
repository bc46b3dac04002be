"""Timing a stage's training step (make bench-scale, make bench-original)."""
