"""AFEW-VA: 600 film clips, per-frame valence/arousal in [-10, 10] and 68 landmarks per frame.

Two layouts are read, and told apart automatically (docs/FORMATS.md):

* the official zips: ``ROOT/01/ … ROOT/12/``, each holding clip folders ``01/001/``, ``01/002/``, …
* the flattened copy: ``ROOT/001/``, ``ROOT/002/``, … (``ROOT`` is often called ``AFEW-VA``).

A clip folder ``NNN/`` holds ``00000.png, 00001.png, …`` and ``NNN.json``::

    {"actor": "Name", "video_id": "001",
     "frames": {"00000": {"valence": -2, "arousal": 3, "landmarks": [[x, y], ... 68]}, ...}}

Labels are divided by 10 to lie in [-1, 1]. The frames are whole film frames; faces are cropped
from the landmarks (``face_mode="landmarks"``). AFEW-VA has no audio.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from .records import DataKeyError, VideoRecord, check_unique_ids, select_by_id

# AFEW-VA ships frames, not videos, and states no frame rate; its clips come from feature films,
# which AFEW distributes at 25 fps. Only time-based steps (resampling, audio) read this.
DEFAULT_FPS = 25.0
IMAGE_EXTS = (".png", ".jpg", ".jpeg")


def _is_clip_dir(d: Path) -> bool:
    return d.is_dir() and (d / f"{d.name}.json").is_file()


def find_clip_dirs(root: str | Path) -> tuple[list[Path], str]:
    """Clip folders under ``root`` and the layout found: ``"official"`` or ``"flat"``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"AFEW-VA root {root} is not a folder")
    children = sorted(p for p in root.iterdir() if p.is_dir())
    flat = [d for d in children if _is_clip_dir(d)]
    official = [c for d in children if not _is_clip_dir(d)
                for c in sorted(d.iterdir()) if _is_clip_dir(c)]
    if flat and official:
        raise ValueError(
            f"{root}: mixes the flattened layout (clip folders such as {flat[0].name}/ directly "
            f"under the root) with the official one (such as {official[0].parent.name}/"
            f"{official[0].name}/); point the loader at one of them")
    if flat:
        return flat, "flat"
    if official:
        return official, "official"
    # The flattened copy is usually unpacked as ROOT/AFEW-VA/NNN/.
    if len(children) == 1:
        return find_clip_dirs(children[0])
    raise FileNotFoundError(
        f"{root}: no AFEW-VA clip folders found (expected NNN/NNN.json directly under the root, or "
        "under 01/ ... 12/)")


def _require(d: dict, key: str, where: str) -> object:
    if key not in d:
        raise DataKeyError(f"{where}: missing key {key!r} (found {sorted(d)[:8]})")
    return d[key]


def load_clip(clip_dir: str | Path, fps: float = DEFAULT_FPS) -> VideoRecord:
    """Read one clip folder into a record (labels / 10, landmarks, actor)."""
    clip_dir = Path(clip_dir)
    jpath = clip_dir / f"{clip_dir.name}.json"
    try:
        with open(jpath) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{jpath}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{jpath}: expected a JSON object at the top level")
    frames = _require(data, "frames", str(jpath))
    if not isinstance(frames, dict) or not frames:
        raise ValueError(f"{jpath}: 'frames' must be a non-empty mapping of frame keys")
    actor = data.get("actor")
    if actor is None:
        _require(data, "actor", str(jpath))

    images = sorted(p for p in clip_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    stems = [p.stem for p in images]
    keys = sorted(frames)
    if len(keys) != len(stems):
        raise ValueError(
            f"{jpath}: {len(keys)} labelled frames but {len(stems)} frame images in {clip_dir}; "
            "labels and frames must match one to one")
    if keys != stems:
        bad = [(k, s) for k, s in zip(keys, stems) if k != s][:3]
        raise ValueError(
            f"{jpath}: frame keys do not match the image names in {clip_dir} "
            f"(first differences, key vs image: {bad})")
    n = len(keys)
    expected = [f"{i:05d}" for i in range(n)]
    if keys != expected:
        gap = next(k for k, e in zip(keys, expected) if k != e)
        raise ValueError(
            f"{jpath}: frame keys must be 00000 … {n - 1:05d} without gaps; found {gap!r} where "
            f"{expected[keys.index(gap)]!r} was expected")

    labels = np.full((n, 2), np.nan, dtype=np.float32)
    landmarks = np.zeros((n, 68, 2), dtype=np.float32)
    for i, k in enumerate(keys):
        fr = frames[k]
        where = f"{jpath}, frame {k}"
        if not isinstance(fr, dict):
            raise ValueError(f"{where}: expected an object with valence, arousal, landmarks")
        for j, name in enumerate(("valence", "arousal")):
            v = _require(fr, name, where)
            try:
                labels[i, j] = np.nan if v is None else float(v)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{where}: {name} {v!r} is not a number") from e
        lm = np.asarray(_require(fr, "landmarks", where), dtype=np.float32)
        if lm.shape != (68, 2):
            raise ValueError(f"{where}: landmarks must be 68 [x, y] points, got shape {lm.shape}")
        landmarks[i] = lm

    nan = np.isnan(labels).any(axis=1)
    if nan.any():
        warnings.warn(
            f"{jpath}: {int(nan.sum())} frame(s) with NaN/null valence or arousal (first: frame "
            f"{keys[int(np.flatnonzero(nan)[0])]}); they are masked", stacklevel=2)
    finite = labels[~nan]
    if finite.size and np.abs(finite).max() > 10:
        i = int(np.flatnonzero((np.abs(labels) > 10).any(axis=1))[0])
        raise ValueError(
            f"{jpath}, frame {keys[i]}: valence/arousal {labels[i].tolist()} outside [-10, 10]")
    if not np.isfinite(landmarks).all():
        bad = np.flatnonzero(~np.isfinite(landmarks).all(axis=(1, 2)))
        raise ValueError(f"{jpath}: non-finite landmarks at frame(s) {[keys[i] for i in bad[:5]]}")

    return VideoRecord(
        video_id=clip_dir.name,
        source=[str(p) for p in images],
        n_frames=n,
        fps=fps,
        labels=labels / 10.0,
        label_mask=~nan,
        actor=str(actor),
        audio_path=None,
        landmarks=landmarks,
        face_mode="landmarks",
        dataset="afew_va",
        meta={"json": str(jpath), "json_video_id": data.get("video_id")},
    )


def load_afew_va(root: str | Path, fps: float = DEFAULT_FPS, ids: Optional[list[str]] = None) -> list[VideoRecord]:
    """Every clip of an AFEW-VA tree (either layout), sorted by clip id.

    Args:
        root: the folder holding ``01/ … 12/`` (official) or ``001/ …`` (flattened).
        fps: frame rate to assume (the dataset states none; see :data:`DEFAULT_FPS`).
        ids: load only these clip ids.
    """
    dirs, _layout = find_clip_dirs(root)
    dirs = select_by_id(dirs, ids, str(root))
    records = [load_clip(d, fps=fps) for d in dirs]
    records.sort(key=lambda r: r.video_id)
    check_unique_ids(records, f"AFEW-VA tree {root}")
    return records


def afew_va_layout(root: str | Path) -> str:
    """``"official"`` (01/ … 12/) or ``"flat"`` (NNN/ directly under the root)."""
    return find_clip_dirs(root)[1]


__all__ = ["load_afew_va", "load_clip", "afew_va_layout", "find_clip_dirs", "DEFAULT_FPS"]
