"""The audio-visual model: encoders -> fusion -> per-frame valence/arousal.

The same module runs from raw clips (``video``/``audio`` tensors through the encoders) or from
cached per-frame features (``video_feats``/``audio_feats``): cached features enter right where the
encoders' outputs would, so training on either path uses the same fusion code.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from .config import ModelConfig, ServingSpec
from .encoders import AudioEncoder, VideoEncoder, create_audio_encoder, create_video_encoder
from .fusion import FusionModel, frame_dropout, modality_dropout

MODES = ("av", "video", "audio")
# Batch keys forward() reads; labels, ids and times stay out of the call.
MODEL_INPUT_KEYS = ("video", "audio", "frame_times", "audio_lengths", "video_feats", "audio_feats",
                    "mask", "face_mask", "audio_valid", "audio_frames")


class AVModel(nn.Module):
    """Per-frame valence/arousal from face crops and/or 16 kHz audio (see :class:`ModelConfig`)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.mode not in MODES:
            raise ValueError(f"model mode {cfg.mode!r} is not one of {MODES}")
        self.cfg = cfg
        self.use_video = cfg.mode in ("av", "video")
        self.use_audio = cfg.mode in ("av", "audio")
        if self.use_video and cfg.video is None:
            raise ValueError(f"mode {cfg.mode!r} needs a video encoder config")
        if self.use_audio and cfg.audio is None:
            raise ValueError(f"mode {cfg.mode!r} needs an audio encoder config")
        self.video_encoder: VideoEncoder | None = create_video_encoder(cfg.video) if self.use_video else None
        self.audio_encoder: AudioEncoder | None = create_audio_encoder(cfg.audio) if self.use_audio else None
        video_dim = self._width(self.video_encoder, cfg.video) if self.use_video else None
        audio_dim = self._width(self.audio_encoder, cfg.audio) if self.use_audio else None
        if cfg.fusion is None:
            # No temporal model: the encoders' own valence/arousal heads are the output, frame by
            # frame for a face model (EmoNet, the face expert), over sliding windows of the track
            # for an utterance-level voice model, mixed per dimension (``cfg.mix``) for both.
            face_ok = not self.use_video or getattr(self.video_encoder, "has_va_head", False)
            voice_ok = not self.use_audio or hasattr(self.audio_encoder, "utterance")
            if not (face_ok and voice_ok):
                raise ValueError(
                    "fusion: null (no temporal model) needs encoders with their own valence/arousal heads "
                    "(EmoNet or the face expert for video, the voice expert for audio)")
            self.fusion = None
        else:
            self.fusion = FusionModel(cfg.fusion, video_dim, audio_dim)
        # Frames per encoder call: bounds activation memory for long windows of 256x256 crops.
        self.encoder_chunk = 64

    @property
    def experts_mix(self) -> Any:
        """``(2, 2)`` per-dimension weights (rows valence, arousal) of the face and the voice
        expert in a model without a temporal part that has both (``cfg.mix``)."""
        import numpy as np

        mix = self.cfg.mix or {}
        return np.array([mix.get("valence", [0.5, 0.5]), mix.get("arousal", [0.5, 0.5])], dtype=np.float64)

    @staticmethod
    def _width(encoder: nn.Module | None, enc_cfg: Any) -> int:
        return int(encoder.num_features) if encoder is not None else int(enc_cfg.dim)

    @property
    def pretrained_cfg(self) -> dict | None:
        """Preprocessing of the face crops (input size, mean, std), from the video encoder."""
        return getattr(self.video_encoder, "pretrained_cfg", None)

    @property
    def serving(self) -> ServingSpec:
        """The serving spec with every field filled: crop size, mean and std default to the video
        encoder's ``pretrained_cfg`` (what :func:`~avfusion.factory.save_pretrained` writes)."""
        s = dataclasses.replace(self.cfg.serving)
        pcfg = self.pretrained_cfg
        if pcfg is not None:
            if s.crop_size is None:
                s.crop_size = int(max(pcfg["input_size"][1:]))
            if s.mean is None:
                s.mean = [float(v) for v in pcfg["mean"]]
            if s.std is None:
                s.std = [float(v) for v in pcfg["std"]]
        sr = getattr(self.audio_encoder, "sample_rate", None)
        if sr is not None:
            s.sample_rate = int(sr)
        return s

    # -- encoders ------------------------------------------------------------------------------
    def encode_video(self, video: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``video (B, T, 3, H, W)``, ``valid (B, T)`` -> ``(B, T, C)``; only valid frames are encoded."""
        B, T = video.shape[:2]
        flat = video.flatten(0, 1)
        idx = valid.flatten().nonzero().squeeze(1)
        out = None
        enc = self.video_encoder
        assert enc is not None
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in enc.parameters())
        with torch.set_grad_enabled(grad):
            chunks = [enc.forward_features(flat[idx[i : i + self.encoder_chunk]])
                      for i in range(0, idx.numel(), self.encoder_chunk)]
        width = self._width(enc, self.cfg.video)
        out = flat.new_zeros(B * T, width)
        if chunks:
            feats = torch.cat(chunks)
            out = out.to(feats.dtype).index_copy(0, idx, feats)
        return out.view(B, T, width)

    def encode_audio(
        self, audio: torch.Tensor, frame_times: torch.Tensor, audio_lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``audio (B, S)`` 16 kHz, ``frame_times (B, T)`` seconds from the first sample -> ``(B, T, C)``."""
        enc = self.audio_encoder
        assert enc is not None
        wave_mask = None
        if audio_lengths is not None:
            wave_mask = torch.arange(audio.shape[1], device=audio.device)[None] < audio_lengths[:, None]
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in enc.parameters())
        with torch.set_grad_enabled(grad):
            return enc.forward_features(audio, frame_times, wave_mask)

    # -- forward -------------------------------------------------------------------------------
    def forward(
        self,
        video: torch.Tensor | None = None,
        audio: torch.Tensor | None = None,
        frame_times: torch.Tensor | None = None,
        audio_lengths: torch.Tensor | None = None,
        video_feats: torch.Tensor | None = None,
        audio_feats: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        face_mask: torch.Tensor | None = None,
        audio_valid: torch.Tensor | None = None,
        audio_frames: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-frame predictions ``valence``/``arousal`` ``(B, T)`` in [-1, 1].

        video: ``(B, T, 3, H, W)`` normalised crops, or video_feats ``(B, T, Cv)`` (cached).
        audio: ``(B, S)`` 16 kHz with frame_times ``(B, T)``, or audio_feats ``(B, T, Ca)`` (cached).
        mask: ``(B, T)`` True for real (non-padding) frames; face_mask ``(B, T)`` a face exists;
        audio_valid ``(B,)`` the clip has an audio track; audio_frames ``(B, T)`` the frames whose audio
        counts (speech, by the speech rule; the others are read like frames of a clip without a
        track). Missing masks mean "all present".
        """
        if self.fusion is None and self.use_audio:
            raise ValueError("a model of experts with a voice expert (no temporal part) runs through the inference "
                             "engine (avfusion predict, Predictor): its voice expert reads utterance windows")
        ref = next(t for t in (video_feats, video, audio_feats, frame_times) if t is not None)
        B, T = ref.shape[:2]
        dev = ref.device
        pad = mask.bool() if mask is not None else torch.ones(B, T, dtype=torch.bool, device=dev)
        feats: dict[str, torch.Tensor] = {}
        available: dict[str, torch.Tensor] = {}
        if self.use_video:
            faces = face_mask.bool() if face_mask is not None else torch.ones_like(pad)
            if video_feats is None:
                if video is None:
                    raise ValueError("mode needs video: pass `video` (B,T,3,H,W) or cached `video_feats`")
                if self.fusion is None:
                    return self._frame_by_frame(video, faces & pad)
                video_feats = self.encode_video(video, faces & pad)
            feats["video"], available["video"] = video_feats, faces
        if self.use_audio:
            has = audio_valid.bool() if audio_valid is not None else torch.ones(B, dtype=torch.bool, device=dev)
            if audio_feats is None:
                if audio is None or frame_times is None:
                    raise ValueError("mode needs audio: pass `audio` (B,S) with `frame_times`, or `audio_feats`")
                audio_feats = self.encode_audio(audio, frame_times, audio_lengths)
            avail = has[:, None].expand(B, T)
            if audio_frames is not None:
                avail = avail & audio_frames.bool()
            feats["audio"], available["audio"] = audio_feats, avail
        assert self.fusion is not None, "frame-by-frame models need raw video"
        if self.training and self.fusion.cfg.modality_dropout > 0:
            available = modality_dropout(available, self.fusion.cfg.modality_dropout, generator)
        if self.training and self.fusion.cfg.frame_dropout > 0:
            available = frame_dropout(available, self.fusion.cfg.frame_dropout, generator)
        dtype = next(self.fusion.parameters()).dtype
        feats = {m: f.to(dtype) for m, f in feats.items()}
        return self.fusion(feats, available, pad)

    def _frame_by_frame(self, video: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        """The video encoder's own per-frame valence/arousal (no temporal model), clipped to [-1, 1]."""
        B, T = video.shape[:2]
        flat = video.flatten(0, 1)
        vals = torch.zeros(B * T, 2, device=video.device)
        idx = valid.flatten().nonzero().squeeze(1)
        for i in range(0, idx.numel(), self.encoder_chunk):
            j = idx[i : i + self.encoder_chunk]
            out = self.video_encoder(flat[j])  # EmoNet: dict with its own valence/arousal
            vals[j] = torch.stack([out["valence"], out["arousal"]], dim=-1).float()
        vals = vals.clamp(-1, 1).view(B, T, 2)
        return {"valence": vals[..., 0], "arousal": vals[..., 1]}

    @staticmethod
    def inputs_from_batch(batch: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments of :meth:`forward` a collated batch provides (raw or cached keys).

        A batch's ``mask`` marks *labelled* real frames (what losses and metrics score). The model's
        ``mask`` is every real frame, labelled or not (``frame_indices >= 0``): an unlabelled stretch
        (Aff-Wild2's -5 frames) or an unlabelled video is still evidence for its neighbours.
        """
        kwargs = {k: batch[k] for k in MODEL_INPUT_KEYS if batch.get(k) is not None}
        if batch.get("frame_indices") is not None:
            kwargs["mask"] = batch["frame_indices"] >= 0
        return kwargs

    def forward_batch(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Run on a collated batch dict (raw or cached-feature keys, see avfusion.data)."""
        kwargs = self.inputs_from_batch(batch)
        if not self.use_video:
            kwargs.pop("video", None), kwargs.pop("video_feats", None)
        if not self.use_audio:
            for k in ("audio", "audio_feats", "audio_lengths"):
                kwargs.pop(k, None)
        return self(**kwargs, generator=generator)

    def train(self, mode: bool = True) -> "AVModel":
        super().train(mode)
        # Frozen encoders stay in eval(): BatchNorm statistics and wav2vec2's SpecAugment/layer drop
        # must not change while the fusion model trains.
        for enc, enc_cfg in ((self.video_encoder, self.cfg.video), (self.audio_encoder, self.cfg.audio)):
            if enc is not None and enc_cfg is not None and enc_cfg.frozen:
                enc.eval()
        return self
