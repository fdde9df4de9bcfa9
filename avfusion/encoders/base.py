"""Per-frame encoders behind one small interface.

Video encoders take normalised face crops ``(N, 3, H, W)`` (normalised as their ``pretrained_cfg``
says; the data transforms read it) and return one feature per image ``(N, num_features)``.
Audio encoders take 16 kHz mono waveforms ``(B, S)`` plus the time of every video frame in seconds
from the first sample ``(B, T)`` and return one feature per video frame ``(B, T, num_features)``.
Those are frame *start* times (frame k at fps: k/fps, like the decoder's timestamps); the encoder
samples the audio features at each frame's centre (see ``avfusion.timing.frame_centres``).
"""
from __future__ import annotations

import copy
from typing import Callable, Optional

import torch
from torch import nn

from ..timing import SAMPLE_RATE


class VideoEncoder(nn.Module):
    """Base class: ``num_features``, ``pretrained_cfg`` and ``forward_features``."""

    num_features: int
    # input_size (3, H, W), mean, std (per channel, applied after scaling to [0, 1]), interpolation.
    pretrained_cfg: dict
    # Whether bfloat16 inference keeps the features meaningful (False: computed in float32 always).
    supports_bf16: bool = True

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) -> (N, C)
        raise NotImplementedError


class AudioEncoder(nn.Module):
    """Base class: ``num_features``, ``sample_rate`` and ``forward_features``."""

    num_features: int
    sample_rate: int = SAMPLE_RATE

    def forward_features(
        self, wave: torch.Tensor, frame_times: torch.Tensor, wave_mask: torch.Tensor | None = None
    ) -> torch.Tensor:  # (B, S), (B, T), (B, S) -> (B, T, C)
        raise NotImplementedError


def has_float_weights(module: nn.Module) -> bool:
    """True when the module has floating-point parameters or buffers (a cast changes its maths);
    weight-free encoders (HOG, log-mel) compute in float32 whatever precision is asked."""
    return any(t.is_floating_point() for t in list(module.parameters()) + list(module.buffers()))


def inference_copy(
    module: nn.Module,
    dtype: Optional[torch.dtype] = None,
    channels_last: bool = False,
    compile: bool = False,
    device: Optional[torch.device | str] = None,
) -> tuple[nn.Module, Callable[..., object]]:
    """A frozen eval() copy of ``module`` for inference, and the callable that runs it.

    The copy is moved to ``device``, cast to ``dtype`` (bfloat16: oneDNN runs it on AVX512-BF16 /
    AMX CPUs, tensor cores on CUDA; None keeps float32; weight-free modules are not cast) and to
    channels_last (the layout oneDNN and cuDNN convolutions prefer). With ``compile`` the callable
    is ``torch.compile`` of the copy, on the CPU with inductor freezing (weights become constants,
    prepacked for oneDNN); inputs should then keep one shape. The original is left untouched.
    """
    fast = copy.deepcopy(module).eval()
    for p in fast.parameters():
        p.requires_grad_(False)
    if device is not None:
        fast = fast.to(device)
    if dtype is not None and has_float_weights(fast):
        fast = fast.to(dtype)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    run: Callable[..., object] = fast
    if compile:
        ref = next(iter(list(fast.parameters()) + list(fast.buffers())), None)
        on_cpu = ref is None or ref.device.type == "cpu"
        # A per-compile option rather than a write to torch._inductor.config, so other compiled
        # models in the process are unaffected.
        run = torch.compile(fast, options={"freezing": True} if on_cpu else None, dynamic=False)
    return fast, run
