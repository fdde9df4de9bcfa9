"""The one stitcher: window predictions back onto their videos' frames, with an explicit overlap
policy (``"error"``: the evaluation protocol, every frame predicted once; ``"mean"``: overlapping
windows averaged). Training validation, ``avfusion evaluate``, file prediction and caching all put
windows back through :class:`PredictionCollector`.

Each window is a small dict of numpy arrays (:func:`batch_rows` makes them from a batch and the
model's output; :meth:`PredictionCollector.add_window` from a prediction without labels), so
``accelerator.gather_for_metrics(rows, use_gather_object=True)`` can collect them across processes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

import numpy as np
import torch

OVERLAP_POLICIES = ("error", "mean")


@dataclass
class VideoPrediction:
    """Per-frame predictions and labels of one video (``N`` frames).

    pred: ``(N, 2)`` valence, arousal (NaN for frames no window covered); target: ``(N, 2)``
    (NaN where unlabelled); label_mask, face_mask: ``(N,)`` bool; timestamps: ``(N,)`` seconds;
    counts: ``(N,)`` how many windows predicted each frame.
    """

    video_id: str
    pred: np.ndarray
    target: np.ndarray
    label_mask: np.ndarray
    face_mask: np.ndarray
    timestamps: np.ndarray
    counts: np.ndarray
    # A gated fusion's heads: (N, 2, S) each head's prediction and (N, S) where it was present.
    heads: Optional[np.ndarray] = None
    heads_present: Optional[np.ndarray] = None
    # (N, S) frames from each frame to each head's sense in its window (inf: not in it; the
    # smallest over overlapping windows).
    heads_gap: Optional[np.ndarray] = None

    @property
    def n_frames(self) -> int:
        return int(self.pred.shape[0])

    @property
    def scored(self) -> np.ndarray:
        """``(N,)`` frames that enter the metrics: labelled and predicted."""
        return self.label_mask & (self.counts > 0)


def batch_rows(batch: Mapping[str, Any], out: Mapping[str, torch.Tensor]) -> list[dict[str, Any]]:
    """One small dict of numpy arrays per batch row (what :class:`PredictionCollector` takes).

    Rows are plain objects so that ``accelerator.gather_for_metrics(rows, use_gather_object=True)``
    can collect them across processes (video ids are strings, not tensors).
    """
    def np_(x: Any) -> np.ndarray:
        return x.detach().float().cpu().numpy() if x.dtype.is_floating_point else x.detach().cpu().numpy()

    pred = torch.stack([out["valence"], out["arousal"]], dim=-1)
    arrays = {
        "frame_indices": np_(batch["frame_indices"]),
        "pred": np_(pred),
        "target": np_(torch.stack([batch["valence"], batch["arousal"]], dim=-1)),
        "mask": np_(batch["mask"]).astype(bool),
        "face_mask": np_(batch["face_mask"]).astype(bool),
        "timestamps": np_(batch["timestamps"]).astype(np.float64),
    }
    if out.get("heads") is not None:
        arrays["heads"], arrays["heads_present"] = np_(out["heads"]), np_(out["heads_present"]).astype(bool)
        if out.get("heads_gap") is not None:
            arrays["heads_gap"] = np_(out["heads_gap"])
    return [{"video_id": str(v), **{k: a[b] for k, a in arrays.items()}} for b, v in enumerate(batch["video_id"])]


class PredictionCollector:
    """Collects rows of windows (:func:`batch_rows`) into one :class:`VideoPrediction` per video.

    Args:
        n_frames: video id -> frame count (e.g. from the dataset's records); with it, a video's
            frames that no window covered are known and checked. Without it a video's length is its
            highest covered frame index + 1.
        overlap: what a frame predicted by several windows means: ``"error"`` (the evaluation
            protocol: non-overlapping windows, each frame once) or ``"mean"`` (average them).
    """

    def __init__(self, n_frames: Optional[Mapping[str, int]] = None, overlap: str = "error") -> None:
        if overlap not in OVERLAP_POLICIES:
            raise ValueError(f"overlap must be one of {OVERLAP_POLICIES}, got {overlap!r}")
        self.n_frames = dict(n_frames) if n_frames is not None else None
        self.overlap = overlap
        self._rows: dict[str, list[dict[str, Any]]] = {}

    def add_rows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            vid = row["video_id"]
            if self.n_frames is not None and vid not in self.n_frames:
                raise KeyError(f"prediction for unknown video {vid!r}")
            self._rows.setdefault(vid, []).append(row)

    def add(self, batch: Mapping[str, Any], out: Mapping[str, torch.Tensor]) -> None:
        self.add_rows(batch_rows(batch, out))

    def add_window(self, video_id: str, frame_indices: np.ndarray, pred: np.ndarray,
                   face_mask: Optional[np.ndarray] = None) -> None:
        """One window of a video without labels (prediction): ``frame_indices`` (T,) (``-1``
        padding), ``pred`` (T, 2), ``face_mask`` (T,)."""
        self.add_rows([{"video_id": video_id, "frame_indices": np.asarray(frame_indices),
                        "pred": np.asarray(pred), "face_mask": face_mask}])

    def result(self, require_labelled: bool = True) -> dict[str, VideoPrediction]:
        """The stitched videos, sorted by id.

        With ``require_labelled``, a labelled frame that no window covered is an error (a split
        evaluated only in part would give a flattering score). Videos of ``n_frames`` that never
        appeared are an error too.
        """
        ids = sorted(self._rows)
        if self.n_frames is not None and require_labelled:
            absent = sorted(set(self.n_frames) - set(ids))
            if absent:
                raise ValueError(f"{len(absent)} video(s) got no prediction at all, e.g. {absent[:5]}")
        out = {}
        for vid in ids:
            rows = self._rows[vid]
            idx_all = np.concatenate([r["frame_indices"] for r in rows])
            n = self.n_frames[vid] if self.n_frames is not None else int(idx_all.max()) + 1
            psum = np.zeros((n, 2))
            counts = np.zeros(n, dtype=np.int64)
            target = np.full((n, 2), np.nan)
            label = np.zeros(n, dtype=bool)
            face = np.zeros(n, dtype=bool)
            ts = np.full(n, np.nan)
            with_heads = all("heads" in r for r in rows)
            if with_heads:
                hsum = np.zeros((n, *rows[0]["heads"].shape[1:]))
                hpresent = np.zeros((n, rows[0]["heads"].shape[-1]), dtype=bool)
            with_gap = with_heads and all("heads_gap" in r for r in rows)
            if with_gap:
                hgap = np.full((n, rows[0]["heads"].shape[-1]), np.inf)
            for r in rows:
                ok = r["frame_indices"] >= 0
                idx = r["frame_indices"][ok]
                if idx.size and idx.max() >= n:
                    raise ValueError(f"{vid}: frame index {int(idx.max())} beyond its {n} frames")
                np.add.at(psum, idx, r["pred"][ok])
                np.add.at(counts, idx, 1)
                if r.get("mask") is not None:  # labelled rows (evaluation); prediction has none
                    m = r["mask"][ok]
                    target[idx[m]] = r["target"][ok][m]
                    label[idx] |= m
                if r.get("face_mask") is not None:
                    face[idx] |= r["face_mask"][ok]
                if r.get("timestamps") is not None:
                    ts[idx] = r["timestamps"][ok]
                if with_heads:
                    np.add.at(hsum, idx, r["heads"][ok])
                    hpresent[idx] |= r["heads_present"][ok]
                if with_gap:
                    np.minimum.at(hgap, idx, r["heads_gap"][ok])
            if self.overlap == "error" and (counts > 1).any():
                f = int(np.flatnonzero(counts > 1)[0])
                raise ValueError(
                    f"{vid}: frame {f} was predicted {int(counts[f])} times; evaluation windows must not "
                    "overlap (stride == clip_len) so that every frame is scored exactly once")
            if require_labelled and (label & (counts == 0)).any():
                f = int(np.flatnonzero(label & (counts == 0))[0])
                raise ValueError(f"{vid}: labelled frame {f} was never predicted")
            with np.errstate(invalid="ignore", divide="ignore"):
                pred = np.where(counts[:, None] > 0, psum / np.maximum(counts, 1)[:, None], np.nan)
                heads = np.where(counts[:, None, None] > 0, hsum / np.maximum(counts, 1)[:, None, None],
                                 np.nan) if with_heads else None
            out[vid] = VideoPrediction(vid, pred, target, label, face, ts, counts, heads,
                                       hpresent if with_heads else None, hgap if with_gap else None)
        return out



__all__ = ["VideoPrediction", "batch_rows", "PredictionCollector", "OVERLAP_POLICIES"]
