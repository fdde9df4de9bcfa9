"""Cached per-frame features: one safetensors file per video, a manifest, and a Dataset over them.

A cache folder (written by ``avfusion cache``, see :mod:`avfusion.caching`)::

    CACHE/manifest.json            encoders (config + weight hash), dataset, window, dtype, videos
    CACHE/encoders.safetensors     the encoder weights that made the features (optional)
    CACHE/<video file>.safetensors one per video (name: :func:`video_filename` of the video id)

A video file holds, for its ``N`` frames:

    video (N, Cv)      float16/32   video-encoder feature per frame (zeros where face_mask is False)
    audio (N, Ca)      float16/32   audio feature per frame (models with audio; zeros without a track)
    timestamps (N,)    float64      seconds in the source video
    face_mask (N,)     bool         a face crop was found and decoded
    labels (N, 2)      float32      valence, arousal (NaN where unlabelled)   } when the dataset
    label_mask (N,)    bool         label valid                               } has labels
    audio_valid (1,)   bool         the video has an audio track
    speech (N,)        float32      speech probability of the frame (Silero VAD, avfusion.data.speech;
                                    models with audio; zeros without a track)

and string metadata (video id, fps, actor, group, dataset, encoder hash, window). Every file is
written through the one atomic writer (:mod:`avfusion.files`: temporary name, fsync, rename): a file that exists is
complete, so an interrupted run can be resumed by skipping existing files.

:class:`FeatureDataset` cuts windows of T frames exactly as :class:`~avfusion.data.clips.ClipDataset`
does (same :func:`~avfusion.data.windows.make_windows`, padding, masks and batch keys) but yields
``video_feats`` / ``audio_feats`` instead of ``video`` / ``audio``; :func:`collate_features` stacks
them. With a speech rule it applies the rule to each video's stored probabilities, as predict does
to the probabilities it computes (``audio_frames``: the frames whose audio counts). :class:`~avfusion.model.AVModel` reads those keys in place of its encoders' outputs.
"""
from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..files import PARTIAL_MARK, write_bytes_atomic
from .records import DataKeyError, VideoRecord
from .windows import frame_times, make_windows

PathLike = Union[str, Path]

CACHE_FORMAT = "avfusion-features"
CACHE_VERSION = 1
MANIFEST_NAME = "manifest.json"
ENCODERS_NAME = "encoders.safetensors"
SUFFIX = ".safetensors"
# Batch keys of cached-feature batches, in the order collate_features writes them.
FEATURE_BATCH_KEYS = ("video_feats", "audio_feats", "valence", "arousal", "mask", "face_mask",
                      "audio_valid", "audio_frames", "speech", "video_id", "frame_indices", "timestamps")


# ------------------------------------------------------------------------------------------------
# Atomic files


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all (:func:`avfusion.files.write_bytes_atomic`)."""
    write_bytes_atomic(path, data)


def remove_stale_temporaries(folder: PathLike) -> list[Path]:
    """Delete temporary files that a killed writer left in ``folder``; returns what was deleted."""
    gone = []
    for p in [*Path(folder).glob(f".*{PARTIAL_MARK}-*"), *Path(folder).glob(".*.tmp")]:
        if p.is_file():
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone


# ------------------------------------------------------------------------------------------------
# One video


_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def video_filename(video_id: str) -> str:
    """File name of a video's features: the id with every unsafe character %-escaped (injective)."""
    name = _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), str(video_id))
    if name.startswith("."):  # never a hidden file (temporaries are hidden)
        name = "%2E" + name[1:]
    return name + SUFFIX


@dataclass
class VideoFeatures:
    """The cached features of one video (see the module docstring for shapes)."""

    video_id: str
    timestamps: np.ndarray
    face_mask: np.ndarray
    fps: float
    video: Optional[torch.Tensor] = None
    audio: Optional[torch.Tensor] = None
    audio_valid: bool = False
    # Speech probability per frame (None: not computed, a cache written before avfusion 0.3).
    speech: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    label_mask: Optional[np.ndarray] = None
    meta: dict[str, str] = field(default_factory=dict)
    # Which of "video" / "audio" the file holds (also when they were not loaded).
    stored: tuple[str, ...] = ()

    @property
    def n_frames(self) -> int:
        return int(self.timestamps.shape[0])

    def check(self, where: str) -> None:
        """Refuse inconsistent lengths (a truncated or hand-edited file)."""
        n = self.n_frames
        parts = {"face_mask": self.face_mask, "video": self.video, "audio": self.audio,
                 "labels": self.labels, "label_mask": self.label_mask, "speech": self.speech}
        for name, arr in parts.items():
            if arr is not None and arr.shape[0] != n:
                raise ValueError(f"{where}: '{name}' has {arr.shape[0]} frames, timestamps have {n}")
        if (self.labels is None) != (self.label_mask is None):
            raise ValueError(f"{where}: 'labels' and 'label_mask' must come together")
        if self.video is None and self.audio is None:
            raise ValueError(f"{where}: neither 'video' nor 'audio' features")


def encode_video_features(feats: VideoFeatures) -> bytes:
    """The safetensors bytes of one video's features."""
    from safetensors.torch import save

    feats.check(f"features of {feats.video_id!r}")
    tensors: dict[str, torch.Tensor] = {
        "timestamps": torch.as_tensor(np.asarray(feats.timestamps, dtype=np.float64)),
        "face_mask": torch.as_tensor(np.asarray(feats.face_mask, dtype=bool)),
        "audio_valid": torch.tensor([bool(feats.audio_valid)]),
    }
    if feats.video is not None:
        tensors["video"] = feats.video.detach().cpu().contiguous()
    if feats.audio is not None:
        tensors["audio"] = feats.audio.detach().cpu().contiguous()
    if feats.speech is not None:
        tensors["speech"] = torch.as_tensor(np.asarray(feats.speech, dtype=np.float32))
    if feats.labels is not None:
        tensors["labels"] = torch.as_tensor(np.asarray(feats.labels, dtype=np.float32))
        tensors["label_mask"] = torch.as_tensor(np.asarray(feats.label_mask, dtype=bool))
    meta = {"format": CACHE_FORMAT, "version": str(CACHE_VERSION), "video_id": feats.video_id,
            "fps": repr(float(feats.fps)), **{k: str(v) for k, v in feats.meta.items()}}
    return save(tensors, metadata=meta)


def save_video_features(path: PathLike, feats: VideoFeatures) -> None:
    """Write one video's features atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, encode_video_features(feats))


def feature_file_problem(path: PathLike) -> Optional[str]:
    """Why the feature file at ``path`` is not whole (None when it is): its safetensors header
    must parse and its size must be exactly header + the tensors the header lists. Cheap: reads
    the header only, so a cache rerun can check every file it would skip."""
    import json as _json
    import struct

    p = Path(path)
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{p}: {size} bytes, shorter than a safetensors header"
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return f"{p}: header of {n} bytes in a {size}-byte file (cut short)"
            header = _json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        return f"{p}: unreadable safetensors header ({e})"
    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    expected = 8 + n + (max(ends) if ends else 0)
    if size != expected:
        return f"{p}: {size} bytes, its header describes {expected} (cut short or appended to)"
    return None


def load_video_features(path: PathLike, arrays_only: bool = False) -> VideoFeatures:
    """Read one video file; ``arrays_only`` skips the (large) ``video``/``audio`` features."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            keys = set(f.keys())
            get = {k: f.get_tensor(k) for k in keys if not (arrays_only and k in ("video", "audio"))}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: cached features not found") from None
    except Exception as e:  # safetensors raises SafetensorError on a damaged header
        raise ValueError(f"{path}: not a readable safetensors file ({e}); delete it and rerun "
                         "`avfusion cache` with the same settings to recompute it") from None
    if meta.get("format") != CACHE_FORMAT:
        raise ValueError(f"{path}: not an avfusion feature file (metadata format {meta.get('format')!r})")
    for k in ("timestamps", "face_mask", "audio_valid"):
        if k not in keys:
            raise ValueError(f"{path}: missing tensor {k!r}")
    feats = VideoFeatures(
        video_id=meta.get("video_id", path.stem),
        timestamps=get["timestamps"].numpy().astype(np.float64),
        face_mask=get["face_mask"].numpy().astype(bool),
        fps=float(meta.get("fps", "nan")),
        video=get.get("video"),
        audio=get.get("audio"),
        audio_valid=bool(get["audio_valid"].reshape(-1)[0]),
        speech=get["speech"].numpy().astype(np.float32) if "speech" in get else None,
        labels=get["labels"].numpy() if "labels" in get else None,
        label_mask=get["label_mask"].numpy().astype(bool) if "label_mask" in get else None,
        meta={k: v for k, v in meta.items() if k not in ("format", "version", "video_id", "fps")},
        stored=tuple(k for k in ("video", "audio") if k in keys),
    )
    if arrays_only:
        if not feats.stored:
            raise ValueError(f"{path}: neither 'video' nor 'audio' features")
        n = feats.n_frames
        for name, arr in (("face_mask", feats.face_mask), ("labels", feats.labels), ("speech", feats.speech)):
            if arr is not None and arr.shape[0] != n:
                raise ValueError(f"{path}: '{name}' has {arr.shape[0]} frames, timestamps have {n}")
    else:
        feats.check(str(path))
    return feats


# ------------------------------------------------------------------------------------------------
# The manifest


def manifest_path(cache_dir: PathLike) -> Path:
    return Path(cache_dir) / MANIFEST_NAME


def read_manifest(cache_dir: PathLike) -> dict[str, Any]:
    """The cache's manifest.json (raises FileNotFoundError naming the folder when there is none)."""
    path = manifest_path(cache_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {cache_dir} is not a feature cache (write one with "
            "`avfusion cache`)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if data.get("format") != CACHE_FORMAT:
        raise ValueError(f"{path}: not an avfusion feature-cache manifest (format {data.get('format')!r})")
    if int(data.get("version", -1)) > CACHE_VERSION:
        raise ValueError(f"{path}: cache format version {data.get('version')} is newer than this avfusion "
                         f"reads ({CACHE_VERSION}); upgrade avfusion")
    return data


def write_manifest(cache_dir: PathLike, manifest: Mapping[str, Any]) -> Path:
    """Write manifest.json atomically."""
    path = manifest_path(cache_dir)
    atomic_write_bytes(path, (json.dumps(manifest, indent=1, sort_keys=False) + "\n").encode())
    return path


# ------------------------------------------------------------------------------------------------
# Dataset


def _record_from_features(feats: VideoFeatures, path: Path) -> VideoRecord:
    n = feats.n_frames
    if feats.labels is not None:
        labels, mask = feats.labels.astype(np.float32), feats.label_mask
    else:
        labels, mask = np.full((n, 2), np.nan, np.float32), np.zeros(n, dtype=bool)
    fps = feats.fps
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"{path}: fps {fps} in the metadata is not a positive number")
    return VideoRecord(
        video_id=feats.video_id, source=str(path), n_frames=n, fps=fps, labels=labels,
        label_mask=mask, actor=feats.meta.get("actor") or None, face_mode="full",
        face_mask=feats.face_mask, group=feats.meta.get("group") or None,
        timestamps=feats.timestamps, dataset=feats.meta.get("dataset", ""),
        meta={"features": str(path), "audio_valid": feats.audio_valid},
    )


class FeatureDataset(Dataset):
    """Windows of T frames over a feature cache, with the windows, masks and keys of ClipDataset.

    Args:
        cache_dir: a folder written by ``avfusion cache``.
        clip_len: frames per window (T).
        stride: frames between window starts (default ``clip_len``: every frame exactly once).
        video_ids: use only these videos (a split part); default every video of the manifest.
            A listed video without its file is an error naming the video (the cache is incomplete).
        target_fps, drop_unlabelled: as for :class:`~avfusion.data.clips.ClipDataset`.
        dtype: features are returned in this dtype (the cache stores float16 or float32).
        max_open: feature files kept open per worker (memory-mapped; least recently used closed).

    ``records`` (one :class:`VideoRecord` per video, source = its feature file) carry labels,
    face masks, timestamps, actor and group, so splits and stitching work as for raw clips.
    Audio features of a window are the cache's, which were computed over the cache's own windows
    (``manifest["window"]``): they equal the raw-clip path's exactly where windows coincide.
    """

    def __init__(
        self,
        cache_dir: PathLike,
        clip_len: int,
        stride: Optional[int] = None,
        video_ids: Optional[Sequence[str]] = None,
        target_fps: Optional[float] = None,
        drop_unlabelled: bool = False,
        dtype: torch.dtype = torch.float32,
        max_open: int = 16,
        speech: Optional[Any] = None,
    ) -> None:
        from .speech import speech_frames

        self.cache_dir = Path(cache_dir)
        self.manifest = read_manifest(self.cache_dir)
        files: dict[str, str] = dict(self.manifest.get("videos", {}))
        ids = sorted(files) if video_ids is None else [str(v) for v in video_ids]
        unknown = [v for v in ids if v not in files]
        if unknown:
            raise DataKeyError(f"{self.cache_dir}: video id(s) not in the cache manifest: {unknown[:10]} "
                           f"({len(unknown)} in all); cache them with `avfusion cache`")
        self.paths = [self.cache_dir / files[v] for v in ids]
        absent = [v for v, p in zip(ids, self.paths) if not p.is_file()]
        if absent:
            raise FileNotFoundError(
                f"{self.cache_dir}: {len(absent)} video(s) listed in the manifest have no feature file "
                f"yet (e.g. {absent[:5]}): the caching run did not finish; rerun `avfusion cache` "
                "with the same arguments to complete it")
        self.records: list[VideoRecord] = []
        self.audio_valid: list[bool] = []
        # Per video: speech probability and the frames whose audio counts (the speech rule's).
        self.speech: list[np.ndarray] = []
        self.audio_frames: list[np.ndarray] = []
        self.speech_rule = speech
        has: set[str] = set()
        for v, p in zip(ids, self.paths):
            feats = load_video_features(p, arrays_only=True)
            if feats.video_id != v:
                raise ValueError(f"{p}: holds video {feats.video_id!r}, the manifest says {v!r}")
            self.records.append(_record_from_features(feats, p))
            self.audio_valid.append(feats.audio_valid)
            n = feats.n_frames
            probs = feats.speech
            if speech is not None and "audio" in feats.stored and feats.audio_valid and probs is None:
                raise ValueError(f"{p}: no speech probabilities in this cache (written before avfusion 0.3); "
                                 "cache again into a new folder, or train with data.speech=off")
            if probs is None or not feats.audio_valid or speech is None:
                # As ClipDataset gives them: 1 with speech detection off, 0 without a track.
                probs = np.full(n, 1.0 if feats.audio_valid else 0.0, dtype=np.float32)
            said = speech_frames(probs, feats.fps, speech) if speech is not None else np.ones(n, dtype=bool)
            self.speech.append(probs.astype(np.float32))
            self.audio_frames.append(said & bool(feats.audio_valid))
            has.update(feats.stored)
        self.has_video = "video" in has
        self.has_audio = "audio" in has
        self.video_dim = self.manifest.get("video_dim") if self.has_video else None
        self.audio_dim = self.manifest.get("audio_dim") if self.has_audio else None
        self.clip_len = int(clip_len)
        self.target_fps = target_fps
        self.windows = make_windows(self.records, self.clip_len, stride, target_fps, drop_unlabelled)
        self.dtype = dtype
        self.max_open = max(1, int(max_open))
        self._pid: Optional[int] = None
        self._open: OrderedDict[int, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self.windows)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_open"], state["_pid"] = OrderedDict(), None
        return state

    def _handle(self, r: int) -> Any:
        from safetensors import safe_open

        if self._pid != os.getpid():
            self._open, self._pid = OrderedDict(), os.getpid()
        if r in self._open:
            self._open.move_to_end(r)
            return self._open[r]
        h = safe_open(str(self.paths[r]), framework="pt")
        self._open[r] = h
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return h

    def _rows(self, r: int, key: str, ridx: np.ndarray) -> torch.Tensor:
        """Rows ``ridx`` of tensor ``key`` of video ``r``, reading only the span they cover."""
        h = self._handle(r)
        if key not in h.keys():
            raise DataKeyError(f"{self.paths[r]}: no {key!r} features in this file")
        lo, hi = int(ridx.min()), int(ridx.max()) + 1
        block = h.get_slice(key)[lo:hi]
        return block[torch.from_numpy(ridx - lo)].to(self.dtype)

    def __getitem__(self, i: int) -> dict[str, Any]:
        w = self.windows[i]
        rec = self.records[w.record]
        T = self.clip_len
        idx = w.indices
        real = idx >= 0
        ridx = idx[real]
        out: dict[str, Any] = {}
        for key, dim, name in ((("video", self.video_dim, "video_feats")), ("audio", self.audio_dim, "audio_feats")):
            if dim is None:
                continue
            rows = self._rows(w.record, key, ridx)
            full = torch.zeros((T, rows.shape[1]), dtype=self.dtype)
            full[: len(ridx)] = rows
            out[name] = full
        # Times and masks exactly as ClipDataset builds them (padding continues at the frame period).
        timestamps = frame_times(rec.frame_times(), idx, 1.0 / (self.target_fps or rec.fps))
        labels = np.zeros((T, 2), dtype=np.float32)
        mask = np.zeros(T, dtype=bool)
        mask[real] = rec.label_mask[ridx]
        labels[real] = np.nan_to_num(rec.labels[ridx], nan=0.0)
        face_mask = np.zeros(T, dtype=bool)
        face_mask[real] = rec.face_mask[ridx]
        speech, audio_frames = np.zeros(T, dtype=np.float32), np.zeros(T, dtype=bool)
        speech[real] = self.speech[w.record][ridx]
        audio_frames[real] = self.audio_frames[w.record][ridx]
        out.update({
            "valence": torch.from_numpy(labels[:, 0].copy()),
            "arousal": torch.from_numpy(labels[:, 1].copy()),
            "mask": torch.from_numpy(mask),
            "face_mask": torch.from_numpy(face_mask),
            "audio_valid": bool(self.audio_valid[w.record]),
            "audio_frames": torch.from_numpy(audio_frames),
            "speech": torch.from_numpy(speech),
            "video_id": rec.video_id,
            "frame_indices": torch.from_numpy(idx.copy()),
            "timestamps": torch.from_numpy(timestamps.astype(np.float32)),
        })
        return out


def collate_features(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack :class:`FeatureDataset` items into a batch (keys in :data:`FEATURE_BATCH_KEYS`)."""
    if not items:
        raise ValueError("collate_features: empty batch")
    batch: dict[str, Any] = {}
    for k in ("video_feats", "audio_feats", "valence", "arousal", "mask", "face_mask", "frame_indices",
              "timestamps", "audio_frames", "speech"):
        if k in items[0]:
            batch[k] = torch.stack([it[k] for it in items])
    batch["audio_valid"] = torch.tensor([bool(it["audio_valid"]) for it in items], dtype=torch.bool)
    batch["video_id"] = [str(it["video_id"]) for it in items]
    return {k: batch[k] for k in FEATURE_BATCH_KEYS if k in batch}


__all__ = [
    "FeatureDataset", "collate_features", "VideoFeatures", "save_video_features", "load_video_features",
    "encode_video_features", "read_manifest", "write_manifest", "video_filename", "atomic_write_bytes",
    "remove_stale_temporaries", "FEATURE_BATCH_KEYS", "MANIFEST_NAME", "ENCODERS_NAME", "CACHE_FORMAT",
    "CACHE_VERSION",
]
