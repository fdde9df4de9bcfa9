"""A Dataset of windows of T frames over video records, and the batch collate.

The windows (which frames, their times, the audio each spans) come from the one window planner,
:mod:`avfusion.data.windows`: training uses overlapping windows (``stride < clip_len``),
evaluation ``stride == clip_len`` (every frame exactly once, put back in place by
``frame_indices``, :mod:`avfusion.inference.aggregate`). With ``target_fps`` the windows run over
frames picked by timestamp on a regular grid at that rate.

:class:`ClipDataset` reads a window's frames (readers opened lazily in each worker), crops the face,
applies the transform, cuts the audio the window spans out of the track by the frames' timestamps,
and returns one dict per window; :func:`collate` stacks those into the batch every model reads::

    video (B,T,3,H,W) float     audio (B,S) float, zero padded     audio_lengths (B,) int
    frame_times (B,T) float     seconds of each frame from the row's first audio sample
    audio_offsets (B,T) int     sample index of each frame in the row's audio
    valence, arousal (B,T)      0 where unlabelled          mask (B,T) bool: label valid, frame real
    face_mask (B,T) bool        a face crop exists          audio_valid (B,) bool: a track exists
    speech (B,T) float          speech probability (VAD; 1 with speech detection off, 0 without a track)
    audio_frames (B,T) bool     the frame's audio counts (speech by the speech rule)
    video_id list[str]          frame_indices (B,T) int, -1 = padding
    timestamps (B,T) float      seconds in the source video
"""
from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..timing import SAMPLE_RATE
from .records import VideoRecord
from .video import INHERITED_READERS
from .windows import Window, make_windows, sequence_indices, window_starts, window_times  # noqa: F401 (re-exported)



# Keys of a batch, in the order collate writes them.
BATCH_KEYS = ("video", "audio", "audio_lengths", "frame_times", "audio_offsets", "valence", "arousal",
              "mask", "face_mask", "audio_valid", "audio_frames", "speech", "video_id", "frame_indices", "timestamps")


def open_reader(rec: VideoRecord) -> Any:
    """The frame reader of a record (a video file or a folder of frames), checked against its length."""
    from .video import FrameFolder, VideoFile

    if rec.is_frame_folder:
        return FrameFolder(rec.source, fps=rec.fps, timestamps=rec.timestamps)
    reader = VideoFile(rec.source)
    if len(reader) != rec.n_frames:
        raise ValueError(
            f"{rec.source}: decodes to {len(reader)} frames but record {rec.video_id!r} "
            f"has {rec.n_frames}; the labels would not line up (was the file replaced?)")
    return reader


def default_cropper(face_mode: str, size: int) -> Any:
    """The cropper :class:`ClipDataset` uses for a record's face mode when none is given."""
    return _default_croppers(size)[face_mode]


def _default_croppers(size: int) -> dict[str, Any]:
    from .faces import build_cropper

    return {m: build_cropper(m, output_size=size) for m in ("landmarks", "precropped", "full")}


CropperArg = Union[None, Callable[..., tuple[np.ndarray, np.ndarray]], Mapping[str, Any]]


class ClipDataset(Dataset):
    """Windows of T frames with their faces, audio and labels; one dict per window.

    Args:
        records: from a loader (AFEW-VA, Aff-Wild2, manifest).
        clip_len: frames per window (T).
        stride: frames between window starts (default ``clip_len``: every frame once).
        cropper: a :class:`~avfusion.data.faces.FaceCropper` for every record, or a dict
            ``face_mode -> cropper``. None builds ``landmarks``/``precropped``/``full`` croppers
            (``crop_size`` pixels) per record face mode; records with ``face_mode="detect"`` then
            need a cropper with a detector (e.g. ``FaceCropper("yunet")``) passed in.
        transform: crops ``(t, S, S, 3)`` uint8 -> ``(t, 3, H, W)`` float, e.g.
            :func:`~avfusion.data.transforms.build_transform` of the video encoder's
            ``pretrained_cfg``; None gives the crops scaled to [0, 1].
        sample_rate: audio rate (16 kHz for wav2vec2).
        with_audio: read audio; when False (or the record has no track) the audio is zeros of the
            window's length and ``audio_valid`` False.
        target_fps: resample records to this frame rate (see :func:`make_windows`).
        drop_unlabelled: skip windows without any labelled frame.
        crop_size: crop side for the default croppers (default: the transform's input size, else 256).
        max_open: readers kept open per worker (least recently used ones are closed).
        audio_cache_seconds: tracks up to this long are decoded whole once per worker and cached;
            longer ones are decoded per window (a seek plus the window's span).
    """

    def __init__(
        self,
        records: Sequence[VideoRecord],
        clip_len: int,
        stride: Optional[int] = None,
        cropper: CropperArg = None,
        transform: Optional[Callable[[np.ndarray], torch.Tensor]] = None,
        sample_rate: int = SAMPLE_RATE,
        with_audio: bool = True,
        target_fps: Optional[float] = None,
        drop_unlabelled: bool = False,
        crop_size: Optional[int] = None,
        max_open: int = 8,
        audio_cache_seconds: float = 120.0,
        speech: Optional[Any] = None,
    ) -> None:
        self.records = list(records)
        # Speech rule (avfusion.data.speech.SpeechRule) for the audio: frames without speech are
        # masked (``audio_frames``); None: every frame of a track counts.
        self.speech_rule = speech
        self._speech: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._detector: Any = None
        self.clip_len = int(clip_len)
        self.target_fps = target_fps
        self.windows = make_windows(self.records, self.clip_len, stride, target_fps, drop_unlabelled)
        self.transform = transform
        self.sample_rate = int(sample_rate)
        self.with_audio = with_audio
        self.max_open = max(1, int(max_open))
        self.audio_cache_seconds = float(audio_cache_seconds)
        if crop_size is None:
            size = getattr(transform, "input_size", None)
            crop_size = int(max(size)) if size is not None else 256
        if cropper is None:
            self.croppers: dict[str, Any] = _default_croppers(crop_size)
        elif isinstance(cropper, Mapping):
            self.croppers = dict(cropper)
        else:
            self.croppers = {m: cropper for m in ("landmarks", "precropped", "detect", "full")}
        modes = sorted({r.face_mode for r in self.records} - set(self.croppers))
        if modes:
            raise ValueError(
                f"no face cropper for face_mode {modes} (records such as "
                f"{next(r.video_id for r in self.records if r.face_mode in modes)!r}); pass "
                "cropper=FaceCropper('yunet') (or a dict face_mode -> cropper)")
        self._pid: Optional[int] = None
        self._readers: OrderedDict[int, Any] = OrderedDict()
        self._audio: OrderedDict[int, np.ndarray] = OrderedDict()
        self._warned_audio: set[str] = set()

    def __len__(self) -> int:
        return len(self.windows)

    # -- per-worker state -------------------------------------------------------------------------
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_readers"], state["_audio"], state["_pid"] = OrderedDict(), OrderedDict(), None
        state["_detector"] = None
        return state

    def _check_process(self) -> None:
        # Readers opened in another process (the parent before a fork) must not be used here, nor
        # destroyed: a decord reader inherited through fork aborts the worker in its destructor
        # (it joins decoder threads that exist only in the parent). They are parked, never freed.
        if self._pid != os.getpid():
            if self._readers:
                INHERITED_READERS.extend(self._readers.values())
            self._readers, self._audio, self._pid = OrderedDict(), OrderedDict(), os.getpid()

    def _reader(self, r: int) -> Any:
        if r in self._readers:
            self._readers.move_to_end(r)
            return self._readers[r]
        reader = open_reader(self.records[r])
        self._readers[r] = reader
        while len(self._readers) > self.max_open:
            _, old = self._readers.popitem(last=False)
            old.close()
        return reader

    def _track(self, r: int) -> np.ndarray:
        """The whole audio track of record ``r`` (16 kHz mono), decoded once per worker."""
        if r in self._audio:
            self._audio.move_to_end(r)
            return self._audio[r]
        from .audio import load_audio

        audio = load_audio(self.records[r].audio_path, self.sample_rate)
        self._audio[r] = audio
        while len(self._audio) > self.max_open:
            self._audio.popitem(last=False)
        return audio

    def speech_probabilities(self, r: int) -> np.ndarray:
        """Speech probability of every frame of record ``r`` (``(N,)`` float32; zeros without a
        track), from its whole track: what ``avfusion cache`` stores and predict computes."""
        return self._speech_of(r)[0]

    def _speech_of(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        """``(probabilities, frames with speech)`` of record ``r``, once per worker."""
        if r in self._speech:
            return self._speech[r]
        from .audio import AudioDecodeError, load_audio
        from .speech import SpeechDetector, speech_frames

        rec = self.records[r]
        times = rec.frame_times()
        probs = np.zeros(len(times), dtype=np.float32)
        if self.with_audio and rec.audio_path is not None:
            try:  # the whole track once; a long one is not kept in the per-worker cache
                long = len(times) and float(times[-1]) > self.audio_cache_seconds
                track = load_audio(rec.audio_path, self.sample_rate) if long else self._track(r)
            except AudioDecodeError:
                track = None  # _read_audio warns once and masks the audio
            if track is not None:
                if self._detector is None:
                    self._detector = SpeechDetector()
                probs = self._detector.frame_probabilities(track, times, self.sample_rate, rec.fps)
        said = speech_frames(probs, rec.fps, self.speech_rule) if self.speech_rule is not None else np.ones(len(probs), bool)
        self._speech[r] = (probs, said)
        return self._speech[r]

    def _read_audio(self, r: int, first: int, end: int, duration: float) -> tuple[np.ndarray, bool]:
        rec = self.records[r]
        if not self.with_audio or rec.audio_path is None:
            return np.zeros(end - first, dtype=np.float32), False
        from .audio import AudioDecodeError, load_audio, slice_audio

        try:
            if duration <= self.audio_cache_seconds:
                return slice_audio(self._track(r), first, end), True
            sr = self.sample_rate
            return load_audio(rec.audio_path, sr, first / sr, end / sr), True
        except AudioDecodeError as err:
            if rec.audio_path not in self._warned_audio:
                self._warned_audio.add(rec.audio_path)
                warnings.warn(f"{err}; audio of {rec.video_id!r} treated as missing", RuntimeWarning)
            return np.zeros(end - first, dtype=np.float32), False

    # -- items ------------------------------------------------------------------------------------
    def __getitem__(self, i: int) -> dict[str, Any]:
        """Window ``i``: ``video (T, 3, H, W)``, ``audio (S,)`` with ``audio_length`` S, and
        ``(T,)`` ``frame_times``, ``audio_offsets``, ``valence``, ``arousal``, ``mask``,
        ``face_mask``, ``frame_indices``, ``timestamps``; ``audio_valid`` and ``video_id``.
        Padding positions are zero (``-1`` in ``frame_indices``)."""
        self._check_process()
        w = self.windows[i]
        rec = self.records[w.record]
        T = self.clip_len
        idx = w.indices
        real = idx >= 0
        ridx = idx[real]
        reader = self._reader(w.record)
        frames, decoded = reader.get_batch_masked(ridx)
        ts_all = reader.timestamps
        ends = reader.frame_end_times

        cropper = self.croppers[rec.face_mode]
        lms = rec.landmarks[ridx] if rec.landmarks is not None else None
        crops, face_ok = cropper(frames, lms, decoded & rec.face_mask[ridx])
        clip = self.transform(crops) if self.transform is not None else (
            torch.from_numpy(np.ascontiguousarray(crops.transpose(0, 3, 1, 2))).float() / 255.0)
        video = clip.new_zeros((T,) + tuple(clip.shape[1:]))
        video[: len(ridx)] = clip

        sr = self.sample_rate
        timestamps, first, end = window_times(ts_all, ends, idx, 1.0 / (self.target_fps or rec.fps), sr)
        audio, audio_valid = self._read_audio(w.record, first, end, float(ends[-1]))
        offsets = np.floor(timestamps * sr + 0.5).astype(np.int64) - first
        offsets[~real] = np.minimum(offsets[~real], len(audio))

        labels = np.zeros((T, 2), dtype=np.float32)
        mask = np.zeros(T, dtype=bool)
        mask[real] = rec.label_mask[ridx]
        labels[real] = np.nan_to_num(rec.labels[ridx], nan=0.0)
        face_mask = np.zeros(T, dtype=bool)
        face_mask[real] = face_ok
        speech, audio_frames = np.zeros(T, dtype=np.float32), np.zeros(T, dtype=bool)
        if audio_valid:
            if self.speech_rule is not None:
                probs, said = self._speech_of(w.record)
                speech[real], audio_frames[real] = probs[ridx], said[ridx]
            else:
                speech[real], audio_frames[real] = 1.0, True
        return {
            "video": video,
            "audio": torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)),
            "audio_length": len(audio),
            "frame_times": torch.from_numpy((timestamps - first / sr).astype(np.float32)),
            "audio_offsets": torch.from_numpy(offsets),
            "valence": torch.from_numpy(labels[:, 0].copy()),
            "arousal": torch.from_numpy(labels[:, 1].copy()),
            "mask": torch.from_numpy(mask),
            "face_mask": torch.from_numpy(face_mask),
            "audio_valid": bool(audio_valid),
            "audio_frames": torch.from_numpy(audio_frames),
            "speech": torch.from_numpy(speech),
            "video_id": rec.video_id,
            "frame_indices": torch.from_numpy(idx.copy()),
            "timestamps": torch.from_numpy(timestamps.astype(np.float32)),
        }


def collate(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack :class:`ClipDataset` items into a batch (keys in :data:`BATCH_KEYS`); audio is zero
    padded to the longest row and ``audio_lengths`` says how much of each row is real."""
    if not items:
        raise ValueError("collate: empty batch")
    lengths = torch.tensor([int(it["audio_length"]) for it in items], dtype=torch.long)
    audio = torch.zeros(len(items), int(lengths.max()), dtype=torch.float32)
    for b, it in enumerate(items):
        audio[b, : lengths[b]] = it["audio"]
    batch = {
        "video": torch.stack([it["video"] for it in items]),
        "audio": audio,
        "audio_lengths": lengths,
    }
    for k in ("frame_times", "audio_offsets", "valence", "arousal", "mask", "face_mask", "audio_frames", "speech"):
        batch[k] = torch.stack([it[k] for it in items])
    batch["audio_valid"] = torch.tensor([bool(it["audio_valid"]) for it in items], dtype=torch.bool)
    batch["video_id"] = [str(it["video_id"]) for it in items]
    batch["frame_indices"] = torch.stack([it["frame_indices"] for it in items])
    batch["timestamps"] = torch.stack([it["timestamps"] for it in items])
    return {k: batch[k] for k in BATCH_KEYS}


__all__ = ["Window", "ClipDataset", "collate", "make_windows", "window_starts", "sequence_indices", "window_times", "open_reader",
           "BATCH_KEYS"]
