"""Where a 16 kHz track has speech: Silero VAD (the ``silero-vad`` package, MIT; its model file
ships inside the package, nothing is downloaded), and a cheap level check first so that a
digitally silent track never reaches the network.

Speech detection is a data step with one rule everywhere (``avfusion cache`` stores it, training,
``evaluate`` and ``predict`` apply it):

1. :meth:`SpeechDetector.frame_probabilities`: the network's speech probability of every 32 ms
   chunk of the track, averaged per video frame over the chunks the frame overlaps (frame ``k``
   spans its start time to the next frame's, :func:`frame_spans`). ``avfusion cache`` stores these
   per-frame probabilities beside the features (``speech``).
2. :func:`speech_frames` (:class:`SpeechRule`: threshold, shortest speech, shortest pause, padding)
   turns them into the frames with speech. Audio models read frames without speech like frames of
   a video without an audio track; the model's serving spec carries the rule it was trained with.
"""
from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

# Peak level at or below which a track is digital silence (about -80 dBFS): no speech, no VAD run.
SILENCE_PEAK = 1e-4
VAD_SAMPLE_RATE = 16000
# Samples per step of the Silero network at 16 kHz (32 ms).
CHUNK = 512


def _load_silero() -> tuple[Any, Any]:
    """Silero's JIT model and its ``get_speech_timestamps``. Importing the package sets torch to
    one thread for the whole process; the caller's setting is put back."""
    import torch

    threads = torch.get_num_threads()
    try:
        import silero_vad
    except ImportError:
        raise RuntimeError("speech detection needs the silero-vad package (pip install silero-vad); "
                           "or turn it off (--speech off / speech='off')") from None
    finally:
        torch.set_num_threads(threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
        model = silero_vad.load_silero_vad(onnx=False)
    return model, silero_vad.get_speech_timestamps


class SpeechDetector:
    """Speech segments of a 16 kHz mono track.

    Args:
        threshold: Silero's speech probability threshold.
        min_speech: shortest speech segment kept (seconds).
        min_silence: shortest pause that splits two segments (seconds).
        pad: seconds added on each side of a segment.
    """

    def __init__(self, threshold: float = 0.5, min_speech: float = 0.25, min_silence: float = 0.1,
                 pad: float = 0.03) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"speech threshold must be in (0, 1), got {threshold}")
        self.threshold = float(threshold)
        self.min_speech, self.min_silence, self.pad = float(min_speech), float(min_silence), float(pad)
        self._model: Any = None
        self._timestamps: Any = None
        self._lock = threading.Lock()  # the model keeps state between calls: one track at a time

    def segments(self, audio: Optional[np.ndarray], sample_rate: int = VAD_SAMPLE_RATE) -> np.ndarray:
        """Speech segments ``(K, 2)`` (start, end) in seconds from the first sample; none for no audio
        or a track whose peak is at most :data:`SILENCE_PEAK`."""
        if sample_rate != VAD_SAMPLE_RATE:
            raise ValueError(f"speech detection takes {VAD_SAMPLE_RATE} Hz audio, got {sample_rate} Hz")
        if audio is None or not len(audio):
            return np.zeros((0, 2))
        a = np.asarray(audio, dtype=np.float32)
        if a.ndim != 1:
            raise ValueError(f"speech detection takes a mono track (S,), got shape {a.shape}")
        if not np.isfinite(a).all():
            a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        if float(np.abs(a).max()) <= SILENCE_PEAK:
            return np.zeros((0, 2))
        import torch

        with self._lock:
            if self._model is None:
                self._model, self._timestamps = _load_silero()
            # The network runs on 32 ms steps, one after the other: a second thread only adds
            # synchronisation (measured 25x slower with 2 threads on a 2-core CPU).
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                with torch.inference_mode():
                    found = self._timestamps(
                        torch.from_numpy(np.ascontiguousarray(a)), self._model, threshold=self.threshold,
                        sampling_rate=sample_rate, min_speech_duration_ms=int(self.min_speech * 1000),
                        min_silence_duration_ms=int(self.min_silence * 1000), speech_pad_ms=int(self.pad * 1000))
            finally:
                torch.set_num_threads(threads)
        if not found:
            return np.zeros((0, 2))
        return np.array([[s["start"], s["end"]] for s in found], dtype=np.float64) / sample_rate


    def chunk_probabilities(self, audio: Optional[np.ndarray], sample_rate: int = VAD_SAMPLE_RATE) -> np.ndarray:
        """The network's speech probability of every :data:`CHUNK` samples of the track, ``(K,)``
        float32 (all zero for no audio or digital silence, which never reaches the network)."""
        if sample_rate != VAD_SAMPLE_RATE:
            raise ValueError(f"speech detection takes {VAD_SAMPLE_RATE} Hz audio, got {sample_rate} Hz")
        if audio is None or not len(audio):
            return np.zeros(0, dtype=np.float32)
        a = np.asarray(audio, dtype=np.float32)
        if a.ndim != 1:
            raise ValueError(f"speech detection takes a mono track (S,), got shape {a.shape}")
        if not np.isfinite(a).all():
            a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        k = -(-len(a) // CHUNK)
        if float(np.abs(a).max()) <= SILENCE_PEAK:
            return np.zeros(k, dtype=np.float32)
        import torch

        padded = np.zeros(k * CHUNK, dtype=np.float32)
        padded[: len(a)] = a
        with self._lock:
            if self._model is None:
                self._model, self._timestamps = _load_silero()
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # 32 ms steps one after the other (see segments)
            try:
                with torch.inference_mode():
                    self._model.reset_states()
                    x = torch.from_numpy(padded)
                    out = [float(self._model(x[i * CHUNK : (i + 1) * CHUNK], sample_rate)) for i in range(k)]
                    self._model.reset_states()
            finally:
                torch.set_num_threads(threads)
        return np.asarray(out, dtype=np.float32)

    def frame_probabilities(self, audio: Optional[np.ndarray], times: np.ndarray,
                            sample_rate: int = VAD_SAMPLE_RATE, fps: Optional[float] = None) -> np.ndarray:
        """Speech probability of every frame (start ``times`` (N,) in seconds from the first sample),
        ``(N,)`` float32: the mean over the chunks the frame overlaps (see the module doc). No audio
        or digital silence: zeros."""
        times = np.asarray(times, dtype=np.float64)
        probs = self.chunk_probabilities(audio, sample_rate)
        return chunks_to_frames(probs, times, sample_rate, fps)


def frame_spans(times: np.ndarray, fps: Optional[float] = None) -> np.ndarray:
    """``(N, 2)`` start and end seconds of frames starting at ``times``: each frame lasts until the
    next one starts, the last one a frame period (``1 / fps``, else the median step)."""
    times = np.asarray(times, dtype=np.float64)
    if not len(times):
        return np.zeros((0, 2))
    if fps:
        period = 1.0 / float(fps)
    else:
        period = float(np.median(np.diff(times))) if len(times) > 1 else 0.04
    ends = np.append(times[1:], times[-1] + period)
    return np.stack([times, np.maximum(ends, times)], axis=1)


def chunks_to_frames(probs: np.ndarray, times: np.ndarray, sample_rate: int = VAD_SAMPLE_RATE,
                     fps: Optional[float] = None) -> np.ndarray:
    """Per-chunk probabilities (``CHUNK`` samples each, from sample 0) to per-frame ones: the mean
    over the chunks a frame's span overlaps (at least the chunk holding its start); frames past
    the track's end get 0."""
    probs = np.asarray(probs, dtype=np.float64)
    spans = frame_spans(times, fps)
    out = np.zeros(len(spans), dtype=np.float32)
    if not len(probs):
        return out
    # Sample positions, rounded once: float noise in a frame time does not move a chunk boundary.
    first = np.floor(spans[:, 0] * sample_rate + 0.5).astype(np.int64)
    last = np.floor(spans[:, 1] * sample_rate + 0.5).astype(np.int64)
    c0 = np.clip(first // CHUNK, 0, None)
    c1 = np.maximum(c0 + 1, -(-last // CHUNK))
    csum = np.concatenate([[0.0], np.cumsum(probs)])
    K = len(probs)
    a, b = np.minimum(c0, K), np.minimum(c1, K)
    n = b - a
    ok = n > 0
    out[ok] = ((csum[b[ok]] - csum[a[ok]]) / n[ok]).astype(np.float32)
    return out


@dataclass(frozen=True)
class SpeechRule:
    """Frames with speech from per-frame speech probabilities (Silero's segment rule, on frames):
    speech starts at a frame whose probability reaches ``threshold`` and lasts while it stays
    above ``threshold - 0.15``; pauses shorter than ``min_silence`` seconds are closed, speech
    shorter than ``min_speech`` seconds is dropped, and each segment grows by ``pad`` seconds on
    both sides (rounded up to whole frames)."""

    threshold: float = 0.5
    min_speech: float = 0.25
    min_silence: float = 0.1
    pad: float = 0.03

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"speech threshold must be in (0, 1), got {self.threshold}")
        for k in ("min_speech", "min_silence", "pad"):
            if getattr(self, k) < 0:
                raise ValueError(f"speech {k} must be >= 0 seconds, got {getattr(self, k)}")


def serving_rule(spec: Any) -> Optional[SpeechRule]:
    """The rule of a model's serving spec (:class:`~avfusion.config.ServingSpec`); None when its
    speech detection is ``off`` (the whole track counts)."""
    from ..config import speech_mode

    if speech_mode(getattr(spec, "speech", "vad")) == "off":
        return None
    return SpeechRule(float(spec.speech_threshold), float(spec.speech_min), float(spec.speech_min_silence),
                      float(spec.speech_pad))


def speech_frames(probs: np.ndarray, fps: float, rule: Optional[SpeechRule] = None) -> np.ndarray:
    """``(N,)`` bool: the frames with speech under ``rule`` (see :class:`SpeechRule`)."""
    rule = rule or SpeechRule()
    p = np.asarray(probs, dtype=np.float64)
    n = len(p)
    on = np.zeros(n, dtype=bool)
    state, low = False, rule.threshold - 0.15
    for k in range(n):
        if state:
            state = p[k] >= low
        else:
            state = p[k] >= rule.threshold
        on[k] = state
    fps = float(fps) if fps and fps > 0 else 25.0
    runs = frame_runs(on)
    # Close short pauses, then drop short speech, then pad.
    gap = int(np.ceil(rule.min_silence * fps - 1e-9))
    for (a0, b0), (a1, _) in zip(runs[:-1], runs[1:]):
        if a1 - b0 < gap:
            on[b0:a1] = True
    shortest = int(np.ceil(rule.min_speech * fps - 1e-9))
    for a, b in frame_runs(on):
        if b - a < shortest:
            on[a:b] = False
    pad = int(np.ceil(rule.pad * fps - 1e-9))
    if pad:
        out = on.copy()
        for a, b in frame_runs(on):
            out[max(0, a - pad) : min(n, b + pad)] = True
        on = out
    return on


def frame_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[start, end)`` runs of frames where ``mask`` is True."""
    m = np.concatenate([[False], np.asarray(mask, bool), [False]])
    edges = np.flatnonzero(m[1:] != m[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def frame_speech(segments: np.ndarray, times: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: frame start ``times`` (seconds from the first audio sample) inside a segment."""
    times = np.asarray(times, dtype=np.float64)
    out = np.zeros(len(times), dtype=bool)
    for start, end in np.asarray(segments, dtype=np.float64).reshape(-1, 2):
        out |= (times >= start) & (times < end)
    return out


__all__ = ["SpeechDetector", "SpeechRule", "serving_rule", "speech_frames", "frame_runs", "chunks_to_frames", "frame_spans", "frame_speech",
           "SILENCE_PEAK", "VAD_SAMPLE_RATE", "CHUNK"]
