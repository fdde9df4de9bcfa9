"""Frame times <-> audio feature times; the one audio sample rate.

Timing, in one place:

- wav2vec2's convolutional feature encoder (kernels 10,3,3,3,3,2,2; strides 5,2,2,2,2,2,2) hops
  320 samples at 16 kHz (20 ms, 50 Hz) and sees 400 samples (25 ms). Feature frame ``j`` covers
  samples ``[320 j, 320 j + 400)``; we place it at the centre of that span,
  ``t_j = (320 j + 200) / 16000 = 0.02 j + 0.0125`` s (:func:`feature_times`; derived from the
  model's own ``conv_kernel`` / ``conv_stride``). The log-mel encoder uses the same rule with its
  own hop and window.
- A video frame ``k`` at ``fps`` is shown during ``[k / fps, (k + 1) / fps)``. **Frame times are
  frame start times** (presentation timestamps), as the data pipeline's ``frame_times`` and
  ``timestamps`` are: :func:`frame_times_from_fps` returns ``k / fps``. Each frame is sampled at its
  *centre*: it lasts until the next frame starts (variable frame rate is fine), the last one as long
  as the one before it (:func:`frame_centres`).
- Each video frame's feature is the linear interpolation of the two feature frames around its centre
  time (:func:`resample_to_frames`); before the first / after the last real feature frame it is that
  frame's feature (clamped).
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch

# wav2vec2's input rate (docs/FORMATS.md, "Audio"); every audio path of avfusion decodes to it.
SAMPLE_RATE = 16000
# The standard wav2vec2 / HuBERT / WavLM feature encoder: 320-sample hop, 400-sample receptive field.
CONV_KERNEL = (10, 3, 3, 3, 3, 2, 2)
CONV_STRIDE = (5, 2, 2, 2, 2, 2, 2)
HOP = 320
RECEPTIVE_FIELD = 400


def conv_geometry(conv_kernel: Sequence[int], conv_stride: Sequence[int]) -> tuple[int, int]:
    """(hop, receptive field) in samples of a stack of 1-D convolutions (no padding)."""
    hop, field = 1, 1
    for kernel, stride in zip(conv_kernel, conv_stride):
        field += (kernel - 1) * hop
        hop *= stride
    return hop, field


def conv_output_length(n_samples: torch.Tensor | int, conv_kernel: Sequence[int], conv_stride: Sequence[int]) -> torch.Tensor | int:
    """Number of feature frames the conv stack makes from ``n_samples`` (0 when too short)."""
    n = n_samples
    for kernel, stride in zip(conv_kernel, conv_stride):
        n = (n - kernel) // stride + 1
    if isinstance(n, torch.Tensor):
        return n.clamp(min=0)
    return max(int(n), 0)


def feature_times(
    n_features: int, hop: int = HOP, receptive_field: int = RECEPTIVE_FIELD, sample_rate: int = SAMPLE_RATE
) -> torch.Tensor:
    """Time (s, float64) of each feature frame: the centre of its receptive field. -> (N,)"""
    return (torch.arange(n_features, dtype=torch.float64) * hop + receptive_field / 2) / sample_rate


def frame_times_from_fps(n_frames: int, fps: float, start: float = 0.0) -> torch.Tensor:
    """Start time (s, float64) of video frames 0..n_frames-1 at ``fps``: ``start + k / fps``. -> (T,)

    Pass NTSC rates exactly (``30000 / 1001``, not 29.97) when the source is NTSC.
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return start + torch.arange(n_frames, dtype=torch.float64) / float(fps)


def frame_centres(frame_times: torch.Tensor | Sequence[float], fps: float | None = None) -> torch.Tensor:
    """Centre times (float64) of frames given their start times. (T,) or (B, T) -> same shape

    Frame ``k`` lasts until frame ``k + 1`` starts; the last frame as long as the one before it. Where
    the next time is not later (NaN or unordered padding) the row's median frame period is used. A
    single frame needs ``fps``; without it, it is sampled at its start, with a warning.
    """
    times = torch.as_tensor(frame_times, dtype=torch.float64)
    if times.shape[-1] < 2:
        if fps is not None:
            return times + 0.5 / float(fps)
        if times.numel():
            warnings.warn("one frame per row does not say how long a frame lasts: audio sampled at its start time")
        return times.clone()
    step = times.diff(dim=-1)
    ok = torch.isfinite(step) & (step > 0)
    median = torch.where(ok, step, torch.nan).nanmedian(dim=-1, keepdim=True).values
    median = torch.nan_to_num(median, nan=0.0 if fps is None else 1.0 / float(fps))
    step = torch.where(ok, step, median)
    return times + torch.cat([step, step[..., -1:]], dim=-1) / 2


def sample_features_at(
    features: torch.Tensor,
    times: torch.Tensor,
    n_valid: torch.Tensor | int | None = None,
    hop: int = HOP,
    receptive_field: int = RECEPTIVE_FIELD,
    sample_rate: int = SAMPLE_RATE,
) -> torch.Tensor:
    """Linear interpolation of feature frames at exact times (s from the first audio sample).

    features: (B, N, C); times: (B, T). ``n_valid`` ((B,) or int): the number of real feature frames
    per row (the rest is padding); times outside the real features take the first / last real
    feature. -> (B, T, C)
    """
    batch, n_feat, _ = features.shape
    times = times.to(device=features.device, dtype=torch.float64)
    if n_valid is None:
        n_valid = n_feat
    last = torch.as_tensor(n_valid, device=features.device).to(torch.float64).clamp(1, n_feat).expand(batch) - 1
    # Fractional feature index of each time, inverting t_j = (j * hop + receptive_field / 2) / sample_rate.
    pos = (times * sample_rate - receptive_field / 2) / hop
    pos = torch.nan_to_num(pos, nan=0.0)  # padded frames may carry NaN times: any finite index will do
    pos = torch.minimum(pos.clamp(min=0.0), last[:, None])
    lo = pos.floor()
    w = (pos - lo).to(features.dtype).unsqueeze(-1)
    lo = lo.long()
    hi = torch.minimum(lo + 1, last[:, None].long())
    rows = torch.arange(batch, device=features.device)[:, None]
    return features[rows, lo] * (1 - w) + features[rows, hi] * w


def resample_to_frames(
    features: torch.Tensor,
    frame_times: torch.Tensor | Sequence[float] | None = None,
    *,
    fps: float | None = None,
    n_frames: int | None = None,
    n_valid: torch.Tensor | int | None = None,
    hop: int = HOP,
    receptive_field: int = RECEPTIVE_FIELD,
    sample_rate: int = SAMPLE_RATE,
) -> torch.Tensor:
    """50 Hz features -> one feature per video frame, interpolated at each frame's centre time.

    features: (B, N, C) or (N, C). The frames are either ``frame_times``, their start times in s
    from the first audio sample ((B, T), (T,) or a list of timestamps; any frame rate, variable
    too), or ``fps`` with ``n_frames`` (frame k starts at k / fps). ``n_valid``: see
    :func:`sample_features_at`. Returns (B, T, C) or (T, C) like ``features``.
    """
    if (frame_times is None) == (fps is None):
        raise ValueError("give exactly one of frame_times or fps (with n_frames)")
    if fps is not None:
        if n_frames is None:
            raise ValueError("fps needs n_frames")
        frame_times = frame_times_from_fps(n_frames, fps)
    unbatched = features.ndim == 2
    if unbatched:
        features = features.unsqueeze(0)
    if features.ndim != 3:
        raise ValueError(f"features must be (B, N, C) or (N, C), got {tuple(features.shape)}")
    times = torch.as_tensor(frame_times, dtype=torch.float64)
    if times.ndim == 1:
        times = times.unsqueeze(0).expand(features.shape[0], -1)
    if times.ndim != 2 or times.shape[0] != features.shape[0]:
        raise ValueError(f"frame_times must be (T,) or ({features.shape[0]}, T), got {tuple(times.shape)}")
    out = sample_features_at(features, frame_centres(times, fps), n_valid, hop, receptive_field, sample_rate)
    return out.squeeze(0) if unbatched else out
