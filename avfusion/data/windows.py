"""The one window planner: which frames each window of a temporal model covers, their times, the
audio each window spans, and the model inputs of a batch of windows built from per-frame arrays.

A window is a run of ``clip_len`` frame indices of one video, ``-1`` where it runs past the end
(padding, masked). Windows start at ``0, hop, 2·hop, …`` until one reaches the last frame:
training uses ``hop < clip_len`` (overlapping windows), evaluation ``hop == clip_len`` (every frame
exactly once), prediction ``clip_len // 2`` by default (overlaps averaged by
:mod:`avfusion.inference.aggregate`). The training datasets (:class:`~avfusion.data.clips.
ClipDataset`, :class:`~avfusion.data.features.FeatureDataset`), file prediction and live
prediction all take windows, times and audio spans from here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from .records import VideoRecord


@dataclass(frozen=True)
class Window:
    """``clip_len`` frame indices of record number ``record`` (``-1`` = padding)."""

    record: int
    indices: np.ndarray

    @property
    def n_real(self) -> int:
        return int((self.indices >= 0).sum())


def sequence_indices(record: VideoRecord, target_fps: Optional[float] = None) -> np.ndarray:
    """The frame indices windows run over: every frame, or one per ``1 / target_fps`` seconds.

    Resampling picks, for each time ``t0 + j / target_fps`` before the end of the last frame, the
    frame on screen then (the last frame starting at or before it), using the record's timestamps.
    """
    n = record.n_frames
    if target_fps is None:
        return np.arange(n, dtype=np.int64)
    if not target_fps > 0:
        raise ValueError(f"target_fps must be positive, got {target_fps}")
    t = record.frame_times()
    end = t[-1] + 1.0 / record.fps
    # The small epsilon keeps a grid time that equals a frame time (in float) on that frame.
    grid = t[0] + np.arange(int(np.ceil((end - t[0]) * target_fps - 1e-9))) / target_fps
    idx = np.searchsorted(t, grid + 1e-9, side="right") - 1
    return np.clip(idx, 0, n - 1).astype(np.int64)


def window_starts(length: int, clip_len: int, stride: int) -> list[int]:
    """Starts ``0, stride, …`` until a window reaches the end (the last one may be padded)."""
    if clip_len < 1 or stride < 1:
        raise ValueError(f"clip_len and stride must be >= 1, got {clip_len} and {stride}")
    if stride > clip_len:
        raise ValueError(f"stride {stride} > clip_len {clip_len} would skip frames")
    starts = [0]
    while starts[-1] + clip_len < length:
        starts.append(starts[-1] + stride)
    return starts


def make_windows(records: Sequence[VideoRecord], clip_len: int, stride: Optional[int] = None,
                 target_fps: Optional[float] = None, drop_unlabelled: bool = False) -> list[Window]:
    """Windows over every record (see the module docstring).

    Args:
        clip_len: frames per window (T).
        stride: frames between window starts; default ``clip_len`` (evaluation: each frame once).
        target_fps: resample every record to this rate first (None: native frames).
        drop_unlabelled: leave out windows without a single labelled frame (training on Aff-Wild2,
            whose long ``-5`` stretches would otherwise give windows that teach nothing).
    """
    stride = clip_len if stride is None else int(stride)
    out = []
    for r, rec in enumerate(records):
        seq = sequence_indices(rec, target_fps)
        for s in window_starts(len(seq), clip_len, stride):
            idx = np.full(clip_len, -1, dtype=np.int64)
            part = seq[s:s + clip_len]
            idx[:len(part)] = part
            if drop_unlabelled and not rec.label_mask[part].any():
                continue
            out.append(Window(r, idx))
    return out


def frame_times(timestamps: np.ndarray, indices: np.ndarray, period: float) -> np.ndarray:
    """``(T,)`` times of a window's frames: real frames keep their own, padding continues at
    ``period`` so times stay increasing (the audio encoder samples its features at these times)."""
    real = indices >= 0
    ridx = indices[real]
    T = len(indices)
    times = np.empty(T, dtype=np.float64)
    times[real] = timestamps[ridx]
    last = times[len(ridx) - 1]
    times[~real] = last + period * np.arange(1, T - len(ridx) + 1)
    return times


def window_times(
    timestamps: np.ndarray, end_times: np.ndarray, indices: np.ndarray, period: float, sample_rate: int
) -> tuple[np.ndarray, int, int]:
    """The times of a window's frames and the audio samples it spans.

    ``indices`` (T,): frame indices, ``-1`` for padding at the end; ``timestamps`` / ``end_times``:
    every frame's start and end in seconds. Real frames keep their own times; padding continues at
    ``period`` so times stay increasing (the audio encoder samples its features at these times).
    Returns ``(times (T,) float64, first, end)``: the window's audio is samples ``[first, end)`` at
    ``sample_rate``, from the first frame's start to the last real frame's end.
    """
    ridx = indices[indices >= 0]
    times = frame_times(timestamps, indices, period)
    first = int(np.floor(times[0] * sample_rate + 0.5))
    end = max(int(np.floor(end_times[ridx[-1]] * sample_rate + 0.5)), first + 1)
    return times, first, end



def window_inputs(
    windows: np.ndarray,
    timestamps: np.ndarray,
    end_times: np.ndarray,
    period: float,
    face_mask: np.ndarray,
    video_feats: Optional[np.ndarray] = None,
    audio: Optional[np.ndarray] = None,
    audio_frames: Optional[np.ndarray] = None,
    use_audio: bool = False,
    has_audio: bool = False,
    sample_rate: int = 16000,
) -> dict[str, torch.Tensor]:
    """The model inputs of a batch of windows over one video's per-frame arrays.

    ``windows`` (B, T) frame indices (``-1`` padding); ``timestamps``/``end_times`` (N,) every
    frame's start and end; ``face_mask`` (N,); ``video_feats`` (N, C) per-frame video features;
    ``audio`` the whole track at ``sample_rate`` (None: masked, as a video without a track), cut per
    window by :func:`window_times` exactly as training cuts it; ``audio_frames`` (N,) the frames
    whose audio counts (speech; None: all count), the others read like frames of a video without a
    track, exactly as the datasets give them.
    Returns ``mask``, ``face_mask`` (B, T), ``video_feats`` (B, T, C), and for models with audio
    ``audio`` (B, S) zero padded, ``audio_lengths`` (B,), ``frame_times`` (B, T), ``audio_valid`` (B,),
    ``audio_frames`` (B, T).
    """
    from .audio import slice_audio

    windows = np.asarray(windows, dtype=np.int64)
    B, T = windows.shape
    real = windows >= 0
    out: dict[str, torch.Tensor] = {"mask": torch.from_numpy(real)}
    fm = np.zeros_like(real)
    fm[real] = face_mask[windows[real]]
    out["face_mask"] = torch.from_numpy(fm)
    if video_feats is not None:
        vf = np.zeros((B, T, video_feats.shape[1]), dtype=np.float32)
        vf[real] = video_feats[windows[real]]
        out["video_feats"] = torch.from_numpy(vf)
    if use_audio:
        segs, rel, ok = [], [], []
        present = has_audio and audio is not None
        af = np.zeros((B, T), dtype=bool)
        if present:
            af[real] = True if audio_frames is None else np.asarray(audio_frames, dtype=bool)[windows[real]]
        for idx in windows:
            wt, first, end = window_times(timestamps, end_times, idx, period, sample_rate)
            segs.append(slice_audio(audio, first, end).astype(np.float32) if present
                        else np.zeros(end - first, dtype=np.float32))
            rel.append(wt - first / sample_rate)
            part = idx[idx >= 0]
            ok.append(present and (audio_frames is None or bool(audio_frames[part].any())))
        lengths = torch.tensor([len(a) for a in segs], dtype=torch.long)
        wave = torch.zeros(B, int(lengths.max()))
        for k, a in enumerate(segs):
            wave[k, : len(a)] = torch.from_numpy(a)
        out.update(audio=wave, audio_lengths=lengths,
                   frame_times=torch.from_numpy(np.stack(rel).astype(np.float32)),
                   audio_valid=torch.tensor(ok, dtype=torch.bool), audio_frames=torch.from_numpy(af))
    return out


def plan_windows(n_frames: int, clip_len: int, hop: int) -> np.ndarray:
    """``(W, clip_len)`` frame indices of the windows over ``n_frames`` frames (``-1`` padding)."""
    starts = window_starts(n_frames, clip_len, hop)
    out = np.full((len(starts), clip_len), -1, dtype=np.int64)
    for k, s in enumerate(starts):
        part = np.arange(s, min(s + clip_len, n_frames))
        out[k, : len(part)] = part
    return out


__all__ = ["Window", "frame_times", "sequence_indices", "window_starts", "make_windows", "window_times", "window_inputs",
           "plan_windows"]
