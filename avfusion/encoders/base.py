"""Per-frame encoders behind one small interface.

Video encoders take normalised face crops ``(N, 3, H, W)`` (normalised as their ``pretrained_cfg``
says; the data transforms read it) and return one feature per image ``(N, num_features)``.
Audio encoders take 16 kHz mono waveforms ``(B, S)`` plus the time of every video frame in seconds
from the first sample ``(B, T)`` and return one feature per video frame ``(B, T, num_features)``.
Those are frame *start* times (frame k at fps: k/fps, like the decoder's timestamps); the encoder
samples the audio features at each frame's centre (see ``avfusion.timing.frame_centres``).
"""
from __future__ import annotations

import torch
from torch import nn

from ..timing import SAMPLE_RATE


class VideoEncoder(nn.Module):
    """Base class: ``num_features``, ``pretrained_cfg`` and ``forward_features``."""

    num_features: int
    # input_size (3, H, W), mean, std (per channel, applied after scaling to [0, 1]), interpolation.
    pretrained_cfg: dict

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
