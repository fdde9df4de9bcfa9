"""Audio decoding to 16 kHz mono float32, and the audio samples that belong to a range of frames.

Decoding: PyAV for any container/codec FFmpeg reads (mp4/AAC, mkv/Opus, avi/MP3, ...), soundfile
for .wav/.flac. The stream is decoded at its native rate, every decoded frame is placed on the
timeline by its presentation timestamp (so encoder priming, gaps and start offsets cannot shift the
signal), channels are averaged to mono, and the whole span is resampled once with soxr
(``soxr.resample``, the "soxr_hq" resampler librosa uses by default). soxr is linear phase and
compensates its own delay, so output sample ``j`` is the signal at time ``j / 16000``; PyAV's
AudioResampler (libswresample) would work too, but resampling frame by frame makes its pts
bookkeeping and filter delay part of the alignment, which we want to be exact.

Time zero. Sample 0 of what :func:`load_audio` returns is at the start time of the file's video
stream, which is also time zero of the frame timestamps decord reports (decord subtracts the
video stream's ``start_time``). Audio that starts later than the video is preceded by zeros;
audio before the first video frame is dropped. Files without a video stream start at the audio
stream's start. This is how players synchronise the streams (by presentation timestamps), and it
makes ``round(frame_timestamp * 16000)`` the sample index of a frame.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..timing import SAMPLE_RATE

PathLike = Union[str, Path]


_SOUNDFILE_SUFFIXES = {".wav", ".flac"}
# Extra audio decoded before a requested start: after a seek, AAC/MP3 decoders need a frame or two
# to rebuild their overlap-add state, and soxr needs context for its filter.
_MARGIN_S = 0.25


class AudioDecodeError(RuntimeError):
    """An audio track cannot be opened or decoded; the message names the file."""


class NoAudioStreamError(AudioDecodeError):
    """The file has no audio stream. Datasets catch this and set ``audio_valid = False``."""


@dataclass
class AudioInfo:
    """What a file's audio stream says about itself (no decoding)."""

    sample_rate: int
    channels: int
    codec: str
    # Start of the audio stream relative to time zero (the video stream's start), in seconds.
    offset: float
    # Stream duration in seconds, when the container states it.
    duration: Optional[float]


def _stream_start(stream) -> Optional[float]:
    if stream.start_time is None or stream.time_base is None:
        return None
    return float(stream.start_time * stream.time_base)


def _open_container(path: Path):
    import av

    if not path.is_file():
        raise FileNotFoundError(f"{path}: audio/video file not found")
    if path.stat().st_size == 0:
        raise AudioDecodeError(f"{path}: empty file (0 bytes)")
    try:
        return av.open(str(path))
    except Exception as err:  # av.FFmpegError subclasses, OSError
        raise AudioDecodeError(f"{path}: not a readable media file (corrupt or truncated?): {err}") from None


def _time_zero(container) -> float:
    """Seconds (in container time) that become t = 0: the video stream start, as decord uses."""
    if container.streams.video:
        start = _stream_start(container.streams.video[0])
        if start is not None:
            return start
        return 0.0
    start = _stream_start(container.streams.audio[0])
    return start if start is not None else 0.0


def probe_audio(path: PathLike) -> Optional[AudioInfo]:
    """Audio stream facts of ``path``, or ``None`` when it has no audio stream."""
    path = Path(path)
    if path.suffix.lower() in _SOUNDFILE_SUFFIXES:
        import soundfile as sf

        try:
            info = sf.info(str(path))
            codec = info.subtype or info.format
            return AudioInfo(int(info.samplerate), int(info.channels), codec, 0.0, float(info.duration))
        except Exception:
            pass  # not what the suffix says: let FFmpeg try
    with _open_container(path) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        ctx = stream.codec_context
        start = _stream_start(stream)
        offset = (start - _time_zero(container)) if start is not None else 0.0
        duration = float(stream.duration * stream.time_base) if stream.duration else None
        return AudioInfo(int(ctx.sample_rate), int(ctx.layout.nb_channels), ctx.name, offset, duration)


def has_audio(path: PathLike) -> bool:
    """Whether ``path`` has an audio stream."""
    return probe_audio(path) is not None


# Scale of integer sample formats to [-1, 1].
_INT_SCALE = {"u8": 128.0, "s16": 32768.0, "s32": 2147483648.0, "s64": 9223372036854775808.0}


def _frame_to_mono(frame) -> np.ndarray:
    """One decoded AVFrame -> ``(n,)`` float64 mono."""
    data = frame.to_ndarray()
    channels = frame.layout.nb_channels
    name = frame.format.name.rstrip("p")
    if not frame.format.is_planar:
        data = data.reshape(-1, channels).T  # packed: (1, n*C) interleaved
    data = data.astype(np.float64)
    if name == "u8":
        data = (data - 128.0) / 128.0
    elif name in _INT_SCALE:
        data = data / _INT_SCALE[name]
    return data.mean(axis=0)


def _decode_av(
    path: Path, start: Optional[float], end: Optional[float], target: int
) -> tuple[np.ndarray, int, float]:
    """Decode ``[start - margin, end + margin]`` at the native rate.

    Returns ``(signal, native_rate, t0)`` with ``signal[n]`` at time ``t0 + n / native_rate``
    (time zero as in the module docstring); ``t0`` is a multiple of ``1 / gcd(native, target)`` so
    that the resampled signal starts on a whole target sample.
    """
    with _open_container(path) as container:
        if not container.streams.audio:
            kinds = ", ".join(s.type for s in container.streams) or "none"
            raise NoAudioStreamError(f"{path}: no audio stream in this file (streams found: {kinds})")
        stream = container.streams.audio[0]
        rate = int(stream.codec_context.sample_rate or 0)
        if rate <= 0:
            raise AudioDecodeError(f"{path}: the audio stream declares no sample rate")
        zero = _time_zero(container)
        lo = max(0.0, (start or 0.0) - _MARGIN_S)
        hi = None if end is None else end + _MARGIN_S
        # Snap the buffer start to the common grid of the native and target rates.
        grid = math.gcd(rate, target)
        n0 = int(math.floor(lo * grid)) * (rate // grid)
        if start is not None and lo > _MARGIN_S:
            container.seek(int((zero + lo - _MARGIN_S) / stream.time_base), stream=stream, backward=True)

        chunks: list[tuple[int, np.ndarray]] = []
        cursor: Optional[int] = None  # native sample index (relative to time zero) of the next sample
        stop = None if hi is None else int(math.ceil(hi * rate))
        bad_packets, first_error = 0, ""
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except Exception as err:  # av.InvalidDataError and friends: a damaged packet
                bad_packets += 1
                first_error = first_error or str(err)
                continue
            for frame in frames:
                if frame.sample_rate and frame.sample_rate != rate:
                    raise AudioDecodeError(
                        f"{path}: the audio sample rate changes mid-stream ({rate} -> {frame.sample_rate} Hz)"
                    )
                mono = _frame_to_mono(frame)
                if frame.pts is not None and frame.time_base is not None:
                    pos = int(round((float(frame.pts * frame.time_base) - zero) * rate))
                    # Keep contiguous frames contiguous: timestamps rounded to the container's
                    # time base jitter by a sample or so; only real gaps/overlaps move the cursor.
                    if cursor is not None and abs(pos - cursor) <= max(2, rate // 1000):
                        pos = cursor
                else:
                    pos = cursor if cursor is not None else 0
                chunks.append((pos, mono))
                cursor = pos + mono.shape[0]
            if stop is not None and cursor is not None and cursor > stop:
                break
    if bad_packets:
        # Damaged packets leave silence where they were (frames are placed by their timestamps).
        warnings.warn(
            f"{path}: {bad_packets} damaged audio packet(s) skipped and left silent ({first_error})",
            RuntimeWarning,
            stacklevel=3,
        )
    if not chunks:
        raise AudioDecodeError(f"{path}: the audio stream contains no decodable samples")
    last = max(p + c.shape[0] for p, c in chunks)
    n1 = last if stop is None else min(last, stop)
    n1 = max(n1, n0)
    signal = np.zeros(n1 - n0, dtype=np.float64)
    for pos, mono in chunks:
        a, b = max(pos, n0), min(pos + mono.shape[0], n1)
        if b > a:
            signal[a - n0 : b - n0] = mono[a - pos : b - pos]
    return signal, rate, n0 / rate


def _decode_soundfile(
    path: Path, start: Optional[float], end: Optional[float], target: int
) -> tuple[np.ndarray, int, float]:
    import soundfile as sf

    info = sf.info(str(path))
    rate = int(info.samplerate)
    grid = math.gcd(rate, target)
    lo = max(0.0, (start or 0.0) - _MARGIN_S)
    n0 = int(math.floor(lo * grid)) * (rate // grid)
    n1 = None if end is None else int(math.ceil((end + _MARGIN_S) * rate))
    data, _ = sf.read(str(path), start=n0, stop=n1, dtype="float64", always_2d=True)
    return data.mean(axis=1), rate, n0 / rate


def load_audio(
    path: PathLike,
    sample_rate: int = SAMPLE_RATE,
    start: Optional[float] = None,
    end: Optional[float] = None,
) -> np.ndarray:
    """The audio track of ``path`` as mono float32 ``(S,)`` in [-1, 1] at ``sample_rate``.

    Sample ``k`` is at time ``k / sample_rate`` on the video's clock (module docstring). With
    ``start``/``end`` (seconds) only that span is decoded and returned (sample 0 at ``start``),
    zero-padded where the track has no audio.

    Raises :class:`NoAudioStreamError` when the file has no audio stream, and
    :class:`AudioDecodeError` when it cannot be decoded; both name the file.
    """
    path = Path(path)
    if start is not None and end is not None and end < start:
        raise ValueError(f"{path}: audio span end {end} is before start {start}")
    signal: Optional[np.ndarray] = None
    if path.suffix.lower() in _SOUNDFILE_SUFFIXES:
        try:
            signal, rate, t0 = _decode_soundfile(path, start, end, sample_rate)
        except FileNotFoundError:
            raise
        except Exception:
            signal = None  # not what the suffix says: let FFmpeg have a go
    if signal is None:
        signal, rate, t0 = _decode_av(path, start, end, sample_rate)
    out = _resample(signal, rate, sample_rate)
    # out[j] is at t0 + j / sample_rate, and t0 * sample_rate is a whole number (common grid).
    first = int(round(t0 * sample_rate))
    lo = 0 if start is None else int(_round_half_up(start * sample_rate))
    hi = first + out.shape[0] if end is None else int(_round_half_up(end * sample_rate))
    result = slice_audio(out, lo - first, hi - first)
    return np.clip(result, -1.0, 1.0).astype(np.float32, copy=False)


def _resample(signal: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return signal.astype(np.float32)
    import soxr

    out = soxr.resample(signal.astype(np.float32), rate, target, quality="HQ")
    expected = int(round(signal.shape[0] * Fraction(target, rate)))
    if out.shape[0] != expected:
        out = slice_audio(out, 0, expected)
    return out.astype(np.float32, copy=False)


def slice_audio(audio: np.ndarray, start: int, end: int) -> np.ndarray:
    """``audio[start:end]`` with zeros where the range runs past either end, ``(end - start,)``."""
    n = max(0, int(end) - int(start))
    out = np.zeros(n, dtype=audio.dtype)
    a, b = max(int(start), 0), min(int(end), audio.shape[0])
    if b > a:
        out[a - start : b - start] = audio[a:b]
    return out


def _round_half_up(x: np.ndarray | float) -> np.ndarray:
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5).astype(np.int64)


def audio_span(
    timestamps: Sequence[float],
    frame_indices: Sequence[int],
    fps: Optional[float] = None,
    sample_rate: int = SAMPLE_RATE,
    last_frame_end: Optional[float] = None,
) -> tuple[int, int]:
    """Audio sample range ``[first, end)`` covering frames ``min(frame_indices)..max(frame_indices)``.

    Computed from the frame timestamps, never from an assumed rate: ``first = round(t_first * sr)``
    and ``end = round(t_end * sr)`` where ``t_end`` is the next frame's timestamp, or, for the
    video's last frame, ``last_frame_end`` if given (e.g. ``VideoFile.frame_end_times[-1]``) else
    ``t_last + 1 / fps``.

    Args:
        timestamps: start time in seconds of every frame of the video, ``(N,)``.
        frame_indices: the frames whose audio is wanted.
        fps: the video's frame rate; needed only when the range includes the last frame.
    """
    ts = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    idx = np.asarray(frame_indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise ValueError("audio_span: no frame indices")
    first, last = int(idx.min()), int(idx.max())
    if first < 0 or last >= ts.shape[0]:
        raise IndexError(f"audio_span: frame range {first}..{last} outside the {ts.shape[0]} timestamps")
    if last + 1 < ts.shape[0]:
        t_end = ts[last + 1]
    elif last_frame_end is not None:
        t_end = float(last_frame_end)
    elif fps:
        t_end = ts[last] + 1.0 / float(fps)
    else:
        raise ValueError("audio_span: the range ends at the last frame; give fps or last_frame_end")
    return int(_round_half_up(ts[first] * sample_rate)), int(_round_half_up(t_end * sample_rate))


def frame_sample_offsets(
    timestamps: Sequence[float], frame_indices: Sequence[int], sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Sample index ``round(t * sr)`` of each frame's start, ``(T,)`` int64; ``-1`` for index -1."""
    ts = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    idx = np.asarray(frame_indices, dtype=np.int64).reshape(-1)
    out = np.full(idx.shape, -1, dtype=np.int64)
    ok = idx >= 0
    out[ok] = _round_half_up(ts[idx[ok]] * sample_rate)
    return out
