"""LightningModules for the training stages; one shared base, stages differ in conditions."""

from pippo_lightning.stages.base import PippoStage
from pippo_lightning.stages.mid_train import MidTrainStage
from pippo_lightning.stages.post_train import PostTrainStage
from pippo_lightning.stages.pre_train import PreTrainStage

STAGES = {"p1": PreTrainStage, "m2": MidTrainStage, "p3": PostTrainStage}

__all__ = [
    "STAGES",
    "MidTrainStage",
    "PippoStage",
    "PostTrainStage",
    "PreTrainStage",
]
