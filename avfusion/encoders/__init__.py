"""Per-frame encoders behind one small interface (:mod:`avfusion.encoders.base`) and their registry.

Each encoder module owns its architecture and its checkpoint filter function (EmoNet: ``module.``
prefixes; MAE: decoder and pos-embed resizing); :mod:`avfusion.weights` reads and loads the files.
"""
from __future__ import annotations

from typing import Callable

from ..config import AudioEncoderConfig, VideoEncoderConfig
from .base import AudioEncoder, VideoEncoder


def _emonet(cfg: VideoEncoderConfig) -> VideoEncoder:
    from .emonet import EmoNetEncoder

    return EmoNetEncoder.from_config(cfg)


def _mae_vit(cfg: VideoEncoderConfig) -> VideoEncoder:
    from .vit import MAEViTEncoder

    return MAEViTEncoder.from_config(cfg)


def _hog(cfg: VideoEncoderConfig) -> VideoEncoder:
    from .handcrafted import HOGEncoder

    return HOGEncoder.from_config(cfg)


def _timm(cfg: VideoEncoderConfig) -> VideoEncoder:
    from .timm_cnn import TimmEncoder

    return TimmEncoder.from_config(cfg)


def _face_expert(cfg: VideoEncoderConfig) -> VideoEncoder:
    from .face_expert import FaceExpertEncoder

    return FaceExpertEncoder.from_config(cfg)


def _wav2vec2(cfg: AudioEncoderConfig) -> AudioEncoder:
    from .wav2vec2 import Wav2Vec2Encoder

    return Wav2Vec2Encoder.from_config(cfg)


def _voice_expert(cfg: AudioEncoderConfig) -> AudioEncoder:
    from .voice_expert import VoiceExpertEncoder

    return VoiceExpertEncoder.from_config(cfg)


def _logmel(cfg: AudioEncoderConfig) -> AudioEncoder:
    from .handcrafted import LogMelEncoder

    return LogMelEncoder.from_config(cfg)


# Registries: the valid names and the error messages come from these dicts ("features": no
# network, the model reads cached per-frame features). "enet_b0_va" / "w2v2_msp_dim": the published
# face and voice valence/arousal experts (EmotiEffLib enet_b0_8_va_mtl, audEERING msp-dim).
VIDEO_ENCODERS: dict[str, Callable[[VideoEncoderConfig], VideoEncoder]] = {
    "emonet": _emonet, "mae_vit": _mae_vit, "hog": _hog, "timm": _timm, "enet_b0_va": _face_expert}
AUDIO_ENCODERS: dict[str, Callable[[AudioEncoderConfig], AudioEncoder]] = {
    "wav2vec2": _wav2vec2, "logmel": _logmel, "w2v2_msp_dim": _voice_expert}


def create_video_encoder(cfg: VideoEncoderConfig) -> VideoEncoder | None:
    """Build the video encoder a config names; ``"features"`` needs none (cached features)."""
    if cfg.name == "features":
        return None
    if cfg.name not in VIDEO_ENCODERS:
        raise ValueError(f"unknown video encoder {cfg.name!r}: expected one of {sorted(VIDEO_ENCODERS) + ['features']}")
    return VIDEO_ENCODERS[cfg.name](cfg)


def create_audio_encoder(cfg: AudioEncoderConfig) -> AudioEncoder | None:
    """Build the audio encoder a config names; ``"features"`` needs none (cached features)."""
    if cfg.name == "features":
        return None
    if cfg.name not in AUDIO_ENCODERS:
        raise ValueError(f"unknown audio encoder {cfg.name!r}: expected one of {sorted(AUDIO_ENCODERS) + ['features']}")
    return AUDIO_ENCODERS[cfg.name](cfg)


__all__ = ["VideoEncoder", "AudioEncoder", "VIDEO_ENCODERS", "AUDIO_ENCODERS", "create_video_encoder",
           "create_audio_encoder"]
