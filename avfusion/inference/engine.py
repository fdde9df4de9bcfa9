"""The prediction engine: a video's frames -> faces -> the per-frame network -> per-frame values,
in bounded memory, with decoding and face detection overlapped with the model.

Frames are decoded in chunks of ``chunk`` frames by a worker thread, which also detects the face in
each frame (once), smooths the boxes across chunk borders (:class:`~avfusion.data.faces.
StreamingCropper`), crops and normalises; the main thread runs the network (:class:`.runner.
FrameRunner`) on the previous chunk meanwhile. At most ``prefetch`` chunks wait in between, so
memory does not depend on the video's length: only per-frame numbers (values, boxes, features)
are kept for the whole video.

- :func:`predict_frame_by_frame`: models without a temporal part (EmoNet, ``fusion: null``) run
  each frame exactly once; with ``stride`` K only every K-th frame (and the last) is decoded and
  run, and the frames between get values interpolated linearly in time between two frames with a
  face.
- :func:`run_frames` with a temporal model's runner gives its video features, once per frame
  (:func:`avfusion.predict.temporal.predict_temporal` runs the fusion model over them).

Both take any reader with ``len()``, ``fps``, ``timestamps``, ``frame_end_times`` and
``get_batch_masked(indices)``: :class:`~avfusion.data.video.VideoFile`,
:class:`~avfusion.data.video.FrameFolder` or :class:`ArrayFrames` (frames already in memory).
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
import torch

from ..data.faces import FaceCropper, StreamingCropper
from .runner import FrameRunner

# Frames decoded per step (a video file is decoded in one sequential PyAV pass: decord's random
# access reads ahead, ~800 MB for 300 frames of 720p). The network still gets full batches: crops
# are gathered from several steps.
DEFAULT_CHUNK = 8


class ArrayFrames:
    """Frames already in memory, ``(T, H, W, 3)`` RGB uint8, as a reader the engine takes."""

    def __init__(self, frames: np.ndarray, fps: float, timestamps: Optional[np.ndarray] = None) -> None:
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be (T, H, W, 3) uint8 RGB, got {frames.shape} {frames.dtype}")
        if not len(frames):
            raise ValueError("no frames")
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.frames, self.fps = frames, float(fps)
        ts = np.arange(len(frames)) / self.fps if timestamps is None else np.asarray(timestamps, np.float64)
        if ts.shape != (len(frames),) or (np.diff(ts) <= 0).any():
            raise ValueError(f"timestamps must be {len(frames)} increasing times")
        self.timestamps = ts
        self.frame_end_times = np.append(ts[1:], ts[-1] + 1.0 / self.fps)

    def __len__(self) -> int:
        return len(self.frames)

    def get_batch_masked(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.asarray(indices, dtype=np.int64)
        return self.frames[idx], np.ones(len(idx), dtype=bool)

    def close(self) -> None:
        pass


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


def _chunks(reader: Any, indices: np.ndarray, cropper: FaceCropper, transform: Callable[[np.ndarray], torch.Tensor],
            landmarks: Optional[np.ndarray], face_valid: Optional[np.ndarray], chunk: int) -> Iterator[tuple]:
    """Worker side: decode, detect, smooth, crop, normalise; yields ``(indices, crops, boxes, face_mask)``
    with ``crops`` the normalised tensors of the frames that have a face."""
    stream = StreamingCropper(cropper)

    def ready(out: Optional[tuple]) -> Optional[tuple]:
        if out is None:
            return None
        idx, crops, boxes, fm = out
        x = transform(crops[fm]) if fm.any() else None
        return idx, x, boxes, fm

    if hasattr(reader, "iter_batches"):  # a video file: one sequential pass, one chunk in memory
        batches = reader.iter_batches(indices, chunk)
    else:
        batches = ((indices[s : s + chunk], *reader.get_batch_masked(indices[s : s + chunk]))
                   for s in range(0, len(indices), chunk))
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

    def flush() -> None:
        nonlocal expression, waiting
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
    for idx, x, bx, fm in prefetch(_chunks(reader, idx_all, cropper, transform, landmarks, face_valid,
                                           max(1, int(chunk))), depth):
        sl = slice(pos, pos + len(idx))
        pos += len(idx)
        face[sl], boxes[sl] = fm, bx
        if x is not None:
            pending.append((np.flatnonzero(fm) + sl.start, x))
            waiting += len(x)
            if waiting >= runner.batch_size:
                flush()
        if progress is not None:
            progress(len(idx))
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
) -> VideoOutputs:
    """Valence/arousal of every frame from a model without a temporal part (see the module doc)."""
    if not runner.frame_by_frame:
        raise ValueError("predict_frame_by_frame needs a model without a fusion module")
    n = len(reader)
    times = np.asarray(reader.timestamps, dtype=np.float64)
    at = model_frames(n, stride)

    def tick(k: int) -> None:  # progress in video frames, not computed frames
        if progress is not None:
            progress(min(k * stride, n))

    r = run_frames(runner, reader, cropper, transform, at, landmarks, face_valid, chunk, tick)
    computed = np.zeros(n, dtype=bool)
    computed[at] = True
    va, face = _interpolate(r.va, at, r.face_mask, times)
    boxes, _ = _interpolate(r.boxes, at, r.face_mask, times)
    expression = None
    if r.expression is not None:
        expression, _ = _interpolate(r.expression, at, r.face_mask, times)
        expression = expression.astype(np.float32)
    return VideoOutputs(va.astype(np.float32), face, boxes, computed, times, expression)


__all__ = ["ArrayFrames", "prefetch", "FrameResults", "VideoOutputs", "run_frames", "model_frames",
           "predict_frame_by_frame", "DEFAULT_CHUNK"]
