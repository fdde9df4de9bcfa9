"""The one inference engine: a reader's frames -> the face stage -> the per-frame network -> (for
temporal models) windows through the fusion model -> per-frame values, in bounded memory. File,
temporal and live prediction are modes of the same loop (:func:`face_batches`):

- **file** (:func:`run_frames`, :func:`predict_frame_by_frame`): a worker thread reads chunks of
  ``chunk`` frames (:func:`~avfusion.inference.readers.read_chunks`), runs the face stage on them
  (:class:`~avfusion.data.faces.StreamingCropper`: detect, choose, smooth centred across chunk
  borders, crop) and normalises; the main thread runs the network (:class:`.runner.FrameRunner`)
  on full batches meanwhile. At most ``prefetch`` chunks wait in between, so memory does not
  depend on the video's length. Frame-by-frame models (EmoNet, the face expert) run each frame
  exactly once; with ``stride`` K only every K-th frame (and the last), the frames between
  interpolated in time between two frames with a face.
- **temporal** (:func:`predict_temporal`): video features once per frame as above, then the
  fusion model over the windows of the one window planner (:mod:`avfusion.data.windows`: window
  length and hop from the model's serving spec, each window's audio cut from the track exactly as
  training cuts it), stitched back onto frames by the one aggregator
  (:class:`~.aggregate.PredictionCollector`, overlaps averaged).
- **live** (:func:`stream_predictions`): the same face stage with past-only smoothing and the same
  network on whatever frames a :class:`~.readers.LiveSource` has waiting; temporal models run on
  the window of the last ``clip_len`` frames, built by the same window planner.
"""
from __future__ import annotations

import queue
import threading
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
import torch

from ..data.faces import FaceChunk, FaceCropper, StreamingCropper
from ..data.windows import plan_windows, window_inputs
from .aggregate import PredictionCollector
from .readers import ArrayFrames, read_chunks
from .runner import FrameRunner

# Frames decoded per step (a video file is decoded in one sequential PyAV pass: decord's random
# access reads ahead, ~800 MB for 300 frames of 720p). The network still gets full batches: crops
# are gathered from several steps.
DEFAULT_CHUNK = 8


class _Stop(Exception):
    pass


def prefetch(items: Iterable[Any], depth: int = 2) -> Iterator[Any]:
    """Iterate ``items`` in a worker thread, at most ``depth`` ahead of the consumer.

    An exception in the worker is raised in the consumer; when the consumer stops early (an error,
    Ctrl-C, ``break``) the worker is told to stop and does not outlive the call by more than one item.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    done = object()

    def put(x: Any) -> None:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stop

    def work() -> None:
        try:
            for x in items:
                put(("item", x))
            put(("end", done))
        except _Stop:
            pass
        except BaseException as e:  # handed to the consumer, raised there
            try:
                put(("error", e))
            except _Stop:
                pass

    worker = threading.Thread(target=work, name="avfusion-decode", daemon=True)
    worker.start()
    try:
        while True:
            kind, x = q.get()
            if kind == "item":
                yield x
            elif kind == "error":
                raise x
            else:
                return
    finally:
        stop.set()
        worker.join(timeout=5.0)


@dataclass
class FrameResults:
    """What the engine computed at ``indices`` (sorted frame numbers, ``M`` of them)."""

    indices: np.ndarray            # (M,)
    face_mask: np.ndarray          # (M,) bool
    boxes: np.ndarray              # (M, 3) centre x, centre y, side (NaN without a face)
    va: Optional[np.ndarray]       # (M, 2) frame-by-frame models; NaN without a face
    expression: Optional[np.ndarray]  # (M, K) probabilities (EmoNet), NaN without a face
    feature: Optional[np.ndarray]  # (M, C) temporal models; zeros without a face


def face_batches(
    batches: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
    cropper: FaceCropper,
    transform: Callable[[np.ndarray], torch.Tensor],
    landmarks: Optional[np.ndarray] = None,
    face_valid: Optional[np.ndarray] = None,
    causal: bool = False,
    listener: Optional[Callable[[np.ndarray, list, np.ndarray], None]] = None,
) -> Iterator[tuple[FaceChunk, Optional[torch.Tensor]]]:
    """The face stage over chunks ``(indices, frames, decoded)``: yields each :class:`FaceChunk`
    whose boxes are final and the normalised crops ``(M, 3, H, W)`` of its frames with a face (None
    without any). ``landmarks`` (N, K, 2) and ``face_valid`` (N,) are per frame of the whole
    source (dataset landmarks, a face track's corners; frames known to have no usable face).
    ``causal``: boxes smoothed over past frames only (live sources), each chunk out at once.
    ``listener(indices, detections, chosen boxes)`` sees each chunk's detections (a tracker)."""
    stream = StreamingCropper(cropper, causal=causal, listener=listener)

    def ready(out: Optional[FaceChunk]) -> Optional[tuple[FaceChunk, Optional[torch.Tensor]]]:
        if out is None:
            return None
        fm = out.face_mask
        return out, (transform(out.crops[fm]) if fm.any() else None)

    for idx, frames, decoded in batches:
        valid = decoded if face_valid is None else decoded & face_valid[idx]
        lms = landmarks[idx] if landmarks is not None else None
        out = ready(stream.push(idx, frames, lms, valid))
        del frames
        if out is not None:
            yield out
    out = ready(stream.finish())
    if out is not None:
        yield out


def run_frames(
    runner: FrameRunner,
    reader: Any,
    cropper: FaceCropper,
    transform: Callable[[np.ndarray], torch.Tensor],
    indices: Optional[np.ndarray] = None,
    landmarks: Optional[np.ndarray] = None,
    face_valid: Optional[np.ndarray] = None,
    chunk: int = DEFAULT_CHUNK,
    progress: Optional[Callable[[int], None]] = None,
    depth: int = 2,
    listener: Optional[Callable[[np.ndarray, list, np.ndarray], None]] = None,
) -> FrameResults:
    """Run ``runner`` on the face of every frame in ``indices`` (default: all, sorted, unique).

    ``landmarks`` (N, K, 2) and ``face_valid`` (N,) are per frame of the whole reader (dataset
    landmarks; frames known to have no usable face). ``progress(n)`` is called after each chunk.
    """
    n_all = len(reader)
    idx_all = np.arange(n_all, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    M = len(idx_all)
    face = np.zeros(M, dtype=bool)
    boxes = np.full((M, 3), np.nan)
    va = expression = feature = None
    if runner.frame_by_frame:
        va = np.full((M, 2), np.nan, dtype=np.float32)
    else:
        feature = np.zeros((M, runner.num_features), dtype=np.float32)
    pending: list[tuple[np.ndarray, torch.Tensor]] = []  # crops waiting for a full batch
    waiting = 0
    started = False  # the first chunk's faces go at once: the network starts one chunk in, not one batch

    def flush() -> None:
        nonlocal expression, waiting, started
        started = True
        where = np.concatenate([w for w, _ in pending])
        out = runner(torch.cat([x for _, x in pending]) if len(pending) > 1 else pending[0][1])
        pending.clear()
        waiting = 0
        if va is not None:
            va[where] = out["va"]
        if "expression" in out:
            if expression is None:
                expression = np.full((M, out["expression"].shape[1]), np.nan, dtype=np.float32)
            expression[where] = out["expression"]
        if feature is not None:
            feature[where] = out["feature"]

    pos = 0  # chunks come back in order: positions are consecutive
    work = face_batches(read_chunks(reader, idx_all, chunk), cropper, transform, landmarks, face_valid,
                        listener=listener)
    for fc, x in prefetch(work, depth):
        sl = slice(pos, pos + len(fc.indices))
        pos += len(fc.indices)
        face[sl], boxes[sl] = fc.face_mask, fc.boxes
        if x is not None:
            pending.append((np.flatnonzero(fc.face_mask) + sl.start, x))
            waiting += len(x)
            if waiting >= runner.batch_size or not started:
                flush()
        if progress is not None:
            progress(len(fc.indices))
    if pending:
        flush()
    if pos != M:
        raise RuntimeError(f"engine: {pos} of {M} frames came back")  # a bug, not a user error
    return FrameResults(idx_all, face, boxes, va, expression, feature)


def model_frames(n_frames: int, stride: int) -> np.ndarray:
    """The frames a frame-by-frame model runs on at ``stride``: every K-th and the last."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    idx = np.arange(0, n_frames, stride, dtype=np.int64)
    if idx[-1] != n_frames - 1:
        idx = np.append(idx, n_frames - 1)
    return idx


def _interpolate(values: np.ndarray, at: np.ndarray, ok: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``values`` (M, D) known at frames ``at`` (valid where ``ok``) -> (N, D) on every frame, linear in
    ``times`` between two consecutive computed frames that are both valid; NaN elsewhere."""
    N = len(times)
    out = np.full((N, values.shape[1]), np.nan, dtype=np.float64)
    have = np.zeros(N, dtype=bool)
    out[at] = values
    have[at] = ok
    hi = np.searchsorted(at, np.arange(N), side="left")  # first computed frame >= i
    between = np.ones(N, dtype=bool)
    between[at] = False
    i = np.flatnonzero(between)
    if len(i):
        b = at[hi[i]]
        a = at[hi[i] - 1]
        both = ok[hi[i]] & ok[hi[i] - 1]
        w = ((times[i] - times[a]) / np.maximum(times[b] - times[a], 1e-12))[:, None]
        out[i] = np.where(both[:, None], (1 - w) * values[hi[i] - 1] + w * values[hi[i]], np.nan)
        have[i] = both
    return out, have


@dataclass
class VideoOutputs:
    """Per-frame results of one video (``N`` frames).

    ``va`` (N, 2) valence/arousal (NaN where the model gives nothing: no face for a frame-by-frame
    model), ``face_mask`` (N,), ``boxes`` (N, 3) (centre x, centre y, side; NaN without a face),
    ``computed`` (N,) the network ran on that frame (False: interpolated, ``stride`` > 1),
    ``expression`` (N, K) probabilities or None, ``audio_valid``: the track was used.
    """

    va: np.ndarray
    face_mask: np.ndarray
    boxes: np.ndarray
    computed: np.ndarray
    timestamps: np.ndarray
    expression: Optional[np.ndarray] = None
    audio_valid: Optional[bool] = None
    # Models of experts: each expert's own per-frame values (``face_valence``, ``voice_arousal``,
    # ...; NaN where that expert has nothing) and the frames the voice expert heard.
    parts: Optional[dict] = None
    heard: Optional[np.ndarray] = None


def predict_frame_by_frame(
    runner: FrameRunner,
    reader: Any,
    cropper: FaceCropper,
    transform: Callable[[np.ndarray], torch.Tensor],
    stride: int = 1,
    landmarks: Optional[np.ndarray] = None,
    face_valid: Optional[np.ndarray] = None,
    chunk: int = DEFAULT_CHUNK,
    progress: Optional[Callable[[int], None]] = None,
    listener: Optional[Callable[[np.ndarray, list, np.ndarray], None]] = None,
) -> VideoOutputs:
    """Valence/arousal of every frame from a model without a temporal part (see the module doc);
    ``listener`` sees every computed frame's detections (:func:`face_batches`)."""
    if not runner.frame_by_frame:
        raise ValueError("predict_frame_by_frame needs a model without a fusion module")
    n = len(reader)
    times = np.asarray(reader.timestamps, dtype=np.float64)
    at = model_frames(n, stride)

    def tick(k: int) -> None:  # progress in video frames, not computed frames
        if progress is not None:
            progress(min(k * stride, n))

    r = run_frames(runner, reader, cropper, transform, at, landmarks, face_valid, chunk, tick, listener=listener)
    computed = np.zeros(n, dtype=bool)
    computed[at] = True
    va, face = _interpolate(r.va, at, r.face_mask, times)
    boxes, _ = _interpolate(r.boxes, at, r.face_mask, times)
    expression = None
    if r.expression is not None:
        expression, _ = _interpolate(r.expression, at, r.face_mask, times)
        expression = expression.astype(np.float32)
    return VideoOutputs(va.astype(np.float32), face, boxes, computed, times, expression)


def _fusion(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    """The fusion model on a batch of window inputs -> ``(B, T, 2)`` valence, arousal."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model(**{k: v.to(device) for k, v in inputs.items()})
    return torch.stack([out["valence"], out["arousal"]], dim=-1).float().cpu().numpy()


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
    hop: Optional[int] = None,
    windows: Optional[np.ndarray] = None,
    listener: Optional[Callable[[np.ndarray, list, np.ndarray], None]] = None,
) -> VideoOutputs:
    """Valence/arousal of every frame from a model with a fusion module (see the module doc).

    ``runner`` is None for audio-only models (no frame is decoded); ``audio`` is the whole track at
    ``sample_rate``, or None when the video has none (the audio is then masked, as in training).
    ``audio_frames`` (N,) bool: the frames whose audio counts (speech, by the model's speech rule);
    the others are read like frames of a video without a track, as the datasets give them in
    training. None: the whole track counts. Windows of ``clip_len`` frames start every ``hop`` frames (default ``clip_len // 2``; ``clip_len``: the evaluation protocol), or are
    given as ``windows`` (W, T) frame indices (``-1`` padding).
    """
    n = len(reader)
    times = np.asarray(reader.timestamps, dtype=np.float64)
    ends = np.asarray(reader.frame_end_times, dtype=np.float64)
    if runner is not None:
        r = run_frames(runner, reader, cropper, transform, None, landmarks, face_valid, chunk, progress,
                       listener=listener)
        feats, face, boxes = r.feature, r.face_mask, r.boxes
    else:
        feats, face, boxes = None, np.zeros(n, dtype=bool), np.full((n, 3), np.nan)
        if progress is not None:
            progress(n)
    T = int(clip_len)
    if windows is None:
        windows = plan_windows(n, T, int(hop) if hop else max(1, T // 2))
    collector = PredictionCollector({"v": n}, overlap="mean")
    period = 1.0 / float(getattr(reader, "fps", 0) or 25.0)
    use_audio = bool(getattr(model, "use_audio", False))
    has_audio = audio is not None
    for b in range(0, len(windows), window_batch):
        idx = windows[b : b + window_batch]
        inputs = window_inputs(idx, times, ends, period, face, feats, audio, audio_frames, use_audio, has_audio,
                               sample_rate)
        pred = _fusion(model, inputs)
        for k in range(len(idx)):
            collector.add_window("v", idx[k], pred[k])
    v = collector.result(require_labelled=False)["v"]
    computed = np.ones(n, dtype=bool) if runner is not None else np.zeros(n, dtype=bool)
    return VideoOutputs(np.clip(v.pred, -1, 1).astype(np.float32), face, boxes, computed, times,
                        None, has_audio if use_audio else None)


@dataclass
class VoiceOutputs:
    """An utterance-level voice model over a whole track, at the video's frames (``N``): ``raw``
    (N, 3) arousal, dominance, valence as the published head gives them (NaN where no window
    reached), ``windows`` (W, 2) each window's span in seconds, ``heard`` (N,) the frame lies in
    a window that was run (speech, when a speech mask was given)."""

    raw: np.ndarray
    windows: np.ndarray
    heard: np.ndarray


def voice_windows(duration: float, window: float, hop: float) -> np.ndarray:
    """``(W, 2)`` start and end seconds of the windows over a track of ``duration`` seconds: every
    ``hop`` seconds, the last one ending with the track (a short track is one window)."""
    if duration <= window:
        return np.array([[0.0, max(duration, 0.0)]])
    starts = list(np.arange(0.0, duration - window, hop))
    starts.append(duration - window)
    return np.array([[a, a + window] for a in starts])


def predict_voice(
    encoder: torch.nn.Module,
    audio: np.ndarray,
    times: np.ndarray,
    sample_rate: int = 16000,
    window: float = 4.0,
    hop: float = 3.0,
    speech: Optional[np.ndarray] = None,
    batch: int = 4,
    progress: Optional[Callable[[int], None]] = None,
) -> VoiceOutputs:
    """An utterance-level voice model (``encoder.utterance(wave (B, S)) -> {"arousal", "dominance",
    "valence"}``, each (B,)) over sliding windows of ``window`` seconds every ``hop`` seconds of the
    track; each window's values sit at its centre and the video's frames (start ``times`` (N,))
    take the linear interpolation between the centres around them (held before the first and after
    the last). ``speech`` (N,) bool: windows over frames without any speech are not run, and those
    frames get no value."""
    duration = len(audio) / float(sample_rate)
    spans = voice_windows(duration, float(window), float(hop))
    times = np.asarray(times, dtype=np.float64)
    keep = np.ones(len(spans), dtype=bool)
    if speech is not None:
        keep = np.array([bool(np.asarray(speech)[(times >= a) & (times < b)].any()) for a, b in spans])
    spans = spans[keep]
    values = np.zeros((len(spans), 3))
    device = getattr(encoder, "device", None) or next(iter(list(encoder.parameters()) + [torch.zeros(())])).device
    for b in range(0, len(spans), batch):
        part = spans[b : b + batch]
        cut = [audio[int(round(a * sample_rate)) : max(int(round(e * sample_rate)), int(round(a * sample_rate)) + 1)]
               for a, e in part]
        n = max(len(c) for c in cut)
        wave = torch.zeros(len(cut), n)
        for k, c in enumerate(cut):  # windows are equal length except a short whole track
            wave[k, : len(c)] = torch.from_numpy(np.asarray(c, dtype=np.float32))
        with torch.inference_mode():
            out = encoder.utterance(wave.to(device))
        values[b : b + len(part)] = torch.stack([out["arousal"], out["dominance"], out["valence"]], -1).float().cpu().numpy()
        if progress is not None:
            progress(len(part))
    raw = np.full((len(times), 3), np.nan)
    heard = np.zeros(len(times), dtype=bool)
    if len(spans):
        centres = spans.mean(axis=1)
        for d in range(3):
            raw[:, d] = np.interp(times, centres, values[:, d])
        heard = np.zeros(len(times), dtype=bool)
        for a, e in spans:
            heard |= (times >= a) & (times < e)
        if speech is not None:
            heard &= np.asarray(speech, dtype=bool)
        raw[~heard] = np.nan
    return VoiceOutputs(raw, spans, heard)


def voice_to_va(raw: np.ndarray) -> np.ndarray:
    """The voice expert's arousal, dominance, valence (its head's outputs, roughly 0..1 with 0.5
    in the middle of its training range) on the circumplex's [-1, 1]: ``2 x - 1``, clipped."""
    return np.clip(2.0 * np.asarray(raw, dtype=np.float64) - 1.0, -1.0, 1.0)


def combine_experts(face: Optional[VideoOutputs], voice: Optional[VoiceOutputs], times: np.ndarray,
                    mix: np.ndarray) -> VideoOutputs:
    """Per-frame values of a face and a voice expert mixed per dimension: ``mix`` (2, 2) rows
    valence, arousal, columns [face, voice]; at each frame the weights are renormalised over the
    experts that have a value there (a face found; speech heard), so a frame with one sense
    gets that sense's value, and a frame with none gets none."""
    n = len(times)
    f = face.va.astype(np.float64) if face is not None else np.full((n, 2), np.nan)
    mapped = voice_to_va(voice.raw) if voice is not None else np.full((n, 3), np.nan)
    v = mapped[:, [2, 0]]  # valence, arousal
    heads = np.stack([f, v], axis=-1)  # (N, 2, 2): dimension, expert
    present = np.isfinite(heads)
    w = np.where(present, np.asarray(mix, dtype=np.float64)[None], 0.0)
    tot = w.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        va = np.where(tot > 0, (w * np.nan_to_num(heads)).sum(-1) / tot, np.nan)
    parts = {"face_valence": f[:, 0], "face_arousal": f[:, 1], "voice_valence": mapped[:, 2],
             "voice_arousal": mapped[:, 0], "voice_dominance": mapped[:, 1]}
    heard = voice.heard if voice is not None else np.zeros(n, dtype=bool)
    if face is not None:
        return VideoOutputs(va.astype(np.float32), face.face_mask, face.boxes, face.computed, face.timestamps,
                            face.expression, voice is not None, parts, heard)
    return VideoOutputs(va.astype(np.float32), np.zeros(n, dtype=bool), np.full((n, 3), np.nan),
                        np.zeros(n, dtype=bool), np.asarray(times, dtype=np.float64), None, voice is not None,
                        parts, heard)


@dataclass
class LiveChunk:
    """Values of frames a live source handed out together (``n`` of them): their numbers and
    seconds from the first frame, the face stage's :class:`FaceChunk`, ``va`` (n, 2) (NaN without
    a value) and ``expression`` (n, K) probabilities or None."""

    indices: np.ndarray
    times: np.ndarray
    faces: FaceChunk
    va: np.ndarray
    expression: Optional[np.ndarray]


def stream_predictions(
    model: torch.nn.Module,
    runner: FrameRunner,
    source: Any,
    cropper: FaceCropper,
    transform: Callable[[np.ndarray], torch.Tensor],
    clip_len: int,
    sample_rate: int = 16000,
) -> Iterator[LiveChunk]:
    """Live mode: values for whatever frames ``source`` (a :class:`~.readers.LiveSource`) has
    waiting, batch after batch, until it ends. The face stage smooths over past frames only; a
    temporal model runs on the window of the last ``clip_len`` frames after each batch (built by
    the window planner, audio masked: live sources are read without audio), each new frame taking
    its value from the window that ends with it."""
    temporal = getattr(model, "fusion", None) is not None
    T = int(clip_len)
    max_batch = max(1, min(runner.batch_size, T // 2 if temporal else runner.batch_size))
    stage = StreamingCropper(cropper, causal=True)
    recent: deque = deque(maxlen=T)  # temporal models: (feature, face, time) of the last frames
    period = 1.0 / float(getattr(source, "fps", 0) or 25.0)
    use_audio = bool(getattr(model, "use_audio", False))
    for items in source.batches(max_batch):
        # Frames of one size go through the face stage together (a stream may change size).
        groups: list[list] = []
        for it in items:
            if groups and groups[-1][0][2].shape == it[2].shape:
                groups[-1].append(it)
            else:
                groups.append([it])
        for group in groups:
            idx = np.array([i for i, _, _ in group], dtype=np.int64)
            times = np.array([t for _, t, _ in group], dtype=np.float64)
            fc = stage.push(idx, np.stack([f for _, _, f in group]))
            n = len(idx)
            face = fc.face_mask
            out = runner(transform(fc.crops[face])) if face.any() else None
            va = np.full((n, 2), np.nan)
            expression = None
            if not temporal:
                if out is not None:
                    va[face] = out["va"]
                    if "expression" in out:
                        expression = np.full((n, out["expression"].shape[1]), np.nan)
                        expression[face] = out["expression"]
            else:
                feats = np.zeros((n, runner.num_features), dtype=np.float32)
                if out is not None:
                    feats[face] = out["feature"]
                for k in range(n):
                    recent.append((feats[k], face[k], times[k]))
                L = len(recent)
                wt = np.array([w[2] for w in recent])
                inputs = window_inputs(np.arange(L)[None], wt, np.append(wt[1:], wt[-1] + period), period,
                                       np.array([bool(w[1]) for w in recent]), np.stack([w[0] for w in recent]),
                                       None, None, use_audio, False, sample_rate)
                with warnings.catch_warnings():
                    if L < 2:  # one frame says nothing of its length; the audio is masked anyway
                        warnings.simplefilter("ignore")
                    pred = _fusion(model, inputs)[0]
                va = np.clip(pred[L - n :], -1, 1).astype(np.float64)
            yield LiveChunk(idx, times, fc, va, expression)


__all__ = ["ArrayFrames", "prefetch", "face_batches", "FrameResults", "VideoOutputs", "VoiceOutputs", "LiveChunk",
           "run_frames", "predict_voice", "voice_windows", "voice_to_va", "combine_experts",
           "model_frames", "predict_frame_by_frame", "predict_temporal", "stream_predictions", "DEFAULT_CHUNK"]
