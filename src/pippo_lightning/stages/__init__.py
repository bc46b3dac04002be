"""LightningModules for the training stages; one shared base, stages differ in conditions."""

from pippo_lightning.stages.base import LatentBatch, PippoStage
from pippo_lightning.stages.post_train import PostTrainStage

__all__ = ["LatentBatch", "PippoStage", "PostTrainStage"]
