"""Sampling from a checkpoint: the pipeline (stage, photo, batch, views) and its device helpers."""
