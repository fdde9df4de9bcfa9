"""Any timm image model as a per-frame face encoder (``video.name: timm``, ``video.arch: resnet50``).

The per-frame CNN of the two-stream and CNN + LSTM valence/arousal systems (a ResNet-50 before a GRU
or an LSTM) is one ``arch`` away. The model is built without its classifier (``num_classes=0``:
the pooled feature); the crop size, mean, std and interpolation come from the architecture's timm
``pretrained_cfg``, so the data transforms feed it what it was trained on. Weights come from a
local file (``video.checkpoint``: a timm/torchvision ``.pth``, ``.bin`` or ``.safetensors``, bare or
under ``state_dict``/``model``, ``module.`` prefixes allowed) through :func:`avfusion.weights.load_strict`;
the classifier's keys in the file are dropped, every other key must fit.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import timm
import torch
from torch import nn

from ..config import VideoEncoderConfig
from ..weights import list_keys, load_strict
from .base import VideoEncoder

_RESERVED_KWARGS = ("pretrained", "num_classes")
_WRAPPERS = ("state_dict", "model", "module")
_PREFIXES = ("module.", "model.")


class TimmEncoder(VideoEncoder):
    """A timm model (``resnet50``, ``efficientnet_b0``, ``convnext_tiny``, ...) giving its pooled
    feature per image. A frozen encoder has no trainable parameters and stays in eval()."""

    def __init__(self, arch: str = "resnet50", timm_kwargs: dict | None = None, frozen: bool = True) -> None:
        super().__init__()
        kwargs = dict(timm_kwargs or {})
        reserved = [k for k in _RESERVED_KWARGS if k in kwargs]
        if reserved:
            raise ValueError(f"video.timm_kwargs may not set {reserved}: the encoder sets them")
        try:
            self.net = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
        except RuntimeError as e:  # timm: "Unknown model (...)"
            raise ValueError(f"video.arch {arch!r} is not a timm model: {e}") from None
        self.arch = arch
        self.num_features = int(self.net.num_features)
        cfg = timm.data.resolve_data_config({}, model=self.net)
        self.pretrained_cfg = {
            "input_size": tuple(int(v) for v in cfg["input_size"]),
            "mean": tuple(float(v) for v in cfg["mean"]),
            "std": tuple(float(v) for v in cfg["std"]),
            "interpolation": cfg.get("interpolation", "bilinear"),
        }
        classifier = self.net.pretrained_cfg.get("classifier") or ()
        self._classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
        self.frozen = frozen
        if frozen:
            self.net.requires_grad_(False)
            self.net.eval()

    @classmethod
    def from_config(cls, cfg: VideoEncoderConfig) -> "TimmEncoder":
        """Build from ``cfg.arch / timm_kwargs / frozen`` and load ``cfg.checkpoint`` if set."""
        encoder = cls(arch=cfg.arch, timm_kwargs=cfg.timm_kwargs, frozen=cfg.frozen)
        if cfg.checkpoint:
            encoder.load_checkpoint(cfg.checkpoint)
        return encoder

    def load_checkpoint(self, path: str | Path | Mapping[str, torch.Tensor]) -> set[str]:
        """Load a weight file (or state dict); returns the classifier keys that were dropped."""
        dropped: set[str] = set()

        def filter_fn(raw: Any, module: nn.Module, source: str) -> tuple[dict[str, torch.Tensor], set[str]]:
            sd = timm_filter_state_dict(raw, source, set(module.state_dict()))
            # The classifier may be nested ("head.fc" in ConvNeXt): drop every key under it.
            dropped.update(k for k in sd if any(k.startswith(c + ".") for c in self._classifier))
            return {k: v for k, v in sd.items() if k not in dropped}, set()

        load_strict(self.net, path, filter_fn, family=f"timm {self.arch} weight")
        return dropped

    def train(self, mode: bool = True) -> "TimmEncoder":
        super().train(mode)
        if self.frozen:
            self.net.eval()
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 3, H, W) normalised as ``pretrained_cfg`` says -> (N, num_features)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"timm encoder {self.arch} expects images (N, 3, H, W), got {tuple(x.shape)}")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.net(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


def timm_filter_state_dict(raw: Any, source: str, expected: set[str]) -> dict[str, torch.Tensor]:
    """A flat state dict of the image model from what a file holds: unwraps ``state_dict`` /
    ``model`` / ``module`` containers and strips ``module.`` / ``model.`` prefixes (DataParallel,
    training wrappers) from keys the model does not have as they are. Non-tensor entries are an
    error naming the file."""
    for _ in range(3):
        if isinstance(raw, Mapping):
            inner = next((raw[k] for k in _WRAPPERS if isinstance(raw.get(k), Mapping)), None)
            if inner is not None and not any(torch.is_tensor(v) for v in raw.values()):
                raw = inner
                continue
        break
    if not isinstance(raw, Mapping):
        raise ValueError(f"{source}: expected a state dict (names -> tensors), got {type(raw).__name__}")
    bad = [k for k, v in raw.items() if not torch.is_tensor(v)]
    if bad:
        raise ValueError(f"{source}: entries that are not tensors: {list_keys(sorted(map(str, bad)))}")
    sd = {}
    for key, value in raw.items():
        for prefix in _PREFIXES:
            if key not in expected and key.startswith(prefix):
                key = key[len(prefix):]
                break
        sd[key] = value
    return sd
