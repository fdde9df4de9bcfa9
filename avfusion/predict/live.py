"""Live prediction: rows as frames arrive, from anything PyAV opens (a camera device, an RTSP/HTTP
stream, or a file read at its own pace): :func:`stream_rows`, behind :meth:`Predictor.stream
<avfusion.predict.predictor.Predictor.stream>` and ``avfusion predict --live SOURCE``.

- A worker thread reads and decodes the source into a queue of about one second of frames. A file
  is read at its own pace by default (each frame no earlier than its timestamp after the start;
  ``realtime=False`` reads it as fast as it can be processed). When the model falls behind a live
  source (a camera, a stream, a paced file), the oldest waiting frames are dropped, so a row is
  never more than about a second (plus one batch) behind its frame; dropped frames get no row and
  their numbers are missing from ``frame``.
- The main thread takes whatever frames are waiting (at most ``batch_size``), finds the face (the
  largest detection, its box smoothed over the previous frames only), runs the network, and yields
  one row per frame with the columns of a :meth:`~avfusion.predict.predictor.Predictor.predict_video`
  table (``speech`` empty, ``track_id`` 0 with a face, -1 without).
- Frame-by-frame models (EmoNet, ``fusion: null``) give each frame its own value, as in a file.
  Temporal models run on a sliding window: the last ``clip_len`` frames, again after each batch,
  each new frame taking its value from the window that ends with it (no future frames, so values
  differ a little from a file's, where centred windows are averaged).
- Audio is not read live: audio-visual models see it masked (as for a video without a track), and
  audio-only models are refused. ``stride`` and ``smooth`` do not apply (no future frames).
"""
from __future__ import annotations

import math
import queue
import threading
import time
import warnings
from collections import deque
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np
import torch

PathLike = Union[str, Path]


class LiveSourceError(ValueError):
    """A live source that cannot be opened or read (the message names it)."""


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


class LiveSource:
    """Frames of ``source`` decoded by a worker thread into a bounded queue.

    Args:
        source: a file, a device (``/dev/video0`` with ``input_format="v4l2"``), or a URL.
        realtime: read at the source's own pace; default: for files (a device or a stream has
            its own pace anyway).
        input_format, options: PyAV's ``format`` and ``options`` (e.g. ``{"rtsp_transport": "tcp"}``).
        seconds: frames the queue holds, in seconds of video (the most a row lags its frame
            when frames are dropped).
    """

    def __init__(self, source: PathLike, realtime: Optional[bool] = None, input_format: Optional[str] = None,
                 options: Optional[dict] = None, seconds: float = 1.0) -> None:
        import av

        self.source = str(source)
        is_file = Path(self.source).is_file()
        if not is_file and "://" not in self.source and not self.source.startswith("/dev/") and input_format is None:
            raise LiveSourceError(f"{self.source}: no such file, device or URL")
        self.realtime = is_file if realtime is None else bool(realtime)
        self.drop = self.realtime or not is_file
        try:
            self.container = av.open(self.source, format=input_format, options=dict(options or {}), timeout=20.0)
        except Exception as e:  # av.error.FFmpegError, OSError, ValueError (unknown format)
            raise LiveSourceError(f"{self.source}: cannot open ({_short(e)})") from None
        if not self.container.streams.video:
            self.container.close()
            raise LiveSourceError(f"{self.source}: no video stream")
        self.stream = self.container.streams.video[0]
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.fps = float(rate) if rate else 25.0
        self.capacity = max(2, int(round(seconds * self.fps)))
        self._queue: queue.Queue = queue.Queue(maxsize=self.capacity)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.frames_read = 0
        self.dropped = 0
        self.started_at: Optional[float] = None

    # -- worker ---------------------------------------------------------------------------------
    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                if self.drop and item[0] == "frame":
                    try:
                        self._queue.get_nowait()
                        self.dropped += 1
                    except queue.Empty:
                        pass

    def _run(self) -> None:
        first: Optional[float] = None
        try:
            k = 0
            for packet in self.container.demux(self.stream):
                if self._stop.is_set():
                    return
                try:
                    frames = packet.decode()
                except Exception:  # a damaged packet: skip it, as a player would
                    continue
                for frame in frames:
                    t = float(frame.time) if frame.time is not None else k / self.fps
                    first = t if first is None else first
                    rel = max(0.0, t - first)
                    if self.realtime:
                        wait = self.started_at + rel - time.monotonic()
                        if wait > 0 and self._stop.wait(wait):
                            return
                    img = frame.to_ndarray(format="rgb24")
                    self.frames_read += 1
                    self._put(("frame", k, rel, img))
                    k += 1
            self._put(("end", None, None, None))
        except BaseException as e:  # handed to the consumer, raised there
            self._put(("error", e, None, None))

    # -- consumer -------------------------------------------------------------------------------
    def start(self) -> "LiveSource":
        self.started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="avfusion-live", daemon=True)
        self._thread.start()
        return self

    def batches(self, max_batch: int) -> Iterator[list[tuple[int, float, np.ndarray]]]:
        """Lists of ``(index, seconds from the first frame, RGB frame)``: whatever is waiting, at
        most ``max_batch`` (waits for one), until the source ends."""
        if self._thread is None:
            self.start()
        ended = False
        while not ended:
            items = [self._queue.get()]
            while len(items) < max_batch:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            out = []
            for kind, a, b, c in items:
                if kind == "frame":
                    out.append((a, b, c))
                elif kind == "error":
                    raise LiveSourceError(f"{self.source}: reading stopped ({_short(a)})") from None
                else:
                    ended = True
            if out:
                yield out

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        try:
            self.container.close()
        except Exception:
            pass


def _square(det: Any, whole_frame: bool, margin: float) -> tuple[float, float, float]:
    cx, cy = det.center
    return cx, cy, max(det.box[2], det.box[3]) * (1.0 + 2.0 * (0.0 if whole_frame else margin))


def stream_rows(predictor: Any, source: PathLike, realtime: Optional[bool] = None,
                input_format: Optional[str] = None, options: Optional[dict] = None, name: Optional[str] = None,
                live: Optional[LiveSource] = None) -> Iterator[dict]:
    """Yield one row (a dict with the table's columns) per frame of ``source`` as it is processed
    (see the module doc). ``live``: an already opened :class:`LiveSource` (tests read its
    counters)."""
    from .columns import expression_names, quadrant_names

    p = predictor
    if not p.model.use_video:
        raise ValueError(f"{source}: live prediction reads frames only, and the model ({p.name}) uses audio only")
    src = live or LiveSource(source, realtime, input_format, options)
    video = name if name is not None else str(source)
    cropper, detector, runner = p.cropper, p.cropper.detector, p.runner
    reach = cropper.smoothing_reach
    recent: deque = deque(maxlen=reach + 1)  # raw squares of the last frames (NaN without a face)
    T = int(p.clip_len)
    window: deque = deque(maxlen=T)  # temporal models: (feature, face, time) of the last frames
    max_batch = max(1, min(runner.batch_size, T // 2 if p.temporal else runner.batch_size))
    use_audio = bool(getattr(p.model, "use_audio", False))
    device = next(p.model.parameters()).device
    expr_cols: Optional[tuple[str, ...]] = None
    try:
        for items in src.batches(max_batch):
            idx = [i for i, _, _ in items]
            times = np.array([t for _, t, _ in items])
            frames = [f for _, _, f in items]
            n = len(items)
            dets = detector.detect_batch(np.stack(frames)) if len({f.shape for f in frames}) == 1 else \
                [detector.detect(f) for f in frames]
            boxes, scores = np.full((n, 4), np.nan), np.full(n, np.nan)
            squares, face = np.full((n, 3), np.nan), np.zeros(n, dtype=bool)
            for k, d in enumerate(dets):
                best = cropper._choose(d)
                raw = _square(best, detector.whole_frame, cropper.margin) if best is not None else (np.nan,) * 3
                recent.append(raw)
                if best is None:
                    continue
                face[k] = True
                boxes[k], scores[k] = best.box, best.score
                near = [r for r in recent if np.isfinite(r).all()
                        and math.hypot(r[0] - raw[0], r[1] - raw[1]) <= cropper.max_jump * raw[2]]
                squares[k] = np.mean(near, axis=0)
            crops = np.stack([cropper.crop(f[None], squares[k : k + 1], face[k : k + 1])[0] for k, f in enumerate(frames)])
            va = np.full((n, 2), np.nan)
            expression = None
            out = runner(p.transform(crops[face])) if face.any() else None
            if not p.temporal:
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
                    window.append((feats[k], face[k], times[k]))
                L = len(window)
                vf = torch.from_numpy(np.stack([w[0] for w in window]))[None]
                fm = torch.tensor([[bool(w[1]) for w in window]])
                kwargs: dict[str, Any] = {"video_feats": vf, "mask": torch.ones(1, L, dtype=torch.bool),
                                          "face_mask": fm}
                if use_audio:  # masked: audio is not read live
                    wt = np.array([w[2] for w in window]) - window[0][2]
                    S = max(1, int(math.ceil((wt[-1] + 1.0 / src.fps) * 16000)))
                    kwargs.update(audio=torch.zeros(1, S), audio_lengths=torch.tensor([S]),
                                  frame_times=torch.from_numpy(wt.astype(np.float32))[None],
                                  audio_valid=torch.tensor([False]))
                with torch.inference_mode(), warnings.catch_warnings():
                    if L < 2:  # one frame says nothing of its length; the audio is masked anyway
                        warnings.simplefilter("ignore")
                    res = p.model(**{k: v.to(device) for k, v in kwargs.items()})
                pred = torch.stack([res["valence"], res["arousal"]], dim=-1)[0].float().cpu().numpy()
                va = np.clip(pred[L - n :], -1, 1).astype(np.float64)
            valid = face & np.isfinite(va).all(axis=1)
            va[~valid] = np.nan
            quads = quadrant_names(va[:, 0], va[:, 1])
            if expression is not None and expr_cols is None:
                expr_cols = expression_names(expression.shape[1])
            for k in range(n):
                row = {"video": video, "frame": int(idx[k]), "timestamp": round(float(times[k]), 6),
                       "track_id": 0 if face[k] else -1, "face_found": bool(face[k]),
                       "face_x": float(boxes[k, 0]), "face_y": float(boxes[k, 1]), "face_w": float(boxes[k, 2]),
                       "face_h": float(boxes[k, 3]), "face_score": float(scores[k]), "speech": None,
                       "valid": bool(valid[k]), "valence": float(va[k, 0]), "arousal": float(va[k, 1]),
                       "quadrant": quads[k]}
                if expr_cols is not None:
                    e = expression[k] if expression is not None else np.full(len(expr_cols), np.nan)
                    if not valid[k]:
                        e = np.full(len(expr_cols), np.nan)
                    row.update(zip(expr_cols, (float(x) for x in e)))
                yield row
    finally:
        src.close()


__all__ = ["LiveSource", "LiveSourceError", "stream_rows"]
