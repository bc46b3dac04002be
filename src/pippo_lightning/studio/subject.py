"""Procedural people for the synthetic studio: parameters sampled from a seed, built as SDF scenes.

Body frame (before the subject's yaw): metres, +y up, feet on the floor y = 0, the subject faces +z,
and +x is the subject's *left*. Per-side tuples are (left, right). The face (eyes, nose, mouth),
the hairline (low at the back, high at the front), the chest emblem and the feet all break the
front/back symmetry, so a view from behind never looks like a mirrored view from the front.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from pippo_lightning.geometry.cameras import normalize
from pippo_lightning.studio.scene import PATTERNS, Material, Pattern, SceneBuilder, SdfScene

RGB = tuple[float, float, float]
Pair = tuple[float, float]

SKIN_TONES: tuple[RGB, ...] = (
    (0.98, 0.84, 0.72),
    (0.93, 0.75, 0.60),
    (0.82, 0.62, 0.47),
    (0.65, 0.46, 0.33),
    (0.47, 0.32, 0.22),
    (0.33, 0.22, 0.15),
)
HAIR_COLOURS: tuple[RGB, ...] = (
    (0.08, 0.07, 0.07),
    (0.23, 0.15, 0.10),
    (0.42, 0.28, 0.16),
    (0.85, 0.72, 0.45),
    (0.60, 0.25, 0.12),
    (0.65, 0.65, 0.65),
)
EYE_COLOUR: RGB = (0.06, 0.06, 0.08)
MOUTH_COLOUR: RGB = (0.55, 0.18, 0.18)
FOOT_HEIGHT = 0.09  # ankle height above the floor; the foot capsules fill the gap


@dataclass(frozen=True)
class SubjectParams:
    """Everything that makes one synthetic person; sample with :meth:`sample`."""

    seed: int
    head_radii: tuple[float, float, float]
    neck_length: float
    neck_radius: float
    shoulder_half_width: float
    torso_length: float
    torso_half_depth: float
    hip_half_width: float
    leg_length: float
    leg_radius: float
    leg_spread_deg: Pair
    upper_arm_length: float
    forearm_length: float
    arm_radius: float
    arm_abduction_deg: Pair  # away from the body, in the frontal plane
    arm_swing_deg: Pair  # positive swings the arm forward
    elbow_bend_deg: Pair  # positive brings the forearm forward
    long_sleeves: bool
    body_yaw_deg: float
    head_yaw_deg: float
    head_pitch_deg: float  # positive tilts the face down
    front_hairline: float  # height of the hair edge at the face, in head y-radii
    back_hairline: float  # height of the hair edge at the nape, in head y-radii
    skin: RGB
    hair: RGB
    top: Material
    bottom: Material
    shoes: RGB
    emblem: RGB
    emblem_offset: float  # sideways position of the chest emblem, metres

    @classmethod
    def sample(cls, seed: int, max_body_yaw_deg: float = 15.0) -> SubjectParams:
        """Deterministic parameters for ``seed`` (numpy's PCG64 stream, platform-independent)."""
        rng = np.random.default_rng(seed)

        def u(low: float, high: float) -> float:
            return float(rng.uniform(low, high))

        def pair(low: float, high: float) -> Pair:
            return u(low, high), u(low, high)

        scale = u(0.88, 1.08)
        return cls(
            seed=int(seed),
            head_radii=(u(0.085, 0.1), u(0.11, 0.13), u(0.1, 0.115)),
            neck_length=u(0.06, 0.1),
            neck_radius=u(0.045, 0.06),
            shoulder_half_width=u(0.16, 0.23),
            torso_length=u(0.5, 0.6) * scale,
            torso_half_depth=u(0.1, 0.13),
            hip_half_width=u(0.08, 0.11),
            leg_length=u(0.78, 0.92) * scale,
            leg_radius=u(0.065, 0.085),
            leg_spread_deg=pair(0.0, 9.0),
            upper_arm_length=u(0.27, 0.32) * scale,
            forearm_length=u(0.24, 0.29) * scale,
            arm_radius=u(0.04, 0.055),
            arm_abduction_deg=pair(6.0, 65.0),
            arm_swing_deg=pair(-30.0, 40.0),
            elbow_bend_deg=pair(0.0, 80.0),
            long_sleeves=bool(rng.random() < 0.5),
            body_yaw_deg=u(-max_body_yaw_deg, max_body_yaw_deg),
            head_yaw_deg=u(-25.0, 25.0),
            head_pitch_deg=u(-10.0, 10.0),
            front_hairline=u(0.25, 0.6),
            back_hairline=u(-0.9, -0.2),
            skin=_jitter(rng, SKIN_TONES[rng.integers(len(SKIN_TONES))]),
            hair=_jitter(rng, HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))]),
            top=_clothing(rng),
            bottom=_clothing(rng),
            shoes=_hsv(rng, value=(0.1, 0.6)),
            emblem=_hsv(rng, saturation=(0.7, 1.0), value=(0.7, 1.0)),
            emblem_offset=u(-0.06, 0.06),
        )


def _jitter(rng: np.random.Generator, colour: RGB, amount: float = 0.03) -> RGB:
    r, g, b = (float(np.clip(c + rng.uniform(-amount, amount), 0.0, 1.0)) for c in colour)
    return r, g, b


def _hsv(
    rng: np.random.Generator,
    saturation: Pair = (0.3, 0.9),
    value: Pair = (0.25, 0.9),
    hue: float | None = None,
) -> RGB:
    h = float(rng.random()) if hue is None else hue % 1.0
    return colorsys.hsv_to_rgb(h, float(rng.uniform(*saturation)), float(rng.uniform(*value)))


def _clothing(rng: np.random.Generator) -> Material:
    hue = float(rng.random())
    pattern: Pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
    return Material(
        albedo=_hsv(rng, hue=hue),
        # A shifted hue keeps the pattern visible whatever the base colour.
        secondary=_hsv(rng, hue=hue + float(rng.uniform(0.3, 0.7))),
        pattern=pattern,
        frequency=float(rng.uniform(6.0, 14.0)),
        grain=float(rng.uniform(0.6, 0.8)),
    )


def rotation_x(deg: float) -> Tensor:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rotation_y(deg: float) -> Tensor:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rotation_z(deg: float) -> Tensor:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@dataclass
class Subject:
    """A built subject: its scene and world-space landmarks (all [3])."""

    params: SubjectParams
    scene: SdfScene
    head_center: Tensor
    head_forward: Tensor
    head_up: Tensor
    nose_tip: Tensor


class _Frame:
    """A rigid frame (local -> world rotation and origin) to place parts in local coordinates."""

    def __init__(self, rotation: Tensor, origin: Tensor) -> None:
        self.rotation, self.origin = rotation, origin

    def point(self, xyz: tuple[float, float, float] | Tensor) -> Tensor:
        return self.rotation @ torch.as_tensor(xyz, dtype=torch.float32) + self.origin

    def child(self, rotation: Tensor, origin: tuple[float, float, float]) -> _Frame:
        return _Frame(self.rotation @ rotation, self.point(origin))

    @property
    def world_to_local(self) -> Tensor:
        return self.rotation.T


def build_subject(params: SubjectParams) -> Subject:
    """Assemble the person described by ``params`` as an SDF scene in the studio world."""
    p = params
    body = _Frame(rotation_y(p.body_yaw_deg), torch.zeros(3))
    builder = SceneBuilder(blend_radius=0.02)
    builder.pattern_rotation, builder.pattern_origin = body.world_to_local, body.origin
    skin = Material(p.skin)

    hip_y = FOOT_HEIGHT + p.leg_length * math.cos(math.radians(max(p.leg_spread_deg)))
    shoulder_y = hip_y + p.torso_length
    _add_legs(builder, body, p, hip_y)
    _add_torso(builder, body, p, hip_y, shoulder_y)
    _add_arms(builder, body, p, shoulder_y, skin)
    builder.capsule(
        "neck",
        body.point((0, shoulder_y - 0.05, 0)),
        body.point((0, shoulder_y + p.neck_length, 0.01)),
        p.neck_radius,
        skin,
    )
    head_y = shoulder_y + p.neck_length + 0.85 * p.head_radii[1]
    head = body.child(
        rotation_y(p.head_yaw_deg) @ rotation_x(p.head_pitch_deg), (0.0, head_y, 0.01)
    )
    nose_tip = _add_head(builder, head, p, skin)
    return Subject(
        params=p,
        scene=builder.build(),
        head_center=head.origin,
        head_forward=normalize(head.rotation[:, 2]),
        head_up=normalize(head.rotation[:, 1]),
        nose_tip=nose_tip,
    )


def _add_legs(builder: SceneBuilder, body: _Frame, p: SubjectParams, hip_y: float) -> None:
    shoes = Material(p.shoes)
    for side, name, spread in (
        (1.0, "left", p.leg_spread_deg[0]),
        (-1.0, "right", p.leg_spread_deg[1]),
    ):
        rad = math.radians(spread)
        ankle_x = side * (p.hip_half_width + p.leg_length * math.sin(rad))
        ankle_y = hip_y - p.leg_length * math.cos(rad)
        builder.capsule(
            f"{name}_leg",
            body.point((side * p.hip_half_width, hip_y, 0.0)),
            body.point((ankle_x, ankle_y, 0.0)),
            p.leg_radius,
            p.bottom,
        )
        # Feet point forward: one of the cues that tells front from back.
        builder.capsule(
            f"{name}_foot",
            body.point((ankle_x, ankle_y - 0.045, -0.04)),
            body.point((ankle_x, ankle_y - 0.045, 0.14)),
            0.045,
            shoes,
        )


def _add_torso(
    builder: SceneBuilder, body: _Frame, p: SubjectParams, hip_y: float, shoulder_y: float
) -> None:
    builder.box(
        "torso",
        body.point((0.0, (hip_y + shoulder_y) / 2, 0.0)),
        (p.shoulder_half_width, p.torso_length / 2, p.torso_half_depth),
        0.07,
        p.top,
        rotation=body.world_to_local,
    )
    builder.box(
        "pelvis",
        body.point((0.0, hip_y, 0.0)),
        (p.hip_half_width + 0.9 * p.leg_radius, 0.1, 0.9 * p.torso_half_depth),
        0.06,
        p.bottom,
        rotation=body.world_to_local,
    )
    builder.ellipsoid(
        "emblem",
        body.point((p.emblem_offset, shoulder_y - 0.17, p.torso_half_depth - 0.004)),
        (0.055, 0.055, 0.015),
        Material(p.emblem),
        rotation=body.world_to_local,
        blend=False,
    )


def _add_arms(
    builder: SceneBuilder, body: _Frame, p: SubjectParams, shoulder_y: float, skin: Material
) -> None:
    forearm_material = p.top if p.long_sleeves else skin
    for index, (side, name) in enumerate(((1.0, "left"), (-1.0, "right"))):
        shoulder = (
            side * (p.shoulder_half_width - 0.3 * p.arm_radius),
            shoulder_y - 1.2 * p.arm_radius,
            0.0,
        )
        hanging = torch.tensor([0.0, -1.0, 0.0])
        pose = rotation_x(-p.arm_swing_deg[index]) @ rotation_z(side * p.arm_abduction_deg[index])
        upper = pose @ hanging
        forward = normalize(torch.tensor([0.0, 0.0, 1.0]) - upper[2] * upper)
        bend = math.radians(p.elbow_bend_deg[index])
        lower = math.cos(bend) * upper + math.sin(bend) * forward
        elbow = torch.tensor(shoulder) + p.upper_arm_length * upper
        wrist = elbow + p.forearm_length * lower
        builder.capsule(
            f"{name}_upper_arm", body.point(shoulder), body.point(elbow), p.arm_radius, p.top
        )
        builder.capsule(
            f"{name}_forearm",
            body.point(elbow),
            body.point(wrist),
            0.85 * p.arm_radius,
            forearm_material,
        )
        builder.ellipsoid(
            f"{name}_hand", body.point(wrist + 0.05 * lower), (0.045, 0.045, 0.045), skin
        )


def _add_head(builder: SceneBuilder, head: _Frame, p: SubjectParams, skin: Material) -> Tensor:
    """Head, hair cap and face; returns the nose tip in world coordinates."""
    rx, ry, rz = p.head_radii
    builder.ellipsoid("head", head.origin, p.head_radii, skin, rotation=head.world_to_local)

    # Hair: a slightly larger ellipsoid cut by a plane through the front and back hairlines, so it
    # covers the back of the head low and the forehead high. The plane is kept in the hair's frame.
    hair_centre = torch.tensor([0.0, 0.01, -0.005])
    front = torch.tensor([0.0, p.front_hairline * ry, rz]) - hair_centre
    back = torch.tensor([0.0, p.back_hairline * ry, -rz]) - hair_centre
    along = front - back
    normal = normalize(
        torch.tensor([0.0, along[2], -along[1]])
    )  # up and backwards: keeps crown and nape
    builder.ellipsoid(
        "hair",
        head.point(hair_centre),
        (1.1 * rx, 1.08 * ry, 1.1 * rz),
        Material(p.hair),
        rotation=head.world_to_local,
        clip=(normal.tolist(), float(normal @ back)),
        blend=False,
    )

    def on_face(x: float, y: float, inset: float) -> tuple[float, float, float]:
        """A point on the head surface at local (x, y), pushed ``inset`` metres inwards."""
        z = rz * math.sqrt(max(0.0, 1.0 - (x / rx) ** 2 - (y / ry) ** 2))
        return x, y, z - inset

    for side, name in ((1.0, "left"), (-1.0, "right")):
        builder.ellipsoid(
            f"{name}_eye",
            head.point(on_face(side * 0.35 * rx, 0.1 * ry, 0.006)),
            (0.016, 0.016, 0.016),
            Material(EYE_COLOUR),
            blend=False,
        )
    nose_base = on_face(0.0, -0.12 * ry, 0.004)
    nose_depth = 0.03
    builder.ellipsoid(
        "nose",
        head.point(nose_base),
        (0.017, 0.024, nose_depth),
        Material(_darker(p.skin)),
        rotation=head.world_to_local,
        blend=False,
    )
    mouth_y = -0.5 * ry
    builder.capsule(
        "mouth",
        head.point(on_face(-0.28 * rx, mouth_y, 0.004)),
        head.point(on_face(0.28 * rx, mouth_y, 0.004)),
        0.009,
        Material(MOUTH_COLOUR),
        blend=False,
    )
    return head.point((nose_base[0], nose_base[1], nose_base[2] + nose_depth))


def _darker(colour: RGB, factor: float = 0.85) -> RGB:
    r, g, b = (c * factor for c in colour)
    return r, g, b
