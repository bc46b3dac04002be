"""Keypoint matchers for the reprojection-error metric.

Every matcher returns pixel coordinates in this package's convention: the centre of pixel
(row i, column j) is at (x, y) = (j + 0.5, i + 0.5), the convention intrinsics are written in
(see ``pippo_lightning.geometry.cameras``). OpenCV and kornia put pixel centres on integers, so
their keypoints are shifted by half a pixel here, once, instead of in every caller.

- :class:`SiftMatcher`: OpenCV SIFT + Lowe's ratio test; no weights, the offline default.
- :class:`LightGlueMatcher`: kornia DISK + LightGlue, as in the Pippo release. It never
  downloads unless ``allow_download=True``; without local weights it raises
  :class:`MissingWeightsError` saying what to pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from pippo_lightning.checkpoints.loading import load_torch_file
from pippo_lightning.errors import PippoError
from pippo_lightning.extras import require

#: Offset from OpenCV/kornia pixel coordinates (centres on integers) to ours (centres on .5).
PIXEL_CENTER_OFFSET = 0.5

#: Prefix that marks a weights spec as a Hugging Face Hub file: ``hf://owner/repo/path/in/repo``.
HUB_PREFIX = "hf://"

Matches = tuple[Tensor, Tensor, Tensor]  # pts_a [M, 2], pts_b [M, 2], confidence [M]
ImageLike = np.ndarray | Tensor


class MissingWeightsError(PippoError, FileNotFoundError):
    """A matcher's network weights are neither given as a local file nor allowed to download."""


@runtime_checkable
class Matcher(Protocol):
    """Finds corresponding points between two images.

    ``match(image_a, image_b)`` takes uint8 RGB images [H, W, 3] (numpy or torch) and returns
    ``(pts_a [M, 2], pts_b [M, 2], confidence [M])`` as float tensors: pixel (x, y) in the
    package's convention (pixel centres at +0.5) and a per-match confidence, higher is better.
    """

    def match(self, image_a: ImageLike, image_b: ImageLike) -> Matches: ...


def as_uint8_rgb(image: ImageLike) -> np.ndarray:
    """Validate an image [H, W, 3] uint8 (numpy or torch) and return it as contiguous numpy."""
    array = image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(
            f"matchers take uint8 RGB images [H, W, 3]; got {array.dtype} {list(array.shape)}"
        )
    return np.ascontiguousarray(array)


def _empty_matches() -> Matches:
    return torch.zeros(0, 2), torch.zeros(0, 2), torch.zeros(0)


class SiftMatcher:
    """OpenCV SIFT keypoints matched by nearest descriptor, filtered by Lowe's ratio test.

    Confidence is ``1 - d1 / d2`` (best over second-best descriptor distance): 0 at the ratio
    test's limit of ambiguity, towards 1 for distinctive matches.

    The defaults are tuned for generated views of people at 256-1024 px, which carry less
    contrast than the photographs SIFT's defaults were chosen for: a lower contrast threshold
    finds about twice the keypoints, and the stricter ratio plus the cross check remove most of
    the wrong matches that repeated clothing patterns produce (on the synthetic studio at
    256 px: 2.6 % -> 0.54 % reprojection error on ground truth, with essential-matrix
    verification in :class:`~pippo_lightning.metrics.ReprojectionError`).

    Args:
        ratio: keep a match when ``d1 < ratio * d2`` (Lowe used 0.75-0.8).
        mutual: also require the match to be the best one seen from image b (cross check).
        max_features: SIFT's feature budget per image; 0 keeps all.
        contrast_threshold: SIFT's detection threshold (OpenCV's default is 0.04).
    """

    def __init__(
        self,
        ratio: float = 0.7,
        mutual: bool = True,
        max_features: int = 0,
        contrast_threshold: float = 0.01,
    ) -> None:
        # deferred: OpenCV is only needed when SIFT matching is used
        cv2 = require("cv2", "the SIFT matcher")

        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")
        if not contrast_threshold > 0.0:
            raise ValueError(f"contrast_threshold must be > 0, got {contrast_threshold}")
        self.ratio = ratio
        self.mutual = mutual
        self._cv2 = cv2
        self._sift = cv2.SIFT_create(nfeatures=max_features, contrastThreshold=contrast_threshold)
        self._matcher = cv2.BFMatcher(cv2.NORM_L2)

    def _detect(self, image: ImageLike) -> tuple[np.ndarray, np.ndarray | None]:
        """Keypoints [K, 2] (OpenCV pixel convention) and descriptors [K, 128] of one image."""
        gray = self._cv2.cvtColor(as_uint8_rgb(image), self._cv2.COLOR_RGB2GRAY)
        keypoints, descriptors = self._sift.detectAndCompute(gray, None)
        points = np.array([kp.pt for kp in keypoints], dtype=np.float32).reshape(-1, 2)
        return points, descriptors

    def match(self, image_a: ImageLike, image_b: ImageLike) -> Matches:
        points_a, desc_a = self._detect(image_a)
        points_b, desc_b = self._detect(image_b)
        # The ratio test needs a second-nearest neighbour in image b.
        if desc_a is None or desc_b is None or len(desc_a) < 1 or len(desc_b) < 2:
            return _empty_matches()

        index_a, index_b, confidence = [], [], []
        for candidates in self._matcher.knnMatch(desc_a, desc_b, k=2):
            if len(candidates) < 2:
                continue
            best, second = candidates
            if best.distance < self.ratio * second.distance:
                index_a.append(best.queryIdx)
                index_b.append(best.trainIdx)
                confidence.append(1.0 - best.distance / max(second.distance, 1e-12))
        index_a, index_b = np.asarray(index_a, dtype=np.int64), np.asarray(index_b, dtype=np.int64)
        confidence = np.asarray(confidence, dtype=np.float32)

        if self.mutual and len(index_a):
            best_in_a = np.full(len(desc_b), -1, dtype=np.int64)  # for each b, its nearest a
            for reverse in self._matcher.match(desc_b, desc_a):
                best_in_a[reverse.queryIdx] = reverse.trainIdx
            keep = best_in_a[index_b] == index_a
            index_a, index_b, confidence = index_a[keep], index_b[keep], confidence[keep]

        return (
            torch.from_numpy(points_a[index_a] + PIXEL_CENTER_OFFSET),
            torch.from_numpy(points_b[index_b] + PIXEL_CENTER_OFFSET),
            torch.from_numpy(confidence),
        )


# --------------------------------------------------------------------------- DISK + LightGlue

#: Where kornia publishes the weights the Pippo release used (DISK "depth", LightGlue for DISK).
DEFAULT_DISK_WEIGHTS = "hf://kornia/disk/depth-save.pth"
DEFAULT_LIGHTGLUE_WEIGHTS = "hf://kornia/lightglue/disk_lightglue.pth"


def resolve_weights(spec: str | Path, what: str, allow_download: bool) -> Path:
    """A local file for a weights spec: a path, or ``hf://owner/repo/file`` on the Hub.

    A Hub file is taken from the local Hugging Face cache; it is fetched only when
    ``allow_download`` is set. Anything else raises :class:`MissingWeightsError` naming ``what``
    (the constructor argument to set).
    """
    spec = str(spec)
    if not spec.startswith(HUB_PREFIX):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise MissingWeightsError(f"{what}: no weights file at {path}")
        return path

    parts = spec[len(HUB_PREFIX) :].split("/")
    if len(parts) < 3:
        raise ValueError(f"{what}: a Hub spec is hf://owner/repo/file, got {spec!r}")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    require("huggingface_hub", f"{what} from {spec}")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=not allow_download))
    except Exception as error:  # the Hub raises several types for "not cached" / "offline"
        hint = (
            "the download failed"
            if allow_download
            else "it is not in the local Hugging Face cache and downloads are off"
        )
        raise MissingWeightsError(
            f"{what}: cannot load {spec} ({hint}). Pass {what}=<path to a state-dict file>, "
            "or allow_download=True to fetch it from the Hugging Face Hub."
        ) from error


def _load_state_dict(path: Path, nested_key: str | None = None) -> dict[str, Tensor]:
    """Tensors of a state-dict file; ``nested_key`` unwraps checkpoints that nest it."""
    state = load_torch_file(path)
    if nested_key is not None and nested_key in state:
        state = state[nested_key]
    return state


def _modernize_lightglue_keys(state: dict[str, Tensor], n_layers: int) -> dict[str, Tensor]:
    """Rename keys of LightGlue's original checkpoints to kornia's module layout.

    The original release stores ``self_attn.{i}`` / ``cross_attn.{i}``; kornia nests both
    under ``transformers.{i}``.
    """
    renamed = {}
    for key, value in state.items():
        for i in range(n_layers):
            for attention in ("self_attn", "cross_attn"):
                old = f"{attention}.{i}."
                if key.startswith(old):
                    key = f"transformers.{i}.{attention}." + key[len(old) :]
        renamed[key] = value
    return renamed


def build_disk(weights: Path) -> nn.Module:
    """kornia DISK with weights from a state-dict file (bare, or nested under "extractor")."""
    require("kornia", "the DISK feature extractor")
    from kornia.feature import DISK

    disk = DISK()  # random init; constructing it downloads nothing
    disk.load_state_dict(_load_state_dict(weights, nested_key="extractor"))
    return disk.eval()


def build_lightglue(weights: Path, **config: Any) -> nn.Module:
    """kornia LightGlue configured for DISK descriptors, with weights from a state-dict file.

    ``LightGlue("disk")`` would download its weights in the constructor, so the model is built
    from the DISK configuration with ``features=None`` and loaded here instead.
    """
    require("kornia", "the LightGlue matcher")
    from kornia.feature import LightGlue

    disk_config = {k: v for k, v in LightGlue.features["disk"].items() if k != "weights"}
    lightglue = LightGlue(None, **{**disk_config, **config})
    state = _modernize_lightglue_keys(_load_state_dict(weights), lightglue.conf.n_layers)
    result = lightglue.load_state_dict(state, strict=False)
    # Buffers derived from the config (confidence thresholds) may be absent; weights may not.
    parameters = dict(lightglue.named_parameters())
    missing = [key for key in result.missing_keys if key in parameters]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{weights} is not a LightGlue-for-DISK state dict: missing {missing[:3]}..., "
            f"unexpected {result.unexpected_keys[:3]}..."
        )
    return lightglue.eval()


class LightGlueMatcher(nn.Module):
    """kornia DISK keypoints matched by LightGlue, the Pippo release's matcher.

    A module with frozen weights (no gradients). :class:`~pippo_lightning.metrics.ReprojectionError`
    holds it outside its own module tree, so the networks stay out of the owner's checkpoints
    and DDP/FSDP parameters, and moves it to its device before matching.

    Args:
        disk_weights: state-dict file of ``kornia.feature.DISK`` (kornia's ``depth-save.pth``
            nests it under "extractor"; both layouts load), or ``hf://owner/repo/file``.
        lightglue_weights: state-dict file of LightGlue for DISK descriptors (kornia's or the
            original ``disk_lightglue.pth``), or ``hf://owner/repo/file``.
        allow_download: fetch ``hf://`` weights that are not in the local cache. Off by default:
            evaluation should never reach the network by surprise.
        max_keypoints: DISK's keypoint budget per image (2048 in the release).
        filter_threshold: LightGlue's minimum match score; the score is the confidence.
    """

    def __init__(
        self,
        disk_weights: str | Path = DEFAULT_DISK_WEIGHTS,
        lightglue_weights: str | Path = DEFAULT_LIGHTGLUE_WEIGHTS,
        allow_download: bool = False,
        max_keypoints: int = 2048,
        filter_threshold: float = 0.1,
    ) -> None:
        super().__init__()
        self.max_keypoints = max_keypoints
        self.disk_path = resolve_weights(disk_weights, "disk_weights", allow_download)
        self.lightglue_path = resolve_weights(
            lightglue_weights, "lightglue_weights", allow_download
        )
        self.disk = build_disk(self.disk_path).requires_grad_(False)
        self.lightglue = build_lightglue(
            self.lightglue_path, filter_threshold=filter_threshold
        ).requires_grad_(False)

    def _to_input(self, image: ImageLike) -> Tensor:
        """uint8 [H, W, 3] -> float [3, H, W] in [0, 1] on the networks' device."""
        array = as_uint8_rgb(image)
        device = next(self.disk.parameters()).device
        return torch.from_numpy(array).to(device).permute(2, 0, 1).float() / 255.0

    @torch.inference_mode()
    def match(self, image_a: ImageLike, image_b: ImageLike) -> Matches:
        inputs = [self._to_input(image_a), self._to_input(image_b)]
        if inputs[0].shape != inputs[1].shape:
            # DISK runs the pair as one batch; differently sized images go one at a time.
            features = [
                self.disk(x[None], self.max_keypoints, pad_if_not_divisible=True)[0] for x in inputs
            ]
        else:
            features = self.disk(torch.stack(inputs), self.max_keypoints, pad_if_not_divisible=True)
        if min(len(f.keypoints) for f in features) < 2:
            return _empty_matches()

        def view(feature: Any, image: Tensor) -> dict[str, Tensor]:
            height, width = image.shape[-2:]
            return {
                "keypoints": feature.keypoints[None],  # [1, K, 2] (x, y)
                "descriptors": feature.descriptors[None],  # [1, K, 128]
                "image_size": torch.tensor([[width, height]], device=image.device),
            }

        prediction = self.lightglue(
            {"image0": view(features[0], inputs[0]), "image1": view(features[1], inputs[1])}
        )
        matches = prediction["matches0"][0]  # [K_a], index into b or -1
        valid = matches > -1
        points_a = features[0].keypoints[valid]
        points_b = features[1].keypoints[matches[valid]]
        confidence = prediction["matching_scores0"][0][valid]
        return (
            points_a.float().cpu() + PIXEL_CENTER_OFFSET,
            points_b.float().cpu() + PIXEL_CENTER_OFFSET,
            confidence.float().cpu(),
        )


def build_matcher(name: str, **kwargs: Any) -> Matcher:
    """A matcher by name: "sift" (offline default) or "lightglue" (DISK + LightGlue)."""
    matchers: dict[str, type] = {"sift": SiftMatcher, "lightglue": LightGlueMatcher}
    if name not in matchers:
        raise ValueError(f"unknown matcher {name!r}; choose one of {sorted(matchers)}")
    return matchers[name](**kwargs)
