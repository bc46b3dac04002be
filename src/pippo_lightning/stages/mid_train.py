"""M2 mid-training: many low-resolution views, cameras, the reference in self-attention."""

from __future__ import annotations

from pippo_lightning.stages.base import PippoStage


class MidTrainStage(PippoStage):
    """Target cameras through the camera MLP and the reference view joining the sequence;
    no pixel-aligned controls yet (those arrive with P3's ControlMLP)."""

    use_cameras = True
    use_control = False
    use_reference = True
