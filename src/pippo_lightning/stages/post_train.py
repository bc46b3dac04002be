"""P3 post-training: few views at high resolution with pixel-aligned controls."""

from __future__ import annotations

from pippo_lightning.stages.base import PippoStage


class PostTrainStage(PippoStage):
    """Cameras through the camera MLP, Plücker rays + spatial anchor + x_t through ControlMLP."""

    use_cameras = True
    use_control = True
