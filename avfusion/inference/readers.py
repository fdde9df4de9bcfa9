"""The one reader protocol the engine takes: anything with ``len()``, ``fps``, ``timestamps`` (N,)
and ``frame_end_times`` (N,) in seconds, and either ``iter_batches(indices, chunk)`` (one
sequential decoding pass) or ``get_batch_masked(indices) -> (frames (M, H, W, 3) uint8 RGB,
decoded (M,) bool)``:

- a video file: :class:`~avfusion.data.video.VideoFile` (decord indices, frames from one PyAV pass);
- a folder of numbered frames: :class:`~avfusion.data.video.FrameFolder`;
- frames in memory: :class:`ArrayFrames`;
- a live source (a camera, a stream, a file read at its own pace): :class:`LiveSource`, which has
  no length and hands out whatever frames are waiting (:meth:`LiveSource.batches`).

:func:`read_chunks` is the one loop over a reader's frames in chunks.
"""
from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np

from ..data.video import FrameFolder, VideoFile, quarter_turns, upright  # noqa: F401 (readers of the protocol)

PathLike = Union[str, Path]


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


def read_chunks(reader: Any, indices: np.ndarray, chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(indices, frames, decoded)`` for the frames ``indices`` of ``reader``, ``chunk`` at a time:
    one sequential pass for a video file, random access otherwise."""
    indices = np.asarray(indices, dtype=np.int64)
    chunk = max(1, int(chunk))
    if hasattr(reader, "iter_batches"):  # a video file: one sequential pass, one chunk in memory
        yield from reader.iter_batches(indices, chunk)
        return
    for s in range(0, len(indices), chunk):
        idx = indices[s : s + chunk]
        yield (idx, *reader.get_batch_masked(idx))


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
                    img = upright(frame.to_ndarray(format="rgb24"), quarter_turns(frame))  # as a player shows it
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



__all__ = ["ArrayFrames", "LiveSource", "LiveSourceError", "read_chunks", "VideoFile", "FrameFolder"]
