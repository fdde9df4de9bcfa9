"""Temporal fusion of per-frame audio and video features.

Each modality becomes one token per frame (projection to ``d_model`` + modality embedding + learned
temporal embedding), so a frame without a face or a clip without audio simply masks its tokens as
attention keys instead of feeding zeros that look like a real observation.

Two designs (``fusion.design``), each with a choice of temporal module (``fusion.temporal``:
``transformer``, the pre-norm Transformer encoder of the MAE + audio ABAW systems; ``gru``, the
bidirectional GRU of the two-stream Aff-Wild2 systems; ``lstm``, the recurrent layer of the
CNN + LSTM systems over short clips):

- ``joint`` (early fusion): one temporal module over the tokens of every modality together; one
  head reads the frame's tokens.
- ``gated`` (default): each modality first runs through its own temporal module with its own
  valence/arousal head; a joint module then mixes the modalities and has a head of its own. The
  output is, per dimension, a convex mix of the heads over the sources present at that frame.
  With ``fusion.gate: validation`` (default) every head trains on its own loss only and the mix
  weights (``mix``, saved with the model) are fitted on the validation split's frames after every
  epoch (:func:`fit_mix`), so the face can be trusted for valence and the voice for arousal even
  though every head fits the training clips; ``learned`` reads a per-frame gate from the joint
  features instead, trained with the mixed output's loss plus ``fusion.aux_weight`` times the
  heads'. A missing sense removes its head and the joint head from the mix, so the model falls
  back to the sense that is there. With ``fusion.reliability`` the mix is per frame: each head's
  weight is scaled by its trust, 1 where its sense is present and ``exp(-gap / decay)`` in a gap
  of its sense (``gap``: frames to the nearest frame of the window where the sense is present,
  :func:`source_gaps`), the decays fitted per dimension and head on the validation frames with the
  weights (:func:`fit_mix_decay`): a recurrent audio branch still knows the arousal of a short
  pause from the speech around it. A frame where no head is trusted takes the fitted mix of all.

Training can hide a whole sense of some clips (``fusion.modality_dropout``) and one sense over a
stretch of a window (``fusion.frame_dropout``, :func:`frame_dropout`), never both at one frame.

Every head ends in tanh: valence and arousal live in [-1, 1], and so does any convex mix of them.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .config import FusionConfig

MODALITIES = ("video", "audio")
DESIGNS = ("gated", "joint")
TEMPORAL = ("transformer", "gru", "lstm")
GATES = ("validation", "learned")


class _Recurrent(nn.Module):
    """GRU or LSTM over ``(B, T, d)`` -> ``(B, T, d)``; padding at the end of a window is packed away,
    so the backward direction of a bidirectional layer starts at the window's last real frame."""

    def __init__(self, kind: str, d: int, layers: int, dropout: float, bidirectional: bool):
        super().__init__()
        rnn = nn.GRU if kind == "gru" else nn.LSTM
        hidden = d // 2 if bidirectional else d
        self.rnn = rnn(d, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional,
                       dropout=dropout if layers > 1 else 0.0)
        self.out = nn.Linear(hidden * (2 if bidirectional else 1), d)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        lengths = pad_mask.sum(dim=1).clamp(min=1).cpu()
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        y, _ = self.rnn(packed)
        y, _ = pad_packed_sequence(y, batch_first=True, total_length=T)
        return self.out(y)


def _transformer(cfg: FusionConfig, layers: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, cfg.d_model * cfg.ff_mult, cfg.dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
    # Nested tensors only pay off for post-norm inference; pre-norm would warn and fall back.
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class _Temporal(nn.Module):
    """One temporal module over one or several token streams of the same frames.

    Transformer: every stream's tokens attend to each other across time (keys masked where the
    observation is missing); returns the streams separately. Recurrent: the streams of a frame are
    concatenated and projected back to ``d`` first; returns one stream.
    """

    def __init__(self, cfg: FusionConfig, n_streams: int, layers: int):
        super().__init__()
        self.kind = cfg.temporal
        d = cfg.d_model
        if self.kind == "transformer":
            self.net = _transformer(cfg, layers)
        else:
            self.merge = nn.Linear(d * n_streams, d) if n_streams > 1 else nn.Identity()
            self.net = _Recurrent(self.kind, d, layers, cfg.dropout, cfg.bidirectional)
        self.norm = nn.LayerNorm(d)

    def forward(self, streams: list[torch.Tensor], key_ok: list[torch.Tensor],
                pad_mask: torch.Tensor) -> list[torch.Tensor]:
        T = streams[0].shape[1]
        if self.kind != "transformer":
            return [self.norm(self.net(self.merge(torch.cat(streams, dim=-1)), pad_mask))]
        keys = torch.cat(key_ok, dim=1)
        # A row with no observable token at all (every face missing in a video-only clip) would give
        # an all-masked softmax (NaN); let it attend to its placeholders instead.
        empty = ~keys.any(dim=1, keepdim=True)
        keys = keys | (empty & torch.cat([pad_mask] * len(streams), dim=1))
        keys[:, 0] |= ~keys.any(dim=1)
        h = self.norm(self.net(torch.cat(streams, dim=1), src_key_padding_mask=~keys))
        return list(h.split(T, dim=1))


class FusionModel(nn.Module):
    """Temporal fusion over per-frame tokens of the modalities present (``video_dim``/``audio_dim``
    set); ``cfg.design`` and ``cfg.temporal`` choose the architecture (see the module docstring)."""

    def __init__(self, cfg: FusionConfig, video_dim: int | None, audio_dim: int | None):
        super().__init__()
        if video_dim is None and audio_dim is None:
            raise ValueError("the fusion model needs at least one modality (video_dim or audio_dim)")
        for key, value, allowed in (("input_norm", cfg.input_norm, ("layer", "none")), ("design", cfg.design, DESIGNS),
                                    ("temporal", cfg.temporal, TEMPORAL), ("gate", cfg.gate, GATES)):
            if value not in allowed:
                raise ValueError(f"fusion.{key} must be one of {', '.join(allowed)}; got {value!r}")
        if cfg.temporal != "transformer" and cfg.bidirectional and cfg.d_model % 2:
            raise ValueError(f"fusion.d_model must be even for a bidirectional {cfg.temporal}; got {cfg.d_model}")
        self.cfg = cfg
        d = cfg.d_model
        self.dims = {"video": video_dim, "audio": audio_dim}
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
        M = len(self.modalities)
        self.modality_emb = nn.Parameter(torch.zeros(M, d))
        # A learned stand-in for a missing observation (no face in the frame, no audio track), so the
        # token still carries its position and the head still has something to read.
        self.missing = nn.Parameter(torch.zeros(M, d))
        self.time_emb = nn.Parameter(torch.zeros(cfg.max_len, d))
        nn.init.trunc_normal_(self.modality_emb, std=0.02)
        nn.init.trunc_normal_(self.missing, std=0.02)
        nn.init.trunc_normal_(self.time_emb, std=0.02)
        self.drop = nn.Dropout(cfg.dropout)
        self.gated = cfg.design == "gated"
        if self.gated:
            # One temporal module and one head per sense; with two senses a joint module, its head and
            # the gate on top.
            self.branches = nn.ModuleDict({m: _Temporal(cfg, 1, cfg.n_layers) for m in self.modalities})
            self.branch_heads = nn.ModuleDict({m: nn.Linear(d, 2) for m in self.modalities})
            self.joint = _Temporal(cfg, M, cfg.joint_layers) if M > 1 else None
        else:
            self.joint = _Temporal(cfg, M, cfg.n_layers)
        joint_width = d * (M if cfg.temporal == "transformer" else 1)
        self.head = nn.Linear(joint_width, 2) if self.joint is not None else None
        self.gate = None
        if self.gated and self.joint is not None:
            # Sources: each sense's head, then the joint head.
            if cfg.gate == "learned":
                # Zero init: an even mix to start with.
                self.gate = nn.Linear(joint_width, 2 * (M + 1))
                nn.init.zeros_(self.gate.weight)
                nn.init.zeros_(self.gate.bias)
            else:
                # "validation": one weight per dimension and source, fitted on the validation split
                # after every epoch (set_mix); saved with the model. An even mix until the first fit.
                self.register_buffer("mix", torch.full((2, M + 1), 1.0 / (M + 1)))
                # fusion.reliability: per dimension and source, the frames over which a head stays
                # trusted after its sense drops out (weight exp(-gap / decay); 0: only where the
                # sense is present). Fitted with the weights; saved with the model.
                if cfg.reliability:
                    self.register_buffer("decay", torch.zeros(2, M + 1))
        expr_width = joint_width if self.joint is not None else d
        self.expr_head = nn.Linear(expr_width, cfg.n_expression) if cfg.n_expression else None

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
        Returns ``valence``/``arousal`` ``(B, T)`` in [-1, 1], optionally ``expression`` logits, and
        in training mode ``aux``: source name -> ``((B, T, 2)`` prediction, ``(B, T)`` bool where the
        source is present``)`` for every head that the gate mixes (their own losses).
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
            tokens.append(self.drop(x + self.modality_emb[i] + self.time_emb[:T]))
            key_ok.append(ok)
        out: dict[str, torch.Tensor] = {}
        if not self.gated:
            joint = torch.cat(self.joint(tokens, key_ok, pad_mask), dim=-1)
            va = torch.tanh(self.head(joint))
        else:
            streams = [self.branches[m]([x], [ok], pad_mask)[0] for m, x, ok in zip(self.modalities, tokens, key_ok)]
            sources = [torch.tanh(self.branch_heads[m](h)) for m, h in zip(self.modalities, streams)]
            present = list(key_ok)
            if self.joint is None:
                va, joint = sources[0], streams[0]
            else:
                joint = torch.cat(self.joint(streams, key_ok, pad_mask), dim=-1)
                sources.append(torch.tanh(self.head(joint)))
                # The joint head is consulted only where every sense is present.
                present.append(torch.stack(key_ok).all(dim=0))
                ok = torch.stack(present, dim=-1).unsqueeze(2)  # (B, T, 1, S)
                # Padding and frames with no source at all: an even mix (their output is not used).
                ok = ok | ~ok.any(dim=-1, keepdim=True)
                gap = source_gaps(present, pad_mask)  # (B, T, S) frames to the sense, inf: not in the window
                if self.gate is not None:
                    logits = self.gate(joint).view(B, T, 2, len(sources))
                    weights = torch.softmax(logits.masked_fill(~ok, float("-inf")), dim=-1)
                else:
                    decay = getattr(self, "decay", None)
                    trust = (reliability(gap, decay) if decay is not None
                             else (gap == 0).unsqueeze(2).expand(B, T, 2, len(sources))).to(joint.dtype)
                    mix = self.mix.to(joint.dtype)
                    weights = mix * trust  # renormalised over the sources trusted
                    total = weights.sum(dim=-1, keepdim=True)
                    # Where the trusted heads all have weight 0 (the sense there was never picked for
                    # this dimension): an even mix of the heads present; where no head is present
                    # (both senses missing), the fitted mix of all (each has a value from its context).
                    ok_present = torch.stack(present, dim=-1).unsqueeze(2).to(joint.dtype)  # (B, T, 1, S)
                    n_present = ok_present.sum(dim=-1, keepdim=True)
                    fallback = torch.where(n_present > 0, ok_present / n_present.clamp(min=1), mix.expand_as(weights))
                    weights = torch.where(total > 0, weights / total.clamp(min=1e-12), fallback)
                heads = torch.stack(sources, dim=-1)  # (B, T, 2, S)
                va = (weights * heads).sum(dim=-1)
                out["gate"] = weights.detach()
                out["heads"], out["heads_present"] = heads.detach(), torch.stack(present, dim=-1)
                out["heads_gap"] = gap
            if self.training:
                names = [*self.modalities, "joint"][: len(sources)]
                out["aux"] = {n: (s, p) for n, s, p in zip(names, sources, present)} if len(sources) > 1 else {}
        out["valence"], out["arousal"] = va[..., 0], va[..., 1]
        if self.expr_head is not None:
            out["expression"] = self.expr_head(joint)
        return out


    @property
    def fitted_mix(self) -> bool:
        """Whether the head weights are fitted on validation data (``gate: validation``, two senses)."""
        return hasattr(self, "mix")

    @torch.no_grad()
    def set_mix(self, weights: torch.Tensor, decay: torch.Tensor | None = None) -> None:
        """Set the per-dimension head weights ``(2, sources)`` (rows: valence, arousal; columns: each
        sense's head, then the joint head) and, optionally, their decays in frames (same shape)."""
        w = torch.as_tensor(weights, dtype=self.mix.dtype)
        if w.shape != self.mix.shape or bool((w < 0).any()) or not bool((w.sum(dim=1) > 0).all()):
            raise ValueError(f"mix weights must be {tuple(self.mix.shape)}, non-negative, each row > 0; got {w}")
        if decay is not None and hasattr(self, "decay"):
            dc = torch.as_tensor(decay, dtype=self.decay.dtype)
            if dc.shape != self.decay.shape or bool((dc < 0).any()) or not bool(torch.isfinite(dc).all()):
                raise ValueError(f"mix decays must be {tuple(self.decay.shape)}, finite and >= 0; got {dc}")
            self.decay.copy_(dc)
        self.mix.copy_(w / w.sum(dim=1, keepdim=True))


def source_gaps(present: list[torch.Tensor], pad_mask: torch.Tensor) -> torch.Tensor:
    """``(B, T, S)``: for each source (its ``(B, T)`` presence), the frames from each frame to the
    nearest frame of the window where it is present (0 where it is; inf where it is nowhere in
    the window). Padding never counts as present."""
    out = []
    B, T = pad_mask.shape
    t = torch.arange(T, device=pad_mask.device).expand(B, T)
    big = T * 4
    for p in present:
        p = p & pad_mask
        last = torch.where(p, t, torch.full_like(t, -big)).cummax(dim=1).values
        nxt = torch.where(p, t, torch.full_like(t, 2 * big)).flip(1).cummin(dim=1).values.flip(1)
        gap = torch.minimum(t - last, nxt - t).float()
        out.append(torch.where(p.any(dim=1, keepdim=True), gap, torch.full_like(gap, float("inf"))))
    return torch.stack(out, dim=-1)


def reliability(gap: torch.Tensor, decay: torch.Tensor) -> torch.Tensor:
    """Trust ``(B, T, 2, S)`` in each source per dimension from its gap ``(B, T, S)`` (frames to its
    sense) and ``decay`` ``(2, S)``: 1 where present, ``exp(-gap / decay)`` in a gap (0 with decay 0)."""
    g = gap.unsqueeze(2)  # (B, T, 1, S)
    d = decay.to(gap.dtype)
    return torch.where(g == 0, torch.ones_like(g * d),
                       torch.where(d > 0, torch.exp(-g / d.clamp(min=1e-6)), torch.zeros_like(g * d)))


def mix_weights_numpy(mix: np.ndarray, gap: np.ndarray, decay: np.ndarray) -> np.ndarray:
    """What the model's validation gate gives, in numpy: ``(N, 2, S)`` per-frame weights from the mix
    ``(2, S)``, the gaps ``(N, S)`` and decays ``(2, S)``, renormalised over the sources trusted
    (even over those present when none is)."""
    w = mix[None] * _trust_numpy(gap, decay)
    tot = w.sum(-1, keepdims=True)
    return np.where(tot > 0, w / np.maximum(tot, 1e-12), _fallback((gap == 0)[:, None, :], mix[None], w.shape))


def _trust_numpy(gap: np.ndarray, decay: np.ndarray) -> np.ndarray:
    """:func:`reliability` in numpy: ``(N, 2, S)`` from gaps ``(N, S)`` and decays ``(2, S)``."""
    g = gap[:, None, :]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return np.where(g == 0, 1.0, np.where(decay[None] > 0, np.exp(-g / np.maximum(decay[None], 1e-6)), 0.0))


def _fallback(present: np.ndarray, mix: np.ndarray, shape: tuple) -> np.ndarray:
    """Weights where the trusted heads all weigh 0: even over the heads ``present`` (bool, last
    axis the heads, broadcastable to ``shape``), the ``mix`` (broadcastable too) where none is."""
    p = present.astype(np.float64)
    n = p.sum(-1, keepdims=True)
    return np.where(n > 0, np.broadcast_to(p / np.maximum(n, 1), shape), np.broadcast_to(mix, shape))


# Decays (frames) the validation fit tries per dimension and source: 0 (only where present) to 2 s at 25 fps.
DECAYS = (0.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


def fit_mix_decay(heads: np.ndarray, gap: np.ndarray, target: np.ndarray, step: float = 0.05,
                  decays: tuple = DECAYS, rounds: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension weights and decays of the heads that maximise CCC on held-out frames.

    heads ``(N, 2, S)``, gap ``(N, S)`` (frames to each head's sense, inf: not in the window; see
    :func:`source_gaps`), target ``(N, 2)``. Starts from the weights of :func:`fit_mix` (decays 0),
    then for ``rounds`` rounds tries each source's decay in turn among ``decays``, refitting the
    weights for each; a change is kept only when it raises the validation CCC. Returns
    ``(weights (2, S), decays (2, S))``.
    """
    S = heads.shape[-1]
    present = gap == 0
    w = fit_mix(heads, present, target, step)
    decay = np.zeros((2, S))
    for d in range(2):
        best = _ccc_of(heads, gap, target, w, decay, d)
        for _ in range(rounds):
            changed = False
            for s in range(S):
                for value in decays:
                    if value == decay[d, s]:
                        continue
                    trial = decay.copy()
                    trial[d, s] = value
                    tw = _fit_dim(heads, gap, target, trial, d, step)
                    c = _ccc_of(heads, gap, target, np.where(np.arange(2)[:, None] == d, tw, w), trial, d)
                    if c > best + 1e-6:
                        best, decay, changed = c, trial, True
                        w = np.where(np.arange(2)[:, None] == d, tw, w)
            if not changed:
                break
    return w, decay


def _ccc_of(heads: np.ndarray, gap: np.ndarray, target: np.ndarray, w: np.ndarray, decay: np.ndarray, d: int) -> float:
    weights = mix_weights_numpy(w, gap, decay)[:, d, :]
    pred = (weights * np.nan_to_num(heads[:, d, :])).sum(-1)
    y = target[:, d]
    mp, my = pred.mean(), y.mean()
    return float(2 * ((pred - mp) * (y - my)).mean() / (pred.var() + y.var() + (mp - my) ** 2 + 1e-12))


def _fit_dim(heads: np.ndarray, gap: np.ndarray, target: np.ndarray, decay: np.ndarray, d: int, step: float) -> np.ndarray:
    """The best grid weights of dimension ``d`` under ``decay`` (as :func:`fit_mix`, with trust)."""
    S = heads.shape[-1]
    n = int(round(1 / step))
    grid = np.array([c for c in _compositions(n, S)], dtype=np.float64) / n
    trust = _trust_numpy(gap, decay)[:, d, :]
    h = np.nan_to_num(heads[:, d, :].astype(np.float64))
    y = target[:, d].astype(np.float64)
    best, best_w = -np.inf, grid[0]
    for chunk in np.array_split(grid, max(1, len(grid) // 32)):
        w = chunk[:, None, :] * trust[None]
        tot = w.sum(-1)
        w = np.where(tot[..., None] > 0, w / np.maximum(tot, 1e-12)[..., None],
                     _fallback(gap == 0, chunk[:, None, :], w.shape))
        pred = (w * h[None]).sum(-1)
        mp, my = pred.mean(1), y.mean()
        cov = ((pred - mp[:, None]) * (y - my)[None]).mean(1)
        ccc = 2 * cov / (pred.var(1) + y.var() + (mp - my) ** 2 + 1e-12)
        i = int(np.argmax(ccc))
        if ccc[i] > best + 1e-12:
            best, best_w = float(ccc[i]), chunk[i]
    return best_w


def fit_mix(heads: np.ndarray, present: np.ndarray, target: np.ndarray, step: float = 0.05) -> np.ndarray:
    """Per-dimension convex weights of the heads that maximise CCC on held-out frames (stacking).

    heads ``(N, 2, S)`` each head's prediction, present ``(N, S)`` bool, target ``(N, 2)``: the scored
    frames of the validation split. Weights on a grid of ``step`` over the simplex, renormalised per
    frame over the heads present there (all of them where none is), as the model mixes them. Returns ``(2, S)``; ties keep the
    earlier (smaller joint-head) grid point.
    """
    gap = np.where(np.asarray(present, dtype=bool), 0.0, np.inf)
    no_decay = np.zeros((2, heads.shape[-1]))
    return np.stack([_fit_dim(heads, gap, target, no_decay, d, step) for d in range(2)])


def _compositions(n: int, k: int):
    """All k non-negative integers summing to n (grid points of the simplex)."""
    if k == 1:
        yield (n,)
        return
    for first in range(n + 1):
        for rest in _compositions(n - first, k - 1):
            yield (first, *rest)


def frame_dropout(
    available: dict[str, torch.Tensor], p: float, generator: torch.Generator | None = None,
    span: tuple[float, float] = (0.2, 0.5),
) -> dict[str, torch.Tensor]:
    """Hide one sense over a stretch of some clips (training only): each clip, with probability
    ``p``, loses one sense chosen at random over a run of ``span`` (fractions) of its window, never
    where the other sense is missing too; the model learns to cover for a sense that drops out for
    a while (a covered face, a pause in the speech)."""
    mods = list(available)
    if p <= 0 or len(mods) < 2:
        return available
    ref = available[mods[0]]
    B, T = ref.shape
    drop = torch.rand(B, generator=generator) < p
    which = torch.randint(len(mods), (B,), generator=generator)
    frac = span[0] + (span[1] - span[0]) * torch.rand(B, generator=generator)
    length = (frac * T).round().long().clamp(min=1, max=T)
    start = (torch.rand(B, generator=generator) * (T - length + 1).float()).floor().long()
    t = torch.arange(T)[None]
    stretch = (t >= start[:, None]) & (t < (start + length)[:, None]) & drop[:, None]
    out = {}
    for i, m in enumerate(mods):
        others = torch.stack([available[o] for o in mods if o != m]).any(dim=0)
        hide = (stretch & (which == i)[:, None]).to(ref.device) & others
        out[m] = available[m] & ~hide
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
