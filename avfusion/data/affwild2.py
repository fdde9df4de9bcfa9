"""Aff-Wild2 (ABAW valence/arousal track): annotation txt files, cropped_aligned faces, raw videos.

Layout (docs/FORMATS.md); both annotation releases are found under ``root``::

    …/VA_Estimation_Challenge/Train_Set/<name>.txt  and  …/Validation_Set/<name>.txt
    …/annotations/VA_Set/Training_Set/<name>.txt    and  …/Validation_Set/<name>.txt   (2020)
    …/cropped_aligned/<name>/00001.jpg, 00002.jpg, …      (1-based; gaps = no face)
    …/<raw video folder(s)>/<name>.mp4 | .avi              (``_left``/``_right`` stripped)

A txt file has the header ``valence,arousal`` and one ``v,a`` line per video frame; ``-5`` marks a
frame without a label (masked). Line ``k`` after the header is frame ``k - 1`` (0-based) and the
face image ``k`` (1-based). A frame without an image keeps its label but has ``face_mask`` False.

Frame rates differ per video and are read from the raw video (never assumed). Without a raw video
the loader says so and needs an explicit ``fps``; such a record has no audio.

Count policy. Annotation files and decoders sometimes disagree by a frame or two about how many
frames a video has (the last frame, or a container's frame count versus what decodes). Up to
``count_tolerance`` frames of difference (default 2) is accepted with one warning per file: the
video's frame count wins, extra label lines are dropped, missing ones are unlabelled. A larger
difference is an error naming the file and both counts: the labels would not line up with frames.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from .manifest import probe_audio_path, probe_video
from .records import VideoRecord, check_unique_ids, mask_labels, select_by_id

MISSING_LABEL = -5.0
VIDEO_EXTS = (".mp4", ".avi")
DEFAULT_COUNT_TOLERANCE = 2
# (release, subset) -> folder path endings that hold the txt files.
ANNOTATION_DIRS = {
    "train": (("VA_Estimation_Challenge", "Train_Set"), ("VA_Set", "Training_Set")),
    "val": (("VA_Estimation_Challenge", "Validation_Set"), ("VA_Set", "Validation_Set")),
}
_NOT_VIDEO_DIRS = {"cropped_aligned", "cropped", "annotations", "VA_Estimation_Challenge"}
_SIDE = re.compile(r"_(left|right)$")


def raw_video_name(name: str) -> str:
    """``"10-60-1280x720_right"`` -> ``"10-60-1280x720"``: two people share one raw video."""
    return _SIDE.sub("", name)


def _shallow_glob(root: Path, pattern: str, depth: int = 2) -> list[Path]:
    """Folders matching ``pattern`` at most ``depth`` levels below ``root``; never walks into the
    millions of files of cropped_aligned the way ``rglob`` would."""
    out = []
    for level in range(depth + 1):
        out += sorted(d for d in root.glob("*/" * level + pattern) if d.is_dir())
    return out


def find_annotation_dir(root: str | Path, subset: str) -> Path:
    """The folder of ``subset`` (``"train"`` or ``"val"``) txt files under ``root``."""
    root = Path(root)
    if subset not in ANNOTATION_DIRS:
        raise ValueError(f"subset must be 'train' or 'val', got {subset!r}")
    found = []
    for parent, child in ANNOTATION_DIRS[subset]:
        for d in _shallow_glob(root, f"{parent}/{child}"):
            if d not in found:
                found.append(d)
    if not found:
        tried = " or ".join(f"…/{p}/{c}/" for p, c in ANNOTATION_DIRS[subset])
        raise FileNotFoundError(f"{root}: no Aff-Wild2 {subset} annotations found (looked for {tried})")
    if len(found) > 1:
        raise ValueError(f"{root}: several {subset} annotation folders ({[str(d) for d in found]}); "
                         "pass annotations_dir= to choose one")
    return found[0]


def read_va_txt(path: str | Path) -> np.ndarray:
    """Raw ``(L, 2)`` float32 values of an annotation file (``-5`` kept; header checked)."""
    path = Path(path)
    with open(path) as f:
        lines = f.read().splitlines()
    if not lines or lines[0].strip().replace(" ", "").lower() != "valence,arousal":
        got = lines[0].strip() if lines else "(empty file)"
        raise ValueError(f"{path}: first line must be the header 'valence,arousal', got {got!r}")
    rows = []
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            if any(x.strip() for x in lines[i:]):
                raise ValueError(f"{path}, line {i}: empty line inside the annotations")
            break
        parts = line.split(",")
        if len(parts) != 2:
            raise ValueError(f"{path}, line {i}: expected 'valence,arousal', got {line!r}")
        try:
            rows.append((float(parts[0]), float(parts[1])))
        except ValueError:
            raise ValueError(f"{path}, line {i}: not two numbers: {line!r}") from None
    if not rows:
        raise ValueError(f"{path}: no annotation lines after the header")
    values = np.asarray(rows, dtype=np.float32)
    infinite = np.isinf(values)  # NaN is masked later with a warning; inf is a broken file
    if infinite.any():
        i = int(np.flatnonzero(infinite.any(axis=1))[0])
        raise ValueError(f"{path}, line {i + 2}: {lines[i + 1].strip()!r} is infinite; labels are in "
                         f"[-1, 1] (unlabelled frames are {MISSING_LABEL:g})")
    bad = np.isfinite(values) & (values != MISSING_LABEL) & (np.abs(values) > 1.0)
    if bad.any():
        i = int(np.flatnonzero(bad.any(axis=1))[0])
        raise ValueError(f"{path}, line {i + 2}: {values[i].tolist()} outside [-1, 1] and not "
                         f"the missing-label marker {MISSING_LABEL:g}")
    return values


def cropped_frames(folder: Path) -> dict[int, Path]:
    """1-based image number -> path of a cropped_aligned folder."""
    out: dict[int, Path] = {}
    for p in folder.iterdir():
        if p.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            continue
        if not p.stem.isdigit():
            raise ValueError(f"{p}: cropped_aligned images must be numbered (00001.jpg, …)")
        k = int(p.stem)
        if k < 1:
            raise ValueError(f"{p}: cropped_aligned numbering is 1-based; found image {p.name}")
        if k in out:
            raise ValueError(f"{folder}: two images for frame {k} ({out[k].name}, {p.name})")
        out[k] = p
    return out


def index_videos(dirs: Iterable[Path]) -> dict[str, Path]:
    """Raw video stem -> path, over every ``.mp4``/``.avi`` under ``dirs`` (cropped_aligned and the
    annotation folders are not walked: they hold only images and txt files)."""
    out: dict[str, Path] = {}
    for d in dirs:
        for here, subdirs, files in os.walk(d):
            subdirs[:] = sorted(s for s in subdirs if s not in _NOT_VIDEO_DIRS)
            for fname in sorted(files):
                p = Path(here) / fname
                if p.suffix.lower() in VIDEO_EXTS:
                    if p.stem in out and out[p.stem] != p:
                        raise ValueError(f"two raw videos named {p.stem}: {out[p.stem]} and {p}")
                    out[p.stem] = p
    return out


def load_affwild2(
    root: str | Path,
    subset: str = "train",
    annotations_dir: Optional[str | Path] = None,
    cropped_dir: Optional[str | Path] = None,
    video_dirs: Optional[list[str | Path]] = None,
    frames: str = "cropped",
    fps: Optional[float] = None,
    count_tolerance: int = DEFAULT_COUNT_TOLERANCE,
    ids: Optional[list[str]] = None,
) -> list[VideoRecord]:
    """Records for one Aff-Wild2 subset (format and count policy in the module docstring).

    Args:
        root: the dataset folder (annotations, ``cropped_aligned`` and raw videos somewhere below).
        subset: ``"train"`` or ``"val"`` (the test labels are not public).
        annotations_dir: the txt folder, if not found under ``root``.
        cropped_dir: the ``cropped_aligned`` folder (default: the one under ``root``).
        video_dirs: folders searched for raw videos (default: ``root``).
        frames: ``"cropped"`` (cropped_aligned images, ``face_mode="precropped"``) or ``"video"``
            (frames of the raw video, ``face_mode="detect"``).
        fps: frame rate for videos without a raw video file (an error without it).
        count_tolerance: accepted difference between label lines and video frames.
        ids: load only these names (txt stems).
    """
    root = Path(root)
    if frames not in ("cropped", "video"):
        raise ValueError(f"frames must be 'cropped' or 'video', got {frames!r}")
    ann = Path(annotations_dir) if annotations_dir is not None else find_annotation_dir(root, subset)
    txts = sorted(ann.glob("*.txt"))
    if not txts:
        raise FileNotFoundError(f"{ann}: no annotation .txt files")
    txts = select_by_id(txts, ids, str(ann), key="stem")
    if cropped_dir is None:
        candidates = _shallow_glob(root, "cropped_aligned")
        if len(candidates) > 1:
            raise ValueError(f"{root}: several cropped_aligned folders ({[str(d) for d in candidates]}); "
                             "pass cropped_dir= to choose one")
        crop_root = candidates[0] if candidates else None
    else:
        crop_root = Path(cropped_dir)
    if frames == "cropped" and (crop_root is None or not crop_root.is_dir()):
        raise FileNotFoundError(f"{root}: no cropped_aligned folder; set data.affwild2_frames=video to read the raw "
                                "videos with the face detector (Python: frames='video', or cropped_dir=)")
    videos = index_videos([Path(d) for d in (video_dirs or [root])])

    records = []
    for txt in txts:
        records.append(_load_one(txt, videos, crop_root, frames, fps, count_tolerance))
    check_unique_ids(records, f"Aff-Wild2 annotations {ann}")
    return records


def _load_one(txt: Path, videos: dict[str, Path], crop_root: Optional[Path], frames: str,
              fps: Optional[float], tol: int) -> VideoRecord:
    name = txt.stem
    raw_name = raw_video_name(name)
    raw = videos.get(name) or videos.get(raw_name)
    values = read_va_txt(txt)
    n_labels = len(values)

    if raw is not None:
        n, video_fps, timestamps = probe_video(raw)
        audio_path = probe_audio_path(raw, str(txt))
    else:
        if frames == "video":
            raise FileNotFoundError(f"{txt}: no raw video {raw_name}.mp4/.avi found; data.affwild2_frames=video "
                                    "needs it (or use the released crops: data.affwild2_frames=cropped)")
        if fps is None:
            raise FileNotFoundError(
                f"{txt}: no raw video {raw_name}.mp4/.avi found, so the frame rate is unknown "
                "(Aff-Wild2 rates differ per video); add the raw videos (video_dirs=) or pass fps=")
        warnings.warn(f"{txt}: no raw video {raw_name}.mp4/.avi: assuming fps={fps:g}, "
                      f"{n_labels} frames, and no audio", stacklevel=3)
        n, video_fps, timestamps, audio_path = n_labels, float(fps), None, None

    if n_labels != n:
        if abs(n_labels - n) > tol:
            raise ValueError(
                f"{txt}: {n_labels} label lines but the video {raw} has {n} frames (difference "
                f"{n_labels - n:+d}, more than the tolerated {tol}); labels would not line up with frames")
        warnings.warn(
            f"{txt}: {n_labels} label lines for {n} video frames (within the tolerance of {tol}): "
            + ("the extra lines are dropped" if n_labels > n else "the last frames are unlabelled"),
            stacklevel=3)
        fixed = np.full((n, 2), MISSING_LABEL, dtype=np.float32)
        m = min(n, n_labels)
        fixed[:m] = values[:m]
        values = fixed
    labels, label_mask = mask_labels(values, str(txt), missing=MISSING_LABEL)

    if frames == "video":
        # The raw video's frames all exist; the face detector decides which show a face.
        return VideoRecord(
            video_id=name, source=str(raw), n_frames=n, fps=video_fps, labels=labels,
            label_mask=label_mask, audio_path=audio_path, face_mode="detect", group=raw_name,
            timestamps=timestamps, dataset="affwild2",
            meta={"labels_path": str(txt), "raw_video": str(raw), "n_label_lines": n_labels})

    paths: list[Optional[str]] = [None] * n
    crop_folder = crop_root / name
    if crop_folder.is_dir():
        images = cropped_frames(crop_folder)
        beyond = sorted(k for k in images if k > n)
        if beyond:
            if beyond[-1] - n > tol:
                raise ValueError(
                    f"{crop_folder}: image {images[beyond[-1]].name} is beyond the {n} frames of "
                    f"{name} (labels: {txt}); the crops do not belong to this video")
            warnings.warn(f"{crop_folder}: {len(beyond)} image(s) beyond frame {n} ignored "
                          f"(within the count tolerance of {tol})", stacklevel=3)
        for k, p in images.items():
            if k <= n:
                paths[k - 1] = str(p)
    else:
        raise FileNotFoundError(f"{txt}: no cropped_aligned folder {crop_folder}")
    if not any(p is not None for p in paths):
        raise ValueError(f"{crop_folder}: no face image for any of the {n} frames of {name}")
    face_mask = np.array([p is not None for p in paths])
    return VideoRecord(
        video_id=name, source=paths, n_frames=n, fps=video_fps, labels=labels,
        label_mask=label_mask, actor=None, audio_path=audio_path, face_mode="precropped",
        face_mask=face_mask, group=raw_name, timestamps=timestamps, dataset="affwild2",
        meta={"labels_path": str(txt), "raw_video": None if raw is None else str(raw),
              "n_label_lines": n_labels},
    )


__all__ = ["load_affwild2", "read_va_txt", "raw_video_name", "find_annotation_dir", "MISSING_LABEL"]
