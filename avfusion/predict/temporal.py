"""Temporal models over a whole video: video features once per frame (the inference engine), then
the fusion model over windows of ``clip_len`` frames that overlap by half (a frame near one
window's edge is in the middle of the next), averaged where they overlap through the evaluation
collector, with the audio each window spans cut from the track by the frames' timestamps exactly
as training windows are (:func:`avfusion.data.clips.window_times`).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch

from ..data.faces import FaceCropper
from ..inference.engine import DEFAULT_CHUNK, VideoOutputs, run_frames
from ..inference.runner import FrameRunner


def predict_temporal(
    model: torch.nn.Module,
    runner: Optional[FrameRunner],
    reader: Any,
    cropper: Optional[FaceCropper],
    transform: Optional[Callable[[np.ndarray], torch.Tensor]],
    clip_len: int,
    audio: Optional[np.ndarray] = None,
    sample_rate: int = 16000,
    landmarks: Optional[np.ndarray] = None,
    face_valid: Optional[np.ndarray] = None,
    chunk: int = DEFAULT_CHUNK,
    window_batch: int = 8,
    progress: Optional[Callable[[int], None]] = None,
    audio_frames: Optional[np.ndarray] = None,
) -> VideoOutputs:
    """Valence/arousal of every frame from a model with a fusion module (see the module doc).

    ``runner`` is None for audio-only models (no frame is decoded); ``audio`` is the whole 16 kHz
    track, or None when the video has none (the audio is then masked, as in training).
    ``audio_frames`` (N,) bool: the frames whose audio counts (speech); a window without any such
    frame gets its audio masked exactly like a video without a track (``audio_valid`` is per
    window, as in training). None: the whole track counts.
    """
    from ..data.audio import slice_audio
    from ..data.clips import window_starts, window_times
    from ..evaluation.collect import PredictionCollector

    n = len(reader)
    times = np.asarray(reader.timestamps, dtype=np.float64)
    ends = np.asarray(reader.frame_end_times, dtype=np.float64)
    device = next(model.parameters()).device
    if runner is not None:
        r = run_frames(runner, reader, cropper, transform, None, landmarks, face_valid, chunk, progress)
        feats, face, boxes = r.feature, r.face_mask, r.boxes
    else:
        feats, face, boxes = None, np.zeros(n, dtype=bool), np.full((n, 3), np.nan)
        if progress is not None:
            progress(n)
    T = int(clip_len)
    starts = window_starts(n, T, max(1, T // 2))
    collector = PredictionCollector({"v": n}, overlap="mean")
    period = 1.0 / float(getattr(reader, "fps", 0) or 25.0)
    use_audio = bool(getattr(model, "use_audio", False))
    has_audio = audio is not None
    for b in range(0, len(starts), window_batch):
        rows_idx, rows_audio, rows_times, rows_ok = [], [], [], []
        for s in starts[b : b + window_batch]:
            idx = np.full(T, -1, dtype=np.int64)
            part = np.arange(s, min(s + T, n))
            idx[: len(part)] = part
            wt, first, end = window_times(times, ends, idx, period, sample_rate)
            if use_audio and has_audio:
                seg = slice_audio(audio, first, end)
            else:
                seg = np.zeros(end - first, dtype=np.float32)
            rows_idx.append(idx)
            rows_audio.append(seg.astype(np.float32))
            rows_times.append(wt - first / sample_rate)
            rows_ok.append(has_audio and (audio_frames is None or bool(audio_frames[part].any())))
        B = len(rows_idx)
        idx = np.stack(rows_idx)
        real = idx >= 0
        kwargs: dict[str, Any] = {"mask": torch.from_numpy(real)}
        fm = np.zeros_like(real)
        fm[real] = face[idx[real]]
        kwargs["face_mask"] = torch.from_numpy(fm)
        if feats is not None:
            vf = np.zeros((B, T, feats.shape[1]), dtype=np.float32)
            vf[real] = feats[idx[real]]
            kwargs["video_feats"] = torch.from_numpy(vf)
        if use_audio:
            lengths = torch.tensor([len(a) for a in rows_audio], dtype=torch.long)
            wave = torch.zeros(B, int(lengths.max()))
            for k, a in enumerate(rows_audio):
                wave[k, : len(a)] = torch.from_numpy(a)
            kwargs.update(audio=wave, audio_lengths=lengths,
                          frame_times=torch.from_numpy(np.stack(rows_times).astype(np.float32)),
                          audio_valid=torch.tensor(rows_ok, dtype=torch.bool))
        kwargs = {k: v.to(device) for k, v in kwargs.items()}
        with torch.inference_mode():
            out = model(**kwargs)
        pred = torch.stack([out["valence"], out["arousal"]], dim=-1).float().cpu().numpy()
        collector.add_rows({
            "video_id": "v", "frame_indices": idx[k], "pred": pred[k], "target": np.full((T, 2), np.nan),
            "mask": np.zeros(T, dtype=bool), "face_mask": fm[k], "timestamps": np.zeros(T),
        } for k in range(B))
    v = collector.result(require_labelled=False)["v"]
    computed = np.ones(n, dtype=bool) if runner is not None else np.zeros(n, dtype=bool)
    return VideoOutputs(np.clip(v.pred, -1, 1).astype(np.float32), face, boxes, computed, times,
                        None, has_audio if use_audio else None)


__all__ = ["predict_temporal"]
