"""Per-frame encoders behind one small interface.

Video encoders take normalised face crops ``(N, 3, H, W)`` (normalised as their ``pretrained_cfg``
says; the data transforms read it) and return one feature per image ``(N, num_features)``.
Audio encoders take 16 kHz mono waveforms ``(B, S)`` plus the time of every video frame in seconds
from the first sample ``(B, T)`` and return one feature per video frame ``(B, T, num_features)``.
Those are frame *start* times (frame k at fps: k/fps, like the decoder's timestamps); the encoder
samples the audio features at each frame's centre (see ``wav2vec2.frame_centres``).
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import AudioEncoderConfig, VideoEncoderConfig


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
    sample_rate: int = 16000

    def forward_features(
        self, wave: torch.Tensor, frame_times: torch.Tensor, wave_mask: torch.Tensor | None = None
    ) -> torch.Tensor:  # (B, S), (B, T), (B, S) -> (B, T, C)
        raise NotImplementedError


def create_video_encoder(cfg: VideoEncoderConfig) -> VideoEncoder | None:
    """Build the video encoder a config names; ``"features"`` needs none (cached features)."""
    if cfg.name == "features":
        return None
    if cfg.name == "emonet":
        from .emonet import EmoNetEncoder

        return EmoNetEncoder.from_config(cfg)
    if cfg.name == "mae_vit":
        from .vit import MAEViTEncoder

        return MAEViTEncoder.from_config(cfg)
    if cfg.name == "hog":
        from .handcrafted import HOGEncoder

        return HOGEncoder.from_config(cfg)
    raise ValueError(f"unknown video encoder {cfg.name!r}: expected 'emonet', 'mae_vit', 'hog' or 'features'")


def create_audio_encoder(cfg: AudioEncoderConfig) -> AudioEncoder | None:
    """Build the audio encoder a config names; ``"features"`` needs none (cached features)."""
    if cfg.name == "features":
        return None
    if cfg.name == "wav2vec2":
        from .wav2vec2 import Wav2Vec2Encoder

        return Wav2Vec2Encoder.from_config(cfg)
    if cfg.name == "logmel":
        from .handcrafted import LogMelEncoder

        return LogMelEncoder.from_config(cfg)
    raise ValueError(f"unknown audio encoder {cfg.name!r}: expected 'wav2vec2', 'logmel' or 'features'")
