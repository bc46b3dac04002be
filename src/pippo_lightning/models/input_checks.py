"""Input checks of the Pippo network: every shape compared with the config, one message naming
the argument, the expected and the found shape."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor


class InputSpec(Protocol):
    """What the checks read of the network's config (``PippoConfig`` has all of it)."""

    latent_channels: int
    latent_size: int
    use_reference: bool
    use_cameras: bool
    camera_features: int
    use_control: bool
    control_anchor: bool
    control_plucker: bool


#: Channels of a Plücker ray map (direction, moment).
PLUCKER_CHANNELS = 6


def check_inputs(
    cfg: InputSpec,
    x_t: Tensor,
    t: Tensor,
    ref_latent: Tensor | None,
    cam_pose: Tensor | None,
    ref_cam_pose: Tensor | None,
    plucker: Tensor | None,
    ref_plucker: Tensor | None,
    anchor_latents: Tensor | None,
) -> None:
    """Raise ValueError naming the argument, expected and found shape."""
    c, s = cfg.latent_channels, cfg.latent_size
    if x_t.dim() != 5:
        raise ValueError(
            f"x_t: expected shape [B, NV, C={c}, h={s}, w={s}], found {tuple(x_t.shape)}"
        )
    b, nv = x_t.shape[:2]
    check_shape("x_t", x_t, ("B", b), ("NV", nv), ("C", c), ("h", s), ("w", s))
    check_shape("t", t, ("B", b))
    with_ref = cfg.use_reference and ref_latent is not None
    r = 0
    if with_ref:
        if ref_latent.dim() != 5:
            raise ValueError(
                f"ref_latent: expected shape [B={b}, R, C={c}, h={s}, w={s}], "
                f"found {tuple(ref_latent.shape)}"
            )
        r = ref_latent.shape[1]
        check_shape("ref_latent", ref_latent, ("B", b), ("R", r), ("C", c), ("h", s), ("w", s))
    if cfg.use_cameras:
        f = cfg.camera_features
        require_input("cam_pose", cam_pose, "use_cameras")
        check_shape("cam_pose", cam_pose, ("B", b), ("NV", nv), ("F", f))
        if with_ref:
            require_input("ref_cam_pose", ref_cam_pose, "use_cameras")
            check_shape("ref_cam_pose", ref_cam_pose, ("B", b), ("R", r), ("F", f))
    if cfg.use_control and cfg.control_anchor:
        require_input("anchor_latents", anchor_latents, "use_control")
        check_shape(
            "anchor_latents",
            anchor_latents,
            ("B", b),
            ("NV+R", nv + r),
            ("C", c),
            ("h", s),
            ("w", s),
        )
    if cfg.use_control and cfg.control_plucker:
        require_input("plucker", plucker, "use_control")
        if with_ref:
            require_input("ref_plucker", ref_plucker, "use_control")
        size = tuple(plucker.shape[-2:]) if plucker.dim() == 5 else (s, s)
        pairs = [("plucker", plucker, ("NV", nv))]
        if with_ref:
            pairs.append(("ref_plucker", ref_plucker, ("R", r)))
        for name, rays, views in pairs:
            check_shape(
                name,
                rays,
                ("B", b),
                views,
                ("6", PLUCKER_CHANNELS),
                ("H", size[0]),
                ("W", size[1]),
            )
            if size[0] % s or size[1] % s:
                raise ValueError(
                    f"{name}: expected pixel size H, W multiples of the latent size {s}, "
                    f"found {tuple(rays.shape)}"
                )


def require_input(name: str, value: Tensor | None, flag: str) -> None:
    if value is None:
        raise ValueError(f"{name} is required when PippoConfig.{flag}=True")


def check_shape(name: str, tensor: Tensor, *dims: tuple[str, int]) -> None:
    """Compare `tensor.shape` with named sizes, e.g. ("B", 2), ("NV", 3)."""
    if tuple(tensor.shape) != tuple(size for _, size in dims):
        expected = ", ".join(
            f"{label}={size}" if label != str(size) else label for label, size in dims
        )
        raise ValueError(f"{name}: expected shape [{expected}], found {tuple(tensor.shape)}")


def check_mask(name: str, mask: Tensor | None, batch: int) -> None:
    if mask is None:
        return
    if mask.dtype != torch.bool or tuple(mask.shape) != (batch,):
        raise ValueError(
            f"{name}: expected a bool mask of shape [B={batch}], "
            f"found {mask.dtype} {tuple(mask.shape)}"
        )
