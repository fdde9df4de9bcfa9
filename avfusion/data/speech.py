"""Where a 16 kHz track has speech: Silero VAD (the ``silero-vad`` package, MIT; its model file
ships inside the package, nothing is downloaded), and a cheap level check first so that a
digitally silent track never reaches the network.

A frame has speech when its start time lies in a speech segment (:func:`frame_speech`). Audio
models read frames without speech like frames of a video without an audio track.
"""
from __future__ import annotations

import threading
import warnings
from typing import Any, Optional

import numpy as np

# Peak level at or below which a track is digital silence (about -80 dBFS): no speech, no VAD run.
SILENCE_PEAK = 1e-4
VAD_SAMPLE_RATE = 16000


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


def frame_speech(segments: np.ndarray, times: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: frame start ``times`` (seconds from the first audio sample) inside a segment."""
    times = np.asarray(times, dtype=np.float64)
    out = np.zeros(len(times), dtype=bool)
    for start, end in np.asarray(segments, dtype=np.float64).reshape(-1, 2):
        out |= (times >= start) & (times < end)
    return out


__all__ = ["SpeechDetector", "frame_speech", "SILENCE_PEAK", "VAD_SAMPLE_RATE"]
