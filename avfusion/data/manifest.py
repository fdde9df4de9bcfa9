"""User data through a manifest: one CSV row per video, one label CSV per video.

Manifest (CSV with a header)::

    video_id,video_path,labels_path[,actor,frames_dir,audio_path,fps,face_mode]

* ``video_path``: a video file; frame count, fps and per-frame timestamps are read from it, and its
  audio track is used unless ``audio_path`` says otherwise.
* ``frames_dir`` (instead of ``video_path``): a folder of frame images placed by the number in their
  names (a number the folder skips is a masked frame, one warning); then the ``fps`` column is
  required, and audio comes only from ``audio_path``.
* ``labels_path``: CSV with columns ``frame,valence,arousal``; ``frame`` is the 0-based frame index,
  values lie in [-1, 1], an empty value or ``-5`` means no label. Frames the file does not list are
  unlabelled. May be empty (prediction only: every frame unlabelled).
* ``face_mode`` (per row; else the loader's argument): ``detect``, ``precropped``, ``full``.

Relative paths are relative to the manifest's folder.
"""
from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from .records import DataKeyError, FACE_MODES, VideoRecord, check_unique_ids

REQUIRED = ("video_id", "video_path", "labels_path")
OPTIONAL = ("actor", "frames_dir", "audio_path", "fps", "face_mode")
MISSING_LABEL = -5.0  # the Aff-Wild2 convention, shared by the manifest format


def probe_video(path: str | Path) -> tuple[int, float, np.ndarray]:
    """Frame count, nominal fps and per-frame start times ``(N,)`` of a video file.

    Opens the file with decord and closes it again, so no reader is left behind for DataLoader
    workers to inherit.
    """
    from .video import VideoFile

    vf = VideoFile(path)
    try:
        return len(vf), vf.fps, vf.timestamps
    finally:
        vf.close()


def probe_audio_path(path: Optional[str | Path], where: str) -> Optional[str]:
    """``path`` if it exists and has an audio stream, else None (no audio stream is not an error)."""
    if path is None:
        return None
    from .audio import has_audio

    if not Path(path).is_file():
        raise FileNotFoundError(f"{where}: audio file not found: {path}")
    return str(path) if has_audio(path) else None


def read_label_csv(path: str | Path, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """A ``frame,valence,arousal`` file -> labels ``(N, 2)`` (NaN where missing) and mask ``(N,)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    labels = np.full((n_frames, 2), np.nan, dtype=np.float32)
    seen = np.zeros(n_frames, dtype=bool)
    nan_rows = 0
    with open(path, newline="", encoding="utf-8-sig") as f:  # Excel writes a BOM
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        if not {"frame", "valence", "arousal"} <= set(cols):
            raise ValueError(f"{path}: header must name columns frame,valence,arousal (found {cols})")
        for line, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            try:
                k = int(row["frame"])
            except ValueError:
                raise ValueError(f"{path}, line {line}: frame {row['frame']!r} is not an integer") from None
            if not 0 <= k < n_frames:
                raise ValueError(
                    f"{path}, line {line}: frame {k} outside the video's {n_frames} frames "
                    f"(0 … {n_frames - 1}); the labels do not belong to this video or are 1-based")
            if seen[k]:
                raise ValueError(f"{path}, line {line}: frame {k} is labelled twice")
            seen[k] = True
            vals = []
            for name in ("valence", "arousal"):
                s = row[name]
                try:
                    vals.append(math.nan if s == "" else float(s))
                except ValueError:
                    raise ValueError(f"{path}, line {line}: {name} {s!r} is not a number") from None
            if any(v == MISSING_LABEL for v in vals) or (all(math.isnan(v) for v in vals)):
                continue
            if any(math.isnan(v) for v in vals):
                # One value given, the other not (or the literal "nan"): an unlabelled frame.
                nan_rows += 1
                continue
            if any(abs(v) > 1.0 for v in vals):
                raise ValueError(
                    f"{path}, line {line}: valence/arousal {vals} outside [-1, 1] (and not the "
                    f"missing-label marker {MISSING_LABEL:g})")
            labels[k] = vals
    if nan_rows:
        warnings.warn(f"{path}: {nan_rows} row(s) with only one of valence/arousal (or NaN); "
                      "those frames are masked", stacklevel=2)
    mask = np.isfinite(labels).all(axis=1)
    if not seen.any():
        warnings.warn(f"{path}: no label row; the video is scored nowhere", stacklevel=2)
    elif not mask.any():
        warnings.warn(f"{path}: no labelled frame at all (every row is unlabelled); the video is scored "
                      "nowhere and only gives context to its windows", stacklevel=2)
    else:
        last = int(np.flatnonzero(seen)[-1])
        # Aff-Wild2's tolerance: a file may stop up to 2 frames short of the video.
        if last < n_frames - 3:
            warnings.warn(f"{path}: rows stop at frame {last} of the video's {n_frames} frames; frames "
                          f"{last + 1}-{n_frames - 1} are unlabelled (is it the label file of this video?)",
                          stacklevel=2)
    return labels, mask


def load_manifest(path: str | Path, face_mode: str = "detect",
                  ids: Optional[list[str]] = None) -> list[VideoRecord]:
    """Records for every row of a manifest CSV (format in the module docstring).

    Args:
        path: the manifest CSV.
        face_mode: how faces are found when the row has no ``face_mode`` column value.
        ids: load only these video ids.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    base = path.parent
    wanted = None if ids is None else {str(i) for i in ids}

    def resolve(p: str) -> Optional[Path]:
        if not p:
            return None
        q = Path(p).expanduser()
        return q if q.is_absolute() else base / q

    records = []
    with open(path, newline="", encoding="utf-8-sig") as f:  # Excel writes a BOM
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED if c not in cols]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; the header must include "
                             f"{','.join(REQUIRED)} (optional: {','.join(OPTIONAL)})")
        unknown = [c for c in cols if c not in REQUIRED + OPTIONAL]
        if unknown:
            raise ValueError(f"{path}: unknown column(s) {unknown}; known: {list(REQUIRED + OPTIONAL)}")
        line_count = 0
        for line, row in enumerate(reader, start=2):
            line_count += 1
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            vid = row["video_id"]
            where = f"{path}, line {line}"
            if not vid:
                raise ValueError(f"{where}: empty video_id")
            if wanted is not None and vid not in wanted:
                continue
            video, frames_dir = resolve(row["video_path"]), resolve(row.get("frames_dir", ""))
            mode = row.get("face_mode") or face_mode
            if mode not in FACE_MODES or mode == "landmarks":
                raise ValueError(f"{where}: face_mode {mode!r} must be one of detect, precropped, full")
            fps_text = row.get("fps", "")
            try:
                fps = float(fps_text) if fps_text else None
            except ValueError:
                raise ValueError(f"{where}: fps {fps_text!r} is not a number") from None
            audio = resolve(row.get("audio_path", ""))
            if (video is None) == (frames_dir is None):
                raise ValueError(f"{where} ({vid}): give exactly one of video_path and frames_dir")
            if video is not None:
                if not video.exists() and not video.is_symlink():
                    raise FileNotFoundError(f"{where} ({vid}): video file not found: {video}")
                from .video import VideoDecodeError, check_video_path

                try:
                    check_video_path(video)
                except (OSError, VideoDecodeError) as e:
                    raise type(e)(f"{where} ({vid}): video_path {e}") from None
                n, video_fps, timestamps = probe_video(video)
                if fps is not None and abs(fps - video_fps) > 0.01 * video_fps:
                    warnings.warn(f"{where} ({vid}): fps column says {fps:g} but {video} declares "
                                  f"{video_fps:g}; using the video's timestamps", stacklevel=2)
                source: object = str(video)
                fps = video_fps
                audio_path = probe_audio_path(audio or video, where)
            else:
                if fps is None or not fps > 0:
                    raise ValueError(f"{where} ({vid}): a frames_dir row needs a positive fps column")
                from .video import numbered_frame_files

                if not frames_dir.is_dir():
                    raise FileNotFoundError(f"{where} ({vid}): frames_dir {frames_dir}: "
                                            + ("not a folder" if frames_dir.exists() else "folder not found"))
                try:
                    files = numbered_frame_files(frames_dir)
                except ValueError as e:
                    raise ValueError(f"{where} ({vid}): {e}") from None
                if not files:
                    raise FileNotFoundError(f"{where} ({vid}): no frame images in {frames_dir}")
                n, timestamps, source = len(files), None, [str(p) if p is not None else None for p in files]
                audio_path = probe_audio_path(audio, where)
            labels_file = resolve(row["labels_path"])
            if labels_file is None:
                labels, mask = np.full((n, 2), np.nan, np.float32), np.zeros(n, dtype=bool)
            else:
                labels, mask = read_label_csv(labels_file, n)
            # Rows of one video file (one per person, as Aff-Wild2's _left/_right) share a group:
            # a split keeps them on one side.
            group = str((video if video is not None else frames_dir).resolve())
            records.append(VideoRecord(
                video_id=vid, source=source, n_frames=n, fps=fps, labels=labels, label_mask=mask,
                actor=row.get("actor") or None, audio_path=audio_path, face_mode=mode,
                timestamps=timestamps, dataset="manifest", group=group,
                meta={"manifest": str(path), "labels_path": None if labels_file is None else str(labels_file)},
            ))
    if line_count == 0:
        raise ValueError(f"{path}: a header and no rows; add one row per video "
                         f"({','.join(REQUIRED)}, ...)")
    if wanted is not None:
        absent = wanted - {r.video_id for r in records}
        if absent:
            raise DataKeyError(f"{path}: video id(s) not in the manifest: {sorted(absent)[:10]}")
    check_unique_ids(records, f"manifest {path}")
    return records


__all__ = ["load_manifest", "read_label_csv", "probe_video"]
