"""Temporal fusion of per-frame audio and video features.

Each modality becomes one token per frame (projection to ``d_model`` + modality embedding + learned
temporal embedding), so a frame without a face or a clip without audio simply masks its tokens as
attention keys instead of feeding zeros that look like a real observation. A pre-norm Transformer
encoder mixes all tokens of the window; the per-frame head reads the frame's tokens and predicts
valence and arousal through tanh (both live in [-1, 1]).
"""
from __future__ import annotations

import torch
from torch import nn

from .config import FusionConfig

MODALITIES = ("video", "audio")


class FusionTransformer(nn.Module):
    """Transformer over per-frame tokens of the modalities present (``video_dim``/``audio_dim`` set)."""

    def __init__(self, cfg: FusionConfig, video_dim: int | None, audio_dim: int | None):
        super().__init__()
        if video_dim is None and audio_dim is None:
            raise ValueError("FusionTransformer needs at least one modality (video_dim or audio_dim)")
        self.cfg = cfg
        d = cfg.d_model
        self.dims = {"video": video_dim, "audio": audio_dim}
        if cfg.input_norm not in ("layer", "none"):
            raise ValueError(f"fusion.input_norm must be 'layer' or 'none', got {cfg.input_norm!r}")
        self.proj = nn.ModuleDict(
            {
                m: nn.Sequential(
                    nn.LayerNorm(dim) if cfg.input_norm == "layer" else nn.Identity(),
                    nn.Linear(dim, d), nn.GELU(), nn.Linear(d, d),
                )
                for m, dim in self.dims.items()
                if dim is not None
            }
        )
        self.modalities = [m for m in MODALITIES if m in self.proj]
        self.modality_emb = nn.Parameter(torch.zeros(len(self.modalities), d))
        # A learned stand-in for a missing observation (no face in the frame, no audio track), so the
        # token still carries its position and the head still has something to read.
        self.missing = nn.Parameter(torch.zeros(len(self.modalities), d))
        self.time_emb = nn.Parameter(torch.zeros(cfg.max_len, d))
        nn.init.trunc_normal_(self.modality_emb, std=0.02)
        nn.init.trunc_normal_(self.missing, std=0.02)
        nn.init.trunc_normal_(self.time_emb, std=0.02)
        self.drop = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(
            d,
            cfg.n_heads,
            d * cfg.ff_mult,
            cfg.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # Nested tensors only pay off for post-norm inference; pre-norm would warn and fall back.
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        head_in = d * len(self.modalities)
        self.head = nn.Linear(head_in, 2)
        self.expr_head = nn.Linear(head_in, cfg.n_expression) if cfg.n_expression else None

    def forward(
        self,
        feats: dict[str, torch.Tensor],
        available: dict[str, torch.Tensor],
        pad_mask: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Predict per-frame valence/arousal.

        feats: modality -> ``(B, T, C_m)`` features (values at unavailable frames are ignored).
        available: modality -> ``(B, T)`` bool, the observation exists at that frame.
        pad_mask: ``(B, T)`` bool, True for real frames, False for padding at the end of a window.
        Returns ``valence``/``arousal`` ``(B, T)`` in [-1, 1] and optionally ``expression`` logits.
        """
        ref = feats[self.modalities[0]]
        B, T = ref.shape[:2]
        if T > self.cfg.max_len:
            raise ValueError(f"window of {T} frames exceeds fusion.max_len={self.cfg.max_len}")
        tokens, key_ok = [], []
        for i, m in enumerate(self.modalities):
            x = self.proj[m](feats[m])
            ok = available[m] & pad_mask
            x = torch.where(ok.unsqueeze(-1), x, self.missing[i].to(x.dtype).expand_as(x))
            tokens.append(x + self.modality_emb[i] + self.time_emb[:T])
            key_ok.append(ok)
        h = self.drop(torch.cat(tokens, dim=1))  # (B, M*T, d)
        keys = torch.cat(key_ok, dim=1)
        # A row with no observable token at all (every face missing in a video-only clip) would give
        # an all-masked softmax (NaN); let it attend to its placeholders instead.
        empty = ~keys.any(dim=1, keepdim=True)
        keys = keys | (empty & torch.cat([pad_mask] * len(self.modalities), dim=1))
        keys[:, 0] |= ~keys.any(dim=1)
        h = self.encoder(h, src_key_padding_mask=~keys)
        h = self.norm(h)
        per_frame = torch.cat(h.split(T, dim=1), dim=-1)  # (B, T, M*d)
        va = torch.tanh(self.head(per_frame))
        out = {"valence": va[..., 0], "arousal": va[..., 1]}
        if self.expr_head is not None:
            out["expression"] = self.expr_head(per_frame)
        return out


def modality_dropout(
    available: dict[str, torch.Tensor], p: float, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Hide a whole modality of some clips (training only): each clip loses, with probability ``p``,
    one modality chosen at random, never all of them, so the model learns to cope with a missing
    audio track or a clip without faces."""
    mods = list(available)
    if p <= 0 or len(mods) < 2:
        return available
    ref = available[mods[0]]
    B = ref.shape[0]
    drop = torch.rand(B, generator=generator) < p
    which = torch.randint(len(mods), (B,), generator=generator)
    out = {}
    for i, m in enumerate(mods):
        hide = (drop & (which == i)).to(ref.device)
        out[m] = available[m] & ~hide.unsqueeze(1)
    return out

