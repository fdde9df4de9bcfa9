"""The per-frame part of a model, prepared for fast inference: precision, layout, compilation.

A frame-by-frame model (EmoNet, ``fusion: null``) is its video encoder: each face crop gives
valence, arousal and expression logits. A temporal model's video encoder gives one feature per
frame, and the fusion model runs over windows of those features afterwards. Either way the
expensive part is the per-frame network, and that is what :class:`FrameRunner` runs:

- ``precision="auto"`` picks bfloat16 + channels_last where the hardware computes bf16 natively
  (CUDA; CPUs with AVX512-BF16 or AMX), float32 elsewhere; ``"fp32"`` / ``"bf16"`` force one.
  bf16 keeps 8 bits of mantissa: on the parity face EmoNet's valence/arousal/logits move by about
  2 % of their largest magnitude (see the README's performance section for measured figures).
- ``compile=True``: ``torch.compile`` (inductor; on the CPU with freezing). The first batch pays
  the compilation (tens of seconds on a 2-core CPU); batches keep one shape (the last is padded).
- ``flip``: average with the mirrored crop (the official EmoNet evaluation does): twice the work.
- Everything runs under ``torch.inference_mode`` in batches of ``batch_size`` crops.
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from ..encoders.base import has_float_weights, inference_copy
from .hardware import cpu_has_fast_bf16

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str, device: Union[torch.device, str]) -> str:
    """``"fp32"`` or ``"bf16"`` for ``precision`` (one of :data:`PRECISIONS`) on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision != "auto":
        return precision
    dev = torch.device(device)
    if dev.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if dev.type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"


def resolve_device(device: Optional[Union[torch.device, str]] = None) -> torch.device:
    """``device`` checked against the machine (default: CUDA when available, else the CPU); a
    ValueError in one line when it names hardware this machine lacks."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {device!r} is not a device name (cpu, cuda, cuda:1, ...): {e}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA GPU is available on this machine; use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    elif dev.type not in ("cpu", "mps", "xpu"):
        raise ValueError(f"device {device!r}: use cpu or cuda")
    return dev


class _FrameNet(nn.Module):
    """A video encoder as one module: crops -> ``va`` (N, 2) [+ ``expression``] or ``feature``."""

    def __init__(self, encoder: nn.Module, frame_by_frame: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.frame_by_frame = frame_by_frame

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.frame_by_frame:
            return {"feature": self.encoder.forward_features(x)}
        out = self.encoder(x)
        res = {"va": torch.stack([out["valence"], out["arousal"]], dim=-1)}
        if "expression" in out:
            res["expression"] = out["expression"]
        return res


class FrameRunner:
    """Runs a model's per-frame network on batches of normalised crops.

    Args:
        model: an :class:`~avfusion.model.AVModel` with a video encoder (not changed).
        precision: ``auto`` | ``fp32`` | ``bf16`` (see the module docstring).
        compile: torch.compile the network.
        device: where it runs (default: CUDA when available, else the CPU).
        flip: average with mirrored crops (EmoNet only); None keeps the model's own setting.
        batch_size: crops per call.

    Calling it on ``(N, 3, H, W)`` float crops returns numpy float32 arrays: ``va`` (N, 2) clipped
    to [-1, 1] and ``expression`` (N, K) probabilities for a frame-by-frame model, ``feature``
    (N, C) for a temporal model.
    """

    def __init__(
        self,
        model: nn.Module,
        precision: str = "auto",
        compile: bool = False,
        device: Optional[Union[torch.device, str]] = None,
        flip: Optional[bool] = None,
        batch_size: int = 16,
    ) -> None:
        encoder = getattr(model, "video_encoder", None)
        if encoder is None:
            raise ValueError("this model has no video encoder: nothing runs per frame")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = resolve_device(device)
        self.frame_by_frame = getattr(model, "fusion", None) is None
        self.precision = resolve_precision(precision, self.device)
        if not has_float_weights(encoder) or not getattr(encoder, "supports_bf16", True):
            self.precision = "fp32"  # weight-free features (HOG) are computed in float32
        if flip and not hasattr(encoder, "flip_average"):
            raise ValueError(f"flip averaging is available for EmoNet encoders only, not {type(encoder).__name__}")
        net = _FrameNet(encoder, self.frame_by_frame)
        self.dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        self.channels_last = self.precision == "bf16"
        self.compiled = bool(compile)
        self.module, self._run = inference_copy(net, self.dtype if self.precision == "bf16" else None,
                                                self.channels_last, compile, self.device)
        if flip is not None and hasattr(self.module.encoder, "flip_average"):
            self.module.encoder.flip_average = bool(flip)
        self.flip = bool(getattr(self.module.encoder, "flip_average", False))
        self.batch_size = int(batch_size)
        self.num_features = int(getattr(encoder, "num_features", 0))

    @property
    def description(self) -> str:
        parts = [self.precision + (" + channels_last" if self.channels_last else ""), str(self.device)]
        if self.compiled:
            parts.append("compiled")
        if self.flip:
            parts.append("flip-averaged")
        return ", ".join(parts)

    def __call__(self, crops: torch.Tensor) -> dict[str, np.ndarray]:
        n = crops.shape[0]
        outs: dict[str, list[np.ndarray]] = {}
        # Flip averaging doubles what the network sees: half as many crops per call keeps its
        # batch (and the activation memory) at batch_size images.
        step = max(1, self.batch_size // 2) if self.flip else self.batch_size
        with torch.inference_mode():
            for s in range(0, n, step):
                x = crops[s : s + step]
                m = x.shape[0]
                if self.compiled and m < step:  # one shape: no recompilation
                    x = torch.cat([x, x[-1:].expand(step - m, *x.shape[1:])])
                x = x.to(device=self.device, dtype=self.dtype, non_blocking=True)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                out = self._run(x)
                for k, v in out.items():
                    outs.setdefault(k, []).append(v[:m].float().cpu().numpy())
        res = {k: np.concatenate(v) for k, v in outs.items()}
        if "va" in res:
            res["va"] = np.clip(res["va"], -1.0, 1.0)
        if "expression" in res:
            logits = res["expression"] - res["expression"].max(axis=1, keepdims=True)
            e = np.exp(logits)
            res["expression"] = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
        return res


__all__ = ["FrameRunner", "resolve_precision", "resolve_device", "PRECISIONS"]
