"""Frame decoding: video files through decord's VideoReader, frame folders through OpenCV.

Both sources answer the same questions: ``len()``, ``fps``, ``timestamps`` (seconds of each frame,
the truth for alignment -- never ``index / fps``), ``get_batch(indices)`` -> RGB uint8
``(T, H, W, 3)`` and ``get_batch_masked(indices)`` -> frames plus a validity mask, for callers that
prefer a masked frame and one warning per file to an exception.

Readers open lazily and remember the process that opened them: an object built in the parent and
pickled (or forked) into DataLoader workers opens its own reader in each worker. decord's
AVReader/AudioReader are never used (they leak memory, decord issues 279 and 189); audio comes
from :mod:`avfusion.data.audio`.
"""
from __future__ import annotations

import contextlib
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

PathLike = Union[str, Path]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# Relative spread of frame intervals above which a stream counts as variable frame rate: container
# timestamps are integers in the stream time base, so constant-rate files jitter by at most one tick.
_VFR_TOLERANCE = 0.05



# decord readers a process inherited through fork: never used (their decoder threads live in the
# parent) and never destroyed (the destructor joins those threads and aborts or hangs the child,
# e.g. a DataLoader worker). They are parked here for the life of the process.
INHERITED_READERS: list[Any] = []

@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Silence what native code writes to file descriptor 2 (decord's C++ log prints "ERROR
    opening: ..." before raising; the error it raises becomes the project's one-line message)."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr descriptor (embedded interpreters)
        yield
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class VideoDecodeError(RuntimeError):
    """A video (or frame image) cannot be opened or decoded; the message names the file."""


class NoVideoStreamError(VideoDecodeError):
    """The file is a readable media file without a video stream (e.g. audio only)."""


def _short_decord_message(err: BaseException) -> str:
    """decord errors carry C++ source locations and a stack trace; keep the words that say what failed."""
    text = str(err).strip().split("Stack trace", 1)[0]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    pick = next((ln for ln in lines if "Check failed" in ln or "ERROR" in ln or "Error" in ln), None)
    pick = pick or (lines[0] if lines else type(err).__name__)
    # Drop decord's "[12:00:00] /path/file.cc:123: " prefixes (there can be several).
    return re.sub(r"(\[[\d:]+\]\s*)?\S+\.(cc|h):\d+:\s*", "", pick).strip()


def _diagnose(path: Path, err: BaseException) -> VideoDecodeError:
    """Turn a failure to open ``path`` with decord into an error that says what is wrong."""
    import av

    try:
        container = av.open(str(path))
    except Exception as av_err:  # PyAV raises subclasses of av.FFmpegError and OSError
        return VideoDecodeError(f"{path}: not a readable video file (corrupt or truncated?): {av_err}")
    with container:
        kinds = [s.type for s in container.streams]
        if "video" not in kinds:
            found = ", ".join(kinds) if kinds else "none"
            return NoVideoStreamError(f"{path}: no video stream in this file (streams found: {found})")
        # Demux (no decoding) to say where the stream breaks: decord indexes every packet on open.
        stream = container.streams.video[0]
        declared = stream.frames or "?"
        count = 0
        try:
            for packet in container.demux(stream):
                if packet.size:
                    count += 1
        except Exception as demux_err:
            return VideoDecodeError(
                f"{path}: the video stream is truncated or corrupt: packets stop after frame {count} of "
                f"{declared} ({demux_err}); re-encode or re-download the file"
            )
        if isinstance(declared, int) and count < declared:
            return VideoDecodeError(
                f"{path}: the video stream is truncated or corrupt: the header declares {declared} "
                f"frames, the file holds {count} readable packets ({_short_decord_message(err)}); "
                "re-encode or re-download the file"
            )
    return VideoDecodeError(
        f"{path}: cannot index the video stream (corrupt, or a raw stream without container timestamps?): "
        f"{_short_decord_message(err)}; remuxing may help: ffmpeg -i IN -c copy OUT.mp4"
    )


def check_video_path(path: PathLike, what: str = "video file") -> Path:
    """``path`` when it is a regular file this process can read; else the error that says what it
    is: not found, a broken link, a link loop, a folder, a FIFO or device, or unreadable."""
    import errno
    import stat

    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise FileNotFoundError(f"{path}: broken symbolic link (its target {os.readlink(path)} does "
                                    "not exist)") from None
        raise FileNotFoundError(f"{path}: {what} not found") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise VideoDecodeError(f"{path}: symbolic link loop (the link points back at itself); "
                                   f"give the {what} itself") from None
        if e.errno == errno.EACCES:
            raise PermissionError(f"{path}: cannot be read (permission denied)") from None
        raise VideoDecodeError(f"{path}: cannot be read ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(f"{path}: is a folder, not a {what}")
    if stat.S_ISFIFO(st.st_mode):
        raise VideoDecodeError(f"{path}: is a FIFO (named pipe), not a {what}: decoding needs a file it can "
                               "seek in; write the stream to a file first")
    if not stat.S_ISREG(st.st_mode):
        raise VideoDecodeError(f"{path}: is a device or socket, not a {what}")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"{path}: cannot be read (permission denied)")
    return path


def quarter_turns(frame: Any) -> int:
    """Counter-clockwise quarter turns (0-3) that show a decoded PyAV frame upright, as a player
    does: the rotation of its display matrix (a phone's portrait video is stored landscape with a
    -90 degree matrix). Flips in the matrix are not applied."""
    try:
        degrees = frame.rotation
    except Exception:  # an older PyAV, or a frame without side data
        return 0
    return int(round(float(degrees or 0) / 90.0)) % 4


def upright(image: np.ndarray, turns: int) -> np.ndarray:
    """``image`` (H, W, C) turned ``turns`` quarter turns counter-clockwise (see :func:`quarter_turns`)."""
    return np.ascontiguousarray(np.rot90(image, turns)) if turns % 4 else image


def _check_indices(path: Path, indices: Sequence[int], n: int) -> np.ndarray:
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    bad = idx[(idx < 0) | (idx >= n)]
    if bad.size:
        raise IndexError(f"{path}: frame index {int(bad[0])} out of range (the source has {n} frames)")
    return idx


def _is_variable_rate(timestamps: np.ndarray) -> bool:
    if timestamps.size < 3:
        return False
    d = np.diff(timestamps)
    med = float(np.median(d))
    if med <= 0:
        return True
    return bool(np.max(np.abs(d - med)) > _VFR_TOLERANCE * med)


class VideoFile:
    """Random access to the frames of a video file (decord ``VideoReader``).

    Args:
        path: the video file.
        width, height: resize in the decoder (both or neither); ``None`` keeps the stored size.
        num_threads: decoder threads; 1 suits DataLoader workers (one reader per worker).

    Frames come back RGB uint8 ``(T, H, W, 3)`` whatever the stored pixel format (grayscale and
    odd sizes included). ``timestamps`` are presentation times in seconds relative to the video
    stream's start time (decord subtracts the stream ``start_time``), which is also time zero of
    :func:`avfusion.data.audio.load_audio`.
    """

    def __init__(
        self,
        path: PathLike,
        width: Optional[int] = None,
        height: Optional[int] = None,
        num_threads: int = 1,
    ) -> None:
        if (width is None) != (height is None):
            raise ValueError(f"{path}: give both width and height to resize in the decoder, or neither")
        self.path = Path(path)
        self.width = width
        self.height = height
        self.num_threads = num_threads
        self._reader: Any = None
        self._pid: Optional[int] = None
        self._times: Optional[np.ndarray] = None  # (N, 2) start/end seconds
        self._fps: Optional[float] = None
        self._warned = False
        self._shift: Optional[int] = None  # see _pyav_shift
        self._turns: Optional[int] = None  # see turns

    # -- lifecycle ---------------------------------------------------------------------------
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_reader"] = None
        state["_pid"] = None
        return state

    def _open(self) -> Any:
        import decord

        check_video_path(self.path)
        if self.path.stat().st_size == 0:
            raise VideoDecodeError(f"{self.path}: empty file (0 bytes)")
        kwargs: dict = {"ctx": decord.cpu(0), "num_threads": self.num_threads}
        if self.width is not None and not self.turns:  # rotated frames come from PyAV, resized there
            kwargs.update(width=int(self.width), height=int(self.height))
        try:
            with _native_stderr_silenced():
                reader = decord.VideoReader(str(self.path), **kwargs)
        except Exception as err:  # decord raises RuntimeError / DECORDError with a C++ trace
            raise _diagnose(self.path, err) from None
        n = len(reader)
        if n == 0:
            raise VideoDecodeError(f"{self.path}: the video stream has no frames")
        if self._times is None:
            self._fps = float(reader.get_avg_fps())
            times = np.asarray(reader.get_frame_timestamp(np.arange(n)), dtype=np.float64)
            self._times = self._checked_times(times.reshape(n, 2))
        return reader

    def _checked_times(self, times: np.ndarray) -> np.ndarray:
        """decord's (start, end) per frame, with missing pts and zero packet durations repaired."""
        start, end = times[:, 0].copy(), times[:, 1].copy()
        rate = self._fps if self._fps and np.isfinite(self._fps) and self._fps > 0 else None
        if not np.all(np.isfinite(times)) or np.any(np.diff(start) <= 0):
            if rate is None:
                raise VideoDecodeError(
                    f"{self.path}: frame timestamps are missing or not increasing and the stream "
                    "declares no frame rate; remux the file (e.g. ffmpeg -i in -c copy out.mp4)"
                )
            warnings.warn(
                f"{self.path}: frame timestamps are missing or not increasing; using frame index / "
                f"{rate:.3f} fps instead",
                RuntimeWarning,
                stacklevel=4,
            )
            start = np.arange(len(start)) / rate
            end = start + 1.0 / rate
        # Packets without a duration end where the next frame starts (the last: one frame period).
        short = end <= start
        short_inner = short[:-1]
        end[:-1][short_inner] = start[1:][short_inner]
        if short[-1]:
            period = 1.0 / rate if rate else (float(np.median(np.diff(start))) if len(start) > 1 else 0.0)
            end[-1] = start[-1] + period
        return np.stack([start, end], axis=1)

    @property
    def reader(self) -> Any:
        """The decord reader, opened on first use in this process (reopened after a fork)."""
        if self._reader is None or self._pid != os.getpid():
            self._park_inherited()
            self._reader = self._open()
            self._pid = os.getpid()
        return self._reader

    def close(self) -> None:
        self._park_inherited()
        self._reader = None
        self._pid = None

    def _park_inherited(self) -> None:
        if self._reader is not None and self._pid != os.getpid():
            INHERITED_READERS.append(self._reader)
            self._reader = None

    # -- metadata ----------------------------------------------------------------------------
    def _meta(self) -> None:
        if self._times is None:
            self.reader  # noqa: B018 -- opening fills the metadata

    def __len__(self) -> int:
        self._meta()
        return int(self._times.shape[0])

    @property
    def fps(self) -> float:
        """Average frame rate the container declares; use ``timestamps`` for alignment."""
        self._meta()
        if not self._fps or not np.isfinite(self._fps):
            # Some containers declare no rate: fall back to the measured mean interval.
            t = self.timestamps
            self._fps = float((len(t) - 1) / (t[-1] - t[0])) if len(t) > 1 and t[-1] > t[0] else 0.0
        return float(self._fps)

    @property
    def timestamps(self) -> np.ndarray:
        """Start time of every frame in seconds, ``(N,)`` float64 (decord stores float32:
        sub-sample accurate at 16 kHz for videos up to about ten minutes)."""
        self._meta()
        return self._times[:, 0].copy()

    @property
    def frame_end_times(self) -> np.ndarray:
        """End time of every frame in seconds (start + packet duration), ``(N,)``."""
        self._meta()
        return self._times[:, 1].copy()

    @property
    def duration(self) -> float:
        """End time of the last frame in seconds."""
        self._meta()
        return float(self._times[-1, 1])

    @property
    def is_variable_frame_rate(self) -> bool:
        """True when frame intervals differ by more than 5 %: trust ``timestamps``, not ``fps``."""
        return _is_variable_rate(self.timestamps)

    # -- frames ------------------------------------------------------------------------------
    def get_batch(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at ``indices`` (any order, repeats allowed): RGB uint8 ``(T, H, W, 3)``.

        Raises :class:`VideoDecodeError` naming the file and the frames when decoding fails.
        """
        idx = _check_indices(self.path, indices, len(self))
        if self.turns:
            return self._get_batch_pyav(idx)
        try:
            frames = self.reader.get_batch(idx.tolist()).asnumpy()
        except Exception as err:
            self.close()  # a decord reader that failed once is unusable
            raise VideoDecodeError(
                f"{self.path}: cannot decode frames {_range_text(idx)} (corrupt stream?): "
                f"{_short_decord_message(err)}"
            ) from None
        return _as_rgb(frames)

    def _get_batch_pyav(self, idx: np.ndarray) -> np.ndarray:
        # decord turns a rotated stream's pictures its own way (and fails on 180 degrees or with a
        # resize): PyAV decodes them and the display matrix is applied here.
        decoded = self._decode_lenient(set(idx.tolist())) if len(idx) else {}
        missing = [int(i) for i in idx if int(i) not in decoded]
        if missing:
            raise VideoDecodeError(f"{self.path}: cannot decode frames {_range_text(np.asarray(missing))} "
                                   "(corrupt stream?)")
        if not len(idx):
            return np.zeros((0,) + self._frame_shape({}), dtype=np.uint8)
        return np.stack([decoded[int(i)] for i in idx])

    @property
    def turns(self) -> int:
        """Counter-clockwise quarter turns the container's display matrix asks for (0 for most
        files); every frame this reader returns is already turned upright."""
        if self._turns is None:
            import av

            self._turns = 0
            try:
                with av.open(str(self.path)) as c:
                    for frame in c.decode(c.streams.video[0]):
                        self._turns = quarter_turns(frame)
                        break
            except Exception:  # a damaged file: its frames fail (or are masked) on their own
                pass
        return self._turns

    def get_batch_masked(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`get_batch`, but frames that cannot be decoded come back black with
        ``valid[i] = False`` (one warning per file) instead of raising.

        Returns ``frames (T, H, W, 3)`` uint8 and ``valid (T,)`` bool.
        """
        idx = _check_indices(self.path, indices, len(self))
        try:
            return self.get_batch(idx), np.ones(len(idx), dtype=bool)
        except VideoDecodeError:
            pass
        # decord's reader is unusable after a decoding error (and which frames it manages before
        # failing depends on its decoding thread), so decode the damaged file once more with PyAV,
        # packet by packet, skipping the packets FFmpeg rejects: deterministic, and only for
        # broken files.
        decoded = self._decode_lenient(set(idx.tolist()))
        shape = self._frame_shape(decoded)
        frames = np.zeros((len(idx),) + shape, dtype=np.uint8)
        valid = np.zeros(len(idx), dtype=bool)
        for k, i in enumerate(idx.tolist()):
            if i in decoded and decoded[i].shape == shape:
                frames[k] = decoded[i]
                valid[k] = True
        bad = sorted(set(idx[~valid].tolist()))
        if bad and not self._warned:
            self._warned = True
            warnings.warn(
                f"{self.path}: {len(bad)} frame(s) could not be decoded and are masked "
                f"(first: {bad[0]}); further failures in this file are masked silently",
                RuntimeWarning,
                stacklevel=2,
            )
        return frames, valid

    def _pyav_frames(self, first: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """Every frame PyAV can decode from frame ``first`` on, in presentation order, as
        ``(index, RGB frame)``: each decoded picture is matched to decord's index by its time
        (within half the smallest frame interval); damaged packets and pictures are skipped.
        One frame in memory at a time."""
        import av

        times = self._times[:, 0]
        # Half the smallest frame interval: how far a decoded pts may sit from decord's (float32) time.
        tol = 0.5 * float(np.min(np.diff(times))) if len(times) > 1 else 1.0
        try:
            container = av.open(str(self.path))
        except Exception:
            return
        with container:
            stream = container.streams.video[0]
            tb = stream.time_base
            start = (stream.start_time or 0) + self._pyav_shift(stream)
            if first > 0:
                try:
                    container.seek(start + int(times[first] / tb), stream=stream, backward=True)
                except Exception:
                    container.seek(0)
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except Exception:  # av.InvalidDataError and friends: a damaged packet
                    continue
                for frame in frames:
                    if frame.pts is None or frame.is_corrupt:
                        continue
                    t = float((frame.pts - start) * tb)
                    i = int(np.clip(np.searchsorted(times, t), 1, len(times) - 1)) if len(times) > 1 else 0
                    i = i if len(times) == 1 or abs(times[i] - t) < abs(times[i - 1] - t) else i - 1
                    if abs(times[i] - t) > tol or i < first:
                        continue
                    turns = quarter_turns(frame)
                    if self.width is not None:  # the size asked for is the upright picture's
                        w, h = (self.height, self.width) if turns % 2 else (self.width, self.height)
                        frame = frame.reformat(width=int(w), height=int(h))
                    yield i, upright(_as_rgb(frame.to_ndarray(format="rgb24")[None])[0], turns)

    def _pyav_shift(self, stream: Any) -> int:
        """PyAV's time of frame 0 minus decord's, in stream ticks (0 for almost every file).

        With an mp4 edit list that hides encoder pre-roll, decord labels the first shown picture
        with the pre-roll's negative time (-0.125 s on a phone video) while PyAV gives it 0; the
        pictures agree frame by frame. Taken from the first decodable picture, and only when
        smaller than half a second (a damaged start must not shift every frame)."""
        if self._shift is None:
            import av

            self._shift = 0
            try:
                with av.open(str(self.path)) as c:
                    s = c.streams.video[0]
                    for frame in c.decode(s):
                        if frame.pts is not None:
                            t = float((frame.pts - (s.start_time or 0)) * s.time_base)
                            delta = t - float(self._times[0, 0])
                            if abs(delta) < 0.5:
                                self._shift = int(round(delta / float(s.time_base)))
                            break
            except Exception:
                pass
        return self._shift

    def _decode_lenient(self, wanted: set[int]) -> dict[int, np.ndarray]:
        """Frames in ``wanted`` that PyAV can decode, by index; undecodable ones are absent."""
        times = self._times[:, 0]
        hi = max(wanted)
        out: dict[int, np.ndarray] = {}
        for i, img in self._pyav_frames(min(wanted)):
            if i in wanted:
                out[i] = img
            # Stop once every wanted frame is in, or well past the last one.
            if len(out) == len(wanted) or times[i] > times[hi] + 2.0:
                break
        return out

    def iter_batches(self, indices: Sequence[int], chunk: int = 8) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The frames at ``indices`` (ascending) decoded in one sequential pass, ``chunk`` at a
        time: yields ``(indices, frames (t, H, W, 3) uint8, valid (t,))``. Memory stays at one
        chunk whatever the video's length (decord's random access reads far ahead: ~800 MB for
        300 frames of 720p). Frames that cannot be decoded come back black with ``valid`` False
        (one warning per file)."""
        idx = _check_indices(self.path, indices, len(self))
        if len(idx) and (np.diff(idx) <= 0).any():
            raise ValueError(f"{self.path}: iter_batches needs ascending, unique frame indices")
        shape: Optional[tuple[int, int, int]] = None
        buf_i: list[int] = []
        buf_f: list[Optional[np.ndarray]] = []
        missing: list[int] = []

        def batch() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            nonlocal shape
            if shape is None:
                shape = self._frame_shape({})
            frames = np.empty((len(buf_i),) + shape, dtype=np.uint8)
            valid = np.zeros(len(buf_i), dtype=bool)
            for k, f in enumerate(buf_f):
                if f is not None and f.shape == shape:
                    frames[k], valid[k] = f, True
                else:
                    frames[k] = 0  # an undecodable frame: black
            out = (np.asarray(buf_i, dtype=np.int64), frames, valid)
            buf_i.clear()
            buf_f.clear()
            return out

        k = 0
        if len(idx):
            for i, img in self._pyav_frames(int(idx[0])):
                if shape is None:
                    shape = tuple(img.shape)  # type: ignore[assignment]
                while k < len(idx) and idx[k] < i:  # frames the decoder never produced
                    buf_i.append(int(idx[k])), buf_f.append(None), missing.append(int(idx[k]))
                    k += 1
                if k < len(idx) and idx[k] == i:
                    buf_i.append(i), buf_f.append(img)
                    k += 1
                if len(buf_i) >= chunk:
                    yield batch()
                if k >= len(idx):
                    break
        for j in idx[k:]:
            buf_i.append(int(j)), buf_f.append(None), missing.append(int(j))
            if len(buf_i) >= chunk:
                yield batch()
        if buf_i:
            yield batch()
        if missing and not self._warned:
            self._warned = True
            warnings.warn(f"{self.path}: {len(missing)} frame(s) could not be decoded (damaged, or outside "
                          f"the file's edit list) and are masked (first: {missing[0]})", RuntimeWarning,
                          stacklevel=2)

    def _frame_shape(self, decoded: dict[int, np.ndarray]) -> tuple[int, int, int]:
        for frame in decoded.values():
            return tuple(frame.shape)  # type: ignore[return-value]
        if self.width is not None:
            return (int(self.height), int(self.width), 3)
        import av

        with av.open(str(self.path)) as container:
            ctx = container.streams.video[0].codec_context
            h, w = int(ctx.height), int(ctx.width)
        return (w, h, 3) if self.turns % 2 else (h, w, 3)

    def __repr__(self) -> str:
        return f"VideoFile({str(self.path)!r})"


def _range_text(idx: np.ndarray) -> str:
    if idx.size == 1:
        return str(int(idx[0]))
    return f"{int(idx.min())}..{int(idx.max())}"


def _as_rgb(frames: np.ndarray) -> np.ndarray:
    """Whatever comes out of a decoder: ``(T, H, W, 3)`` uint8."""
    if frames.ndim == 3:
        frames = frames[..., None]
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    elif frames.shape[-1] == 4:
        frames = frames[..., :3]
    return np.ascontiguousarray(frames, dtype=np.uint8)


def _natural_key(p: Path) -> tuple:
    # "2.png" before "10.png"; identical to plain sorting for zero-padded names.
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name))


def list_frame_files(folder: PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files of a frame folder, sorted by name (numbers compared as numbers)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: frame folder not found")
    exts = {e.lower() for e in extensions}
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts]
    return sorted(files, key=_natural_key)


def numbered_frame_files(folder: PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Optional[Path]]:
    """A frame folder's images placed by the number in their names (the last run of digits):
    entry ``i`` is frame ``i``'s image, None where the numbering skips one (those frames are
    masked, one warning names them), so a missing ``f002.png`` never hands its label and time to
    ``f003.png``. Frames count from 0 when an image is numbered 0, else from 1 (FFmpeg's
    ``%06d.png`` numbering). An image without a number, two images with one number, or numbers
    too sparse to be frame numbers are a ValueError naming the folder."""
    folder = Path(folder)
    files = list_frame_files(folder, extensions)
    if not files:
        return []
    numbers = []
    for f in files:
        m = re.search(r"(\d+)\D*$", f.stem)
        if m is None:
            raise ValueError(f"{folder}: frame image {f.name} has no frame number in its name; name the "
                             "frames by their number (000000.png, 000001.png, ...)")
        numbers.append(int(m.group(1)))
    owner: dict[int, Path] = {}
    for f, k in zip(files, numbers):
        if k in owner:
            raise ValueError(f"{folder}: {owner[k].name} and {f.name} both carry frame number {k}")
        owner[k] = f
    base = 0 if min(numbers) == 0 else 1
    n = max(numbers) - base + 1
    if n > 2 * len(files) + 10:
        raise ValueError(f"{folder}: {len(files)} frame images numbered {min(numbers)}..{max(numbers)}: the "
                         "numbers in their names are not consecutive frame numbers; name the frames by "
                         "their number (000000.png, 000001.png, ...)")
    out: list[Optional[Path]] = [owner.get(k + base) for k in range(n)]
    missing = [k + base for k, f in enumerate(out) if f is None]
    if missing:
        shown = ", ".join(str(k) for k in missing[:5]) + (", ..." if len(missing) > 5 else "")
        warnings.warn(f"{folder}: frame images are numbered {base}..{max(numbers)} but {len(missing)} number(s) "
                      f"are missing ({shown}); those frames are masked, every other image keeps the frame, "
                      "label and time of its number", RuntimeWarning, stacklevel=2)
    return out


class FrameFolder:
    """Frames stored as image files, with the :class:`VideoFile` interface.

    Args:
        source: a folder (its images placed by the number in their names, gaps masked:
            :func:`numbered_frame_files`) or an explicit
            list of files, where ``None`` marks a frame without an image (e.g. Aff-Wild2 frames
            without a face crop): masked by :meth:`get_batch_masked`, an error for :meth:`get_batch`.
        fps: frame rate; frame ``i`` is at ``i / fps`` unless ``timestamps`` are given.
        timestamps: ``(N,)`` start time of each frame in seconds.
        width, height: resize every frame to this size (both or neither). Without them, frames
            whose size differs from the first image's are resized to it (one warning per folder).
    """

    def __init__(
        self,
        source: Union[PathLike, Sequence[Optional[PathLike]]],
        fps: Optional[float] = None,
        timestamps: Optional[Sequence[float]] = None,
        width: Optional[int] = None,
        height: Optional[int] = None,
    ) -> None:
        if (width is None) != (height is None):
            raise ValueError(f"{source}: give both width and height to resize, or neither")
        if isinstance(source, (str, Path)):
            self.path = Path(source)
            self.files: list[Optional[Path]] = numbered_frame_files(self.path)
            if not self.files:
                raise VideoDecodeError(f"{self.path}: no image files in this frame folder")
        else:
            self.files = [Path(f) if f is not None else None for f in source]
            first = next((f for f in self.files if f is not None), None)
            self.path = first.parent if first is not None else Path(".")
            if not self.files:
                raise VideoDecodeError(f"{self.path}: empty list of frame files")
        n = len(self.files)
        if timestamps is not None:
            ts = np.asarray(timestamps, dtype=np.float64).reshape(-1)
            if ts.shape[0] != n:
                raise ValueError(f"{self.path}: {ts.shape[0]} timestamps for {n} frames")
            self._ts = ts
            self._fps = float(fps) if fps else _mean_rate(ts)
        else:
            if not fps or fps <= 0:
                raise ValueError(
                    f"{self.path}: a frame folder needs fps (or timestamps) to place frames in time"
                )
            self._fps = float(fps)
            self._ts = np.arange(n, dtype=np.float64) / self._fps
        self.width = width
        self.height = height
        self._size: Optional[tuple[int, int]] = (int(width), int(height)) if width is not None else None
        self._warned_unreadable = False
        self._warned_size = False

    def __len__(self) -> int:
        return len(self.files)

    @property
    def fps(self) -> float:
        return self._fps

    @property
    def timestamps(self) -> np.ndarray:
        return self._ts.copy()

    @property
    def frame_end_times(self) -> np.ndarray:
        ends = np.empty_like(self._ts)
        ends[:-1] = self._ts[1:]
        ends[-1] = self._ts[-1] + 1.0 / self._fps
        return ends

    @property
    def duration(self) -> float:
        return float(self.frame_end_times[-1])

    @property
    def is_variable_frame_rate(self) -> bool:
        return _is_variable_rate(self._ts)

    def close(self) -> None:
        """Nothing to release (kept for the :class:`VideoFile` interface)."""

    def _read(self, i: int) -> np.ndarray:
        import cv2

        f = self.files[i]
        if f is None:
            raise VideoDecodeError(f"{self.path}: frame {i} has no image file")
        if not f.is_file():
            raise VideoDecodeError(f"{f}: frame image not found (frame {i})")
        # IMREAD_COLOR gives 8-bit BGR for grayscale, palette, 16-bit and alpha images alike.
        img = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if img is None:
            raise VideoDecodeError(f"{f}: unreadable image (empty, corrupt or unsupported format; frame {i})")
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        h, w = img.shape[:2]
        if self._size is None:
            self._size = (w, h)
        if (w, h) != self._size:
            if self.width is None and not self._warned_size:
                self._warned_size = True
                warnings.warn(
                    f"{self.path}: frame images differ in size ({f.name} is {w}x{h}, the first is "
                    f"{self._size[0]}x{self._size[1]}); resizing to the first",
                    RuntimeWarning,
                    stacklevel=3,
                )
            img = cv2.resize(img, self._size, interpolation=cv2.INTER_AREA)
        return img

    def _reference_size(self) -> tuple[int, int]:
        if self._size is None:
            for i, f in enumerate(self.files):
                if f is None:
                    continue
                try:
                    self._read(i)
                    break
                except VideoDecodeError:
                    continue
        if self._size is None:
            raise VideoDecodeError(f"{self.path}: none of the frame images can be read")
        return self._size

    def get_batch(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at ``indices``: RGB uint8 ``(T, H, W, 3)``; raises on a missing/unreadable image."""
        idx = _check_indices(self.path, indices, len(self))
        self._reference_size()
        return np.stack([self._read(int(i)) for i in idx])

    def get_batch_masked(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Frames and ``valid (T,)``: missing images (``None`` entries) and unreadable files come
        back black and masked; unreadable files give one warning per folder."""
        idx = _check_indices(self.path, indices, len(self))
        w, h = self._reference_size()
        frames = np.zeros((len(idx), h, w, 3), dtype=np.uint8)
        valid = np.zeros(len(idx), dtype=bool)
        for k, i in enumerate(idx.tolist()):
            if self.files[i] is None:
                continue
            try:
                frames[k] = self._read(i)
                valid[k] = True
            except VideoDecodeError as err:
                if not self._warned_unreadable:
                    self._warned_unreadable = True
                    warnings.warn(
                        f"{err}; masking it and any further unreadable frames of {self.path}",
                        RuntimeWarning,
                        stacklevel=2,
                    )
        return frames, valid

    def __repr__(self) -> str:
        return f"FrameFolder({str(self.path)!r}, n={len(self)})"


def _mean_rate(ts: np.ndarray) -> float:
    if ts.size > 1 and ts[-1] > ts[0]:
        return float((ts.size - 1) / (ts[-1] - ts[0]))
    raise ValueError("cannot infer a frame rate from fewer than two distinct timestamps: give fps")


FrameSource = Union[VideoFile, FrameFolder]


def open_frames(
    source: PathLike,
    fps: Optional[float] = None,
    width: Optional[int] = None,
    height: Optional[int] = None,
) -> FrameSource:
    """A :class:`FrameFolder` for a directory (``fps`` required), else a :class:`VideoFile`."""
    source = Path(source)
    if source.is_dir():
        return FrameFolder(source, fps=fps, width=width, height=height)
    return VideoFile(source, width=width, height=height)
