"""Face tracks across the frames of a video: who is who, so the face being read never switches
from one person to another.

:class:`FaceTracker` takes every face a detector finds in each frame, in frame order, and links
each one to the track it continues: greedy one-to-one matching on box overlap (IoU), with the
distance between box centres as a fallback for fast motion or a frame or two without a detection.
A face that matches no live track starts a new one; a track not seen for ``max_gap`` frames ends
(a person who comes back later is a new track). Two people side by side never match each other:
their boxes do not overlap and their centres are a face apart.

:func:`main_track` picks the track to read in ``--faces main``: the one seen in the most frames,
ties broken by the larger mean box. :class:`TrackBoxDetector` turns a track back into per-frame
"detections" so that :class:`~avfusion.data.faces.FaceCropper` crops (margin, smoothing, padding)
exactly that person's face.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from .faces import Detection, FaceDetector, iou  # noqa: F401 (iou: part of this module's API)


@dataclass
class FaceTrack:
    """One person's face over time: the frames it was detected in, with box ``(x, y, w, h)`` and score."""

    id: int
    frames: list[int] = field(default_factory=list)
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    def add(self, frame: int, det: Detection) -> None:
        self.frames.append(int(frame))
        self.boxes.append(tuple(float(v) for v in det.box))  # type: ignore[arg-type]
        self.scores.append(float(det.score))

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    @property
    def last_frame(self) -> int:
        return self.frames[-1]

    @property
    def mean_area(self) -> float:
        b = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        return float((b[:, 2] * b[:, 3]).mean()) if len(b) else 0.0

    def per_frame(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Boxes ``(n, 4)`` x, y, w, h and scores ``(n,)`` on every frame of the video; NaN where
        this track was not detected."""
        boxes = np.full((n, 4), np.nan)
        scores = np.full(n, np.nan)
        if self.frames:
            boxes[self.frames] = np.asarray(self.boxes)
            scores[self.frames] = self.scores
        return boxes, scores

    def corners(self, n: int) -> np.ndarray:
        """``(n, 2, 2)`` top-left and bottom-right corner per frame (NaN where not detected): the
        "landmarks" :class:`TrackBoxDetector` reads."""
        boxes, _ = self.per_frame(n)
        return np.stack([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)




class FaceTracker:
    """Links the faces of consecutive frames into tracks (see the module doc).

    Args:
        iou_threshold: a detection continues a track when its box overlaps the track's last box by
            at least this IoU ...
        max_distance: ... or, failing that, when its centre lies within this many face sizes (the
            larger side of the track's last box) of the last box's centre.
        max_gap: frames a track may go undetected and still be continued.
        min_score: detections scoring below this are ignored.
    """

    def __init__(self, iou_threshold: float = 0.3, max_distance: float = 0.5, max_gap: int = 25,
                 min_score: float = 0.0) -> None:
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if max_distance < 0 or max_gap < 0:
            raise ValueError("max_distance and max_gap must be >= 0")
        self.iou_threshold = float(iou_threshold)
        self.max_distance = float(max_distance)
        self.max_gap = int(max_gap)
        self.min_score = float(min_score)
        self._tracks: list[FaceTrack] = []
        self._last = -1

    def update(self, frame: int, detections: Sequence[Detection]) -> list[int]:
        """Add the faces of ``frame`` (frames in increasing order); returns each detection's track
        id (-1: ignored, below ``min_score`` or an empty box)."""
        if frame <= self._last:
            raise ValueError(f"frames must come in increasing order ({frame} after {self._last})")
        self._last = frame
        ids = [-1] * len(detections)
        usable = [i for i, d in enumerate(detections)
                  if d.score >= self.min_score and d.box[2] > 0 and d.box[3] > 0]
        live = [t for t in self._tracks if frame - t.last_frame <= self.max_gap + 1]
        pairs = []  # (priority, detection, track): overlap first, then nearness
        for i in usable:
            box = detections[i].box
            cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
            for k, t in enumerate(live):
                last = t.boxes[-1]
                overlap = iou(box, last)
                if overlap >= self.iou_threshold:
                    pairs.append((1.0 + overlap, i, k))
                    continue
                size = max(last[2], last[3])
                d = np.hypot(cx - (last[0] + last[2] / 2), cy - (last[1] + last[3] / 2))
                if size > 0 and d <= self.max_distance * size:
                    pairs.append((1.0 - d / (self.max_distance * size + 1e-9), i, k))
        pairs.sort(key=lambda p: -p[0])
        taken_d: set[int] = set()
        taken_t: set[int] = set()
        for _, i, k in pairs:
            if i in taken_d or k in taken_t:
                continue
            taken_d.add(i)
            taken_t.add(k)
            live[k].add(frame, detections[i])
            ids[i] = live[k].id
        for i in usable:
            if i not in taken_d:
                t = FaceTrack(len(self._tracks))
                t.add(frame, detections[i])
                self._tracks.append(t)
                ids[i] = t.id
        return ids

    @property
    def tracks(self) -> list[FaceTrack]:
        """Every track so far, in order of appearance (ids 0, 1, ...)."""
        return list(self._tracks)


def main_track(tracks: Sequence[FaceTrack]) -> Optional[FaceTrack]:
    """The track seen in the most frames (ties: the larger mean box, then the earlier); None without tracks."""
    if not tracks:
        return None
    return max(tracks, key=lambda t: (t.n_frames, t.mean_area, -t.id))


class TrackBoxDetector(FaceDetector):
    """Replays one track's boxes as detections: frame ``t``'s "landmarks" are its box corners
    ``(2, 2)`` (:meth:`FaceTrack.corners`; NaN: not in this frame). ``whole_frame``: the boxes are
    whole frames (the ``full`` backend), and the cropper adds no margin."""

    name = "track"

    def __init__(self, whole_frame: bool = False) -> None:
        self.whole_frame = bool(whole_frame)

    def detect(self, frame: np.ndarray, landmarks: Optional[np.ndarray] = None) -> list[Detection]:
        if landmarks is None:
            raise ValueError("TrackBoxDetector needs the track's box corners as landmarks (2, 2)")
        pts = np.asarray(landmarks, dtype=np.float64)
        if pts.shape != (2, 2):
            raise ValueError(f"track box corners must be (2, 2), got {pts.shape}")
        if not np.isfinite(pts).all():
            return []
        (x0, y0), (x1, y1) = pts
        return [Detection((float(x0), float(y0), float(x1 - x0), float(y1 - y0)), 1.0)]


__all__ = ["FaceTrack", "FaceTracker", "TrackBoxDetector", "iou", "main_track"]
