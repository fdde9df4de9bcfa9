"""One record per video: where its frames and audio live, its per-frame labels and face information.

Every loader (AFEW-VA, Aff-Wild2, manifest) returns a list of :class:`VideoRecord`; the clip sampler,
the splits and the feature cache only ever read records, so a new dataset needs only a loader.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

# How the face of a frame is found:
#   "landmarks": a box from the record's per-frame landmarks (AFEW-VA ships 68 points per frame);
#   "precropped": the frames already are aligned face crops (Aff-Wild2's cropped_aligned);
#   "detect": run a face detector on the frame (arbitrary video);
#   "full": use the whole frame.
FACE_MODES = ("landmarks", "precropped", "detect", "full")

# A frame source: a video file, or one image path per frame (None where the image is missing).
Source = Union[str, Sequence[Optional[str]]]


class DataKeyError(KeyError, ValueError):
    """Something a dataset file or id list should contain is missing; the message names the file.

    A KeyError for code that looks things up, and a ValueError, so every command reports it as a
    user error in one line (a plain KeyError's message is also shown without the quotes here)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass
class VideoRecord:
    """A video (or frame folder) with per-frame valence/arousal labels.

    Attributes:
        video_id: unique name of the clip within its dataset (split files list these).
        source: a video file path, or a list of ``n_frames`` image paths (``None`` where an image is
            missing, e.g. Aff-Wild2 frames without a detected face).
        n_frames: number of frames; labels, masks and landmarks all have this length.
        fps: nominal frame rate (frames per second) of ``source``.
        labels: ``(N, 2)`` float32 valence, arousal in [-1, 1]; NaN where there is no label.
        label_mask: ``(N,)`` bool, True where the label is valid.
        actor: the person shown (AFEW-VA's ``actor``), or None when the dataset does not say.
        audio_path: file to read the audio track from (often the video itself), or None.
        landmarks: optional ``(N, 68, 2)`` float32 iBUG-68 landmarks in source-frame pixels.
        face_mode: one of :data:`FACE_MODES`.
        face_mask: ``(N,)`` bool, False where the frame is known to have no face (or no image).
        group: clips cut from the same source video (Aff-Wild2's ``_left``/``_right``) share a
            group and always land on the same side of a split; defaults to ``video_id``.
        timestamps: optional ``(N,)`` float64 presentation time of each frame in seconds; when None,
            frame ``k`` is at ``k / fps`` (the readers give exact times for video files).
        dataset: name of the loader that made the record.
        meta: anything else (paths of the label file, counts, ...), informational only.
    """

    video_id: str
    source: Source
    n_frames: int
    fps: float
    labels: np.ndarray
    label_mask: np.ndarray
    actor: Optional[str] = None
    audio_path: Optional[str] = None
    landmarks: Optional[np.ndarray] = None
    face_mode: str = "detect"
    face_mask: Optional[np.ndarray] = None
    group: Optional[str] = None
    timestamps: Optional[np.ndarray] = None
    dataset: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"record {self.video_id!r}"
        self.video_id = str(self.video_id)
        n = int(self.n_frames)
        self.n_frames = n
        if n <= 0:
            raise ValueError(f"{where}: n_frames must be positive, got {n}")
        if not (np.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"{where}: fps must be a positive number, got {self.fps}")
        self.fps = float(self.fps)
        self.labels = np.array(self.labels, dtype=np.float32)  # a copy: NaN is written below
        if self.labels.shape != (n, 2):
            raise ValueError(f"{where}: labels must have shape ({n}, 2), got {self.labels.shape}")
        self.label_mask = np.asarray(self.label_mask, dtype=bool)
        if self.label_mask.shape != (n,):
            raise ValueError(f"{where}: label_mask must have shape ({n},), got {self.label_mask.shape}")
        # A masked label must never leak a number into a loss: keep NaN there.
        self.labels[~self.label_mask] = np.nan
        if not np.isfinite(self.labels[self.label_mask]).all():
            raise ValueError(f"{where}: label_mask marks non-finite labels as valid")
        if self.face_mode not in FACE_MODES:
            raise ValueError(f"{where}: face_mode {self.face_mode!r} is not one of {FACE_MODES}")
        if self.face_mask is None:
            self.face_mask = np.ones(n, dtype=bool)
        self.face_mask = np.asarray(self.face_mask, dtype=bool)
        if self.face_mask.shape != (n,):
            raise ValueError(f"{where}: face_mask must have shape ({n},), got {self.face_mask.shape}")
        if self.landmarks is not None:
            self.landmarks = np.asarray(self.landmarks, dtype=np.float32)
            if self.landmarks.shape != (n, 68, 2):
                raise ValueError(
                    f"{where}: landmarks must have shape ({n}, 68, 2), got {self.landmarks.shape}")
        elif self.face_mode == "landmarks":
            raise ValueError(f"{where}: face_mode 'landmarks' needs per-frame landmarks")
        if not isinstance(self.source, (str, Path)):
            self.source = [None if p is None else str(p) for p in self.source]
            if len(self.source) != n:
                raise ValueError(
                    f"{where}: {len(self.source)} frame paths for {n} frames; give one path per "
                    "frame (None for a missing image)")
        else:
            self.source = str(self.source)
        if self.audio_path is not None:
            self.audio_path = str(self.audio_path)
        if self.timestamps is not None:
            self.timestamps = np.asarray(self.timestamps, dtype=np.float64)
            if self.timestamps.shape != (n,):
                raise ValueError(
                    f"{where}: timestamps must have shape ({n},), got {self.timestamps.shape}")
        if self.group is None:
            self.group = self.video_id

    @property
    def is_frame_folder(self) -> bool:
        """True when ``source`` is a list of images rather than a video file."""
        return not isinstance(self.source, str)

    @property
    def valence(self) -> np.ndarray:
        """``(N,)`` valence, NaN where unlabelled."""
        return self.labels[:, 0]

    @property
    def arousal(self) -> np.ndarray:
        """``(N,)`` arousal, NaN where unlabelled."""
        return self.labels[:, 1]

    def frame_times(self) -> np.ndarray:
        """``(N,)`` seconds of every frame: the stored timestamps, else ``k / fps``."""
        if self.timestamps is not None:
            return self.timestamps
        return np.arange(self.n_frames, dtype=np.float64) / self.fps


def select_by_id(paths: Sequence[Path], ids: Optional[Sequence[Any]], where: str,
                 key: str = "name") -> list[Path]:
    """The ``paths`` whose ``key`` (``"name"`` or ``"stem"``) is one of ``ids`` (all when None);
    an id with no path is an error naming ``where``."""
    if ids is None:
        return list(paths)
    wanted = {str(i) for i in ids}
    missing = wanted - {getattr(p, key) for p in paths}
    if missing:
        raise DataKeyError(f"{where}: no clip for id(s) {sorted(missing)[:10]}")
    return [p for p in paths if getattr(p, key) in wanted]


def check_unique_ids(records: Sequence[VideoRecord], where: str) -> None:
    """Refuse two records with the same ``video_id`` (splits and stitching key on it)."""
    seen: dict[str, int] = {}
    dup = []
    for r in records:
        if r.video_id in seen:
            dup.append(r.video_id)
        seen[r.video_id] = 1
    if dup:
        raise ValueError(f"{where}: duplicate video ids {sorted(set(dup))[:10]}; ids must be unique")


def mask_labels(values: np.ndarray, where: str, missing: Optional[float] = None) -> tuple[np.ndarray, np.ndarray]:
    """Turn raw ``(N, 2)`` labels into (labels with NaN where missing, valid mask).

    A frame is unlabelled when either value is NaN or (when ``missing`` is given) equals
    ``missing`` (Aff-Wild2 writes -5). NaN labels are masked with one warning naming ``where``.
    """
    values = np.asarray(values, dtype=np.float32).copy()
    nan = np.isnan(values).any(axis=1)
    mask = ~nan
    if missing is not None:
        mask &= ~(values == missing).any(axis=1)
    if nan.any():
        warnings.warn(
            f"{where}: {int(nan.sum())} frame(s) with NaN labels (first at frame "
            f"{int(np.flatnonzero(nan)[0])}); they are masked", stacklevel=3)
    values[~mask] = np.nan
    if len(mask) and not mask.any():
        warnings.warn(f"{where}: no labelled frame at all; the video is scored nowhere and only "
                      "gives context to its windows", stacklevel=3)
    return values, mask
