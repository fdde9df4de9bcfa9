"""Clip preprocessing as the encoder's ``pretrained_cfg`` says, and clip-level augmentation.

The encoder owns its preprocessing (timm's convention): ``pretrained_cfg`` gives ``input_size``
``(3, H, W)`` and per-channel ``mean`` / ``std`` applied after scaling pixels to [0, 1]
(EmoNet: mean 0, std 1, i.e. plain [0, 1]; MAE ViT: ImageNet statistics). :func:`build_transform`
turns a face-crop clip ``(T, H, W, 3)`` uint8 RGB into ``(T, 3, H', W')`` float32.

Training augmentation is drawn once per clip and applied identically to every frame, so the
clip stays temporally coherent (a face that flips or rotates between frames would be motion the
temporal model learns from). Steps, in order: resize, flip + affine (one warp), colour jitter,
optional HSV conversion, normalisation.
"""
from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
import torch

# Training augmentation defaults; ``augment`` overrides any of them (0 switches a step off).
DEFAULT_AUGMENT: dict[str, float] = {
    "flip": 0.5,  # probability of a horizontal flip
    "rotate": 10.0,  # rotation drawn from U(-rotate, rotate) degrees
    "scale": 0.1,  # zoom drawn from U(1 - scale, 1 + scale)
    "translate": 0.05,  # shift drawn from U(-translate, translate) x the side, per axis
    "brightness": 0.2,  # factors drawn from U(1 - v, 1 + v)
    "contrast": 0.2,
    "saturation": 0.2,
}

# ITU-R BT.601 luma weights (what PIL's "L" conversion and torchvision's jitter use).
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

class ClipTransform:
    """Callable ``(clip (T, H, W, 3) uint8 RGB, rng) -> (T, 3, H', W') float32``.

    Build it with :func:`build_transform`. In training, ``rng`` (a ``numpy.random.Generator``)
    draws the clip's augmentation; without one, a generator is seeded from torch's global RNG,
    which DataLoader seeds differently in every worker and ``torch.manual_seed`` makes
    reproducible. Evaluation ignores ``rng``: resize and normalise only.

    With ``hsv``, the RGB values (after augmentation) are converted to HSV with OpenCV and scaled
    to [0, 1] per channel before the mean/std normalisation. OpenCV's uint8 HSV has H in 0-179
    (degrees / 2) and S, V in 0-255; this class converts float32 RGB in [0, 1], where OpenCV gives
    H in degrees [0, 360) and S, V in [0, 1], and divides H by 360. That is the uint8 H / 180
    without its 2-degree quantisation: red -> 0, green -> 1/3, blue -> 2/3 (hue wraps: 1 == 0).
    The encoder's mean/std are then applied to the H, S, V channels as they are.
    """

    def __init__(
        self,
        input_size: tuple[int, int],
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        train: bool = False,
        hsv: bool = False,
        augment: dict[str, float] | None = None,
    ) -> None:
        self.input_size = (int(input_size[0]), int(input_size[1]))  # (H, W)
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3)
        self.std = np.asarray(std, dtype=np.float32).reshape(3)
        if (self.std <= 0).any():
            raise ValueError(f"std must be positive, got {tuple(self.std)}")
        self.train = train
        self.hsv = hsv
        unknown = sorted(set(augment or {}) - set(DEFAULT_AUGMENT))
        if unknown:
            raise ValueError(f"unknown augmentation key(s) {unknown}; valid: {sorted(DEFAULT_AUGMENT)}")
        self.augment = {**DEFAULT_AUGMENT, **(augment or {})}

    def __repr__(self) -> str:
        aug = f", augment={self.augment}" if self.train else ""
        return (
            f"ClipTransform(input_size={self.input_size}, mean={tuple(self.mean.tolist())}, "
            f"std={tuple(self.std.tolist())}, train={self.train}, hsv={self.hsv}{aug})"
        )

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        """Draw one clip's augmentation: flip, angle (degrees), scale, shift (pixels), colour."""
        a = self.augment
        h, w = self.input_size

        def sym(v: float) -> float:
            return float(rng.uniform(-v, v)) if v > 0 else 0.0

        return {
            "flip": bool(rng.random() < a["flip"]),
            "angle": sym(a["rotate"]),
            "scale": 1.0 + sym(a["scale"]),
            "shift": (sym(a["translate"]) * w, sym(a["translate"]) * h),
            "brightness": 1.0 + sym(a["brightness"]),
            "contrast": 1.0 + sym(a["contrast"]),
            "saturation": 1.0 + sym(a["saturation"]),
        }

    def __call__(self, clip: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        clip = np.asarray(clip)
        if clip.ndim != 4 or clip.shape[3] != 3 or clip.dtype != np.uint8:
            raise ValueError(
                f"a clip must be uint8 RGB frames (T, H, W, 3), got {clip.dtype} {clip.shape}"
            )
        x = self._resize(clip)
        if not self.train and not self.hsv:
            return self._normalise(x)
        if self.train:
            if rng is None:
                rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
            p = self.sample_params(rng)
            x = self._geometry(x, p)
        x = x.astype(np.float32)
        x *= np.float32(1.0 / 255.0)
        if self.train:
            x = _colour_jitter(x, p["brightness"], p["contrast"], p["saturation"])
        if self.hsv:
            x = rgb_to_hsv01(x)
        x -= self.mean
        x /= self.std
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))

    def _normalise(self, x: np.ndarray) -> torch.Tensor:
        """Serving's path: the same float32 steps as training's (``/255``, ``- mean``, ``/ std``, in
        that order, so the values are bit for bit the same) done in place by torch on a
        channels-first view (one copy instead of five; torch's threads)."""
        t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)
        t.mul_(np.float32(1.0 / 255.0))
        t.sub_(torch.from_numpy(np.asarray(self.mean, dtype=np.float32)).view(1, 3, 1, 1))
        t.div_(torch.from_numpy(np.asarray(self.std, dtype=np.float32)).view(1, 3, 1, 1))
        return t

    def _resize(self, clip: np.ndarray) -> np.ndarray:
        h, w = self.input_size
        if clip.shape[1:3] == (h, w):
            return clip
        interp = cv2.INTER_AREA if clip.shape[1] * clip.shape[2] > h * w else cv2.INTER_LINEAR
        return _per_frame(clip, lambda im: cv2.resize(im, (w, h), interpolation=interp))

    def _geometry(self, x: np.ndarray, p: dict[str, Any]) -> np.ndarray:
        if p["angle"] == 0.0 and p["scale"] == 1.0 and p["shift"] == (0.0, 0.0):
            return np.ascontiguousarray(x[:, :, ::-1]) if p["flip"] else x
        h, w = self.input_size
        m = affine_matrix((w, h), p["angle"], p["scale"], p["shift"], p["flip"])
        return _per_frame(
            x,
            lambda im: cv2.warpAffine(
                im, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
            ),
        )


def build_transform(
    pretrained_cfg: dict[str, Any],
    train: bool,
    hsv: bool = False,
    augment: dict[str, float] | None = None,
) -> ClipTransform:
    """The clip transform for an encoder: ``pretrained_cfg`` needs ``input_size`` (3, H, W),
    ``mean`` and ``std``; ``augment`` overrides :data:`DEFAULT_AUGMENT` (training only)."""
    missing = [k for k in ("input_size", "mean", "std") if k not in pretrained_cfg]
    if missing:
        raise ValueError(f"pretrained_cfg lacks {missing}; it has {sorted(pretrained_cfg)}")
    size = tuple(pretrained_cfg["input_size"])
    if len(size) != 3 or size[0] != 3:
        raise ValueError(f"pretrained_cfg input_size must be (3, H, W), got {size}")
    return ClipTransform(size[1:], pretrained_cfg["mean"], pretrained_cfg["std"], train, hsv, augment)


def serving_transform(spec: Any, train: bool = False, augment: dict[str, float] | None = None) -> ClipTransform:
    """The clip transform a :class:`~avfusion.config.ServingSpec` (every field filled, as
    ``AVModel.serving`` gives it) describes: crop side, colour space, mean and std."""
    if spec.crop_size is None or spec.mean is None or spec.std is None:
        raise ValueError("the serving spec lacks crop_size/mean/std (use model.serving, which fills them "
                         "from the video encoder)")
    size = int(spec.crop_size)
    return ClipTransform((size, size), spec.mean, spec.std, train, spec.colour == "hsv", augment)


def affine_matrix(
    size: tuple[int, int], angle: float, scale: float, shift: tuple[float, float], flip: bool
) -> np.ndarray:
    """2x3 matrix for cv2.warpAffine: mirror, rotate ``angle`` degrees (counter-clockwise on
    screen) and zoom ``scale`` about the image centre, then shift by ``shift`` pixels.

    ``size`` is (W, H); the centre is that of the pixel grid, ((W-1)/2, (H-1)/2), so a mirror
    maps column x to W-1-x exactly.
    """
    w, h = size
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    a = math.radians(angle)
    c, s = scale * math.cos(a), scale * math.sin(a)
    # Image y points down, so a counter-clockwise turn on screen is [[c, s], [-s, c]].
    lin = np.array([[c, s], [-s, c]], dtype=np.float64)
    if flip:
        lin = lin @ np.diag([-1.0, 1.0])
    centre = np.array([cx, cy])
    offset = centre + np.asarray(shift, dtype=np.float64) - lin @ centre
    return np.hstack([lin, offset[:, None]])


def _per_frame(x: np.ndarray, fn: Any) -> np.ndarray:
    """Apply an OpenCV per-image op to every frame of (T, H, W, 3).

    One call per frame: stacking frames as channels fails for cv2.resize (at most 4 channels
    for general scale factors).
    """
    return np.stack([fn(frame) for frame in x])


def _colour_jitter(x: np.ndarray, brightness: float, contrast: float, saturation: float) -> np.ndarray:
    """Brightness, contrast (about each frame's mean grey) and saturation (about each pixel's grey)
    on x (T, H, W, 3) float32 in [0, 1], in place; the same factors for every frame."""
    if brightness != 1.0:
        np.multiply(x, brightness, out=x)
        np.clip(x, 0.0, 1.0, out=x)
    if contrast != 1.0:
        grey_mean = _grey(x).mean(axis=(1, 2), dtype=np.float64).astype(np.float32)
        grey_mean = grey_mean[:, None, None, None]
        np.subtract(x, grey_mean, out=x)
        np.multiply(x, contrast, out=x)
        np.add(x, grey_mean, out=x)
        np.clip(x, 0.0, 1.0, out=x)
    if saturation != 1.0:
        grey = _grey(x)[..., None]
        np.subtract(x, grey, out=x)
        np.multiply(x, saturation, out=x)
        np.add(x, grey, out=x)
        np.clip(x, 0.0, 1.0, out=x)
    return x


def _grey(x: np.ndarray) -> np.ndarray:
    return _LUMA[0] * x[..., 0] + _LUMA[1] * x[..., 1] + _LUMA[2] * x[..., 2]


def rgb_to_hsv01(x: np.ndarray) -> np.ndarray:
    """RGB (..., 3) float32 in [0, 1] -> HSV with every channel in [0, 1] (H = degrees / 360)."""
    shape = x.shape
    hsv = cv2.cvtColor(np.ascontiguousarray(x, dtype=np.float32).reshape(-1, 1, 3), cv2.COLOR_RGB2HSV)
    hsv = hsv.reshape(shape)
    hsv[..., 0] /= 360.0
    return hsv
