"""Sharing checkpoints and samples: Hugging Face Hub bundles, model cards, push / pull, W&B
artifacts, sample downloads, and converting the original release's checkpoints."""
