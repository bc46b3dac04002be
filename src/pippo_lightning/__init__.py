"""pippo_lightning: train and run Pippo multi-view diffusion transformers with Lightning + Hydra."""

__version__ = "0.1.0"
