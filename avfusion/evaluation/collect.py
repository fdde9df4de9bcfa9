"""The one path from window predictions back to frames: training validation, ``avfusion evaluate``
and :class:`~avfusion.predict.Predictor` all go through :func:`predict_loader`.

Each batch row (one window of ``T`` frames) becomes a small dict (:func:`batch_rows`); with an
Accelerator every process's rows are gathered (``gather_for_metrics``: the duplicates that even
out the last batch are dropped); :class:`PredictionCollector` puts each window's predictions on
its video's frames by ``frame_indices``, with an explicit overlap policy: ``"error"`` for the
evaluation protocol (non-overlapping windows, every frame scored exactly once) or ``"mean"``
(overlapping windows averaged: prediction, overlapping validation windows).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

import numpy as np
import torch

from ..metrics import moving_average

OVERLAP_POLICIES = ("error", "mean")
MASKABLE = ("audio", "video")


def mask_modality(batch: Mapping[str, Any], which: Optional[str]) -> dict[str, Any]:
    """A copy of ``batch`` whose ``which`` modality ("audio" or "video") is marked absent for the
    model, as when a video has no audio track or no face is found: measures how an audio-visual
    model copes with one sense missing. The batch's own masks (what is scored) are not changed."""
    out = dict(batch)
    if which is None:
        return out
    if which not in MASKABLE:
        raise ValueError(f"mask must be one of {MASKABLE}, got {which!r}")
    if which == "audio":
        out["audio_valid"] = torch.zeros_like(batch["audio_valid"], dtype=torch.bool)
    else:
        out["face_mask"] = torch.zeros_like(batch["face_mask"], dtype=torch.bool)
    return out


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
            for r in rows:
                ok = r["frame_indices"] >= 0
                idx = r["frame_indices"][ok]
                if idx.size and idx.max() >= n:
                    raise ValueError(f"{vid}: frame index {int(idx.max())} beyond its {n} frames")
                np.add.at(psum, idx, r["pred"][ok])
                np.add.at(counts, idx, 1)
                m = r["mask"][ok]
                target[idx[m]] = r["target"][ok][m]
                label[idx] |= m
                face[idx] |= r["face_mask"][ok]
                ts[idx] = r["timestamps"][ok]
                if with_heads:
                    np.add.at(hsum, idx, r["heads"][ok])
                    hpresent[idx] |= r["heads_present"][ok]
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
                                       hpresent if with_heads else None)
        return out


def _to_device(batch: Mapping[str, Any], device: torch.device | str) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def predict_loader(
    model: torch.nn.Module,
    loader: Iterable[Mapping[str, Any]],
    n_frames: Optional[Mapping[str, int]] = None,
    accelerator: Any = None,
    device: torch.device | str | None = None,
    overlap: str = "error",
    progress: bool = False,
    require_labelled: bool = True,
    mask: Optional[str] = None,
) -> dict[str, VideoPrediction]:
    """Run ``model`` (an :class:`~avfusion.model.AVModel`, or one an Accelerator prepared) over
    every batch and stitch per video (``overlap``: see :class:`PredictionCollector`). The model runs
    in eval mode and is put back in the mode it was in.

    With an ``accelerator`` the loader must be prepared by it: each process predicts its share and
    ``gather_for_metrics`` hands every process all rows (the duplicates that even batches add at
    the end are dropped), so every process returns the same result.
    ``mask`` ("audio" | "video") hides that modality from the model (:func:`mask_modality`).
    """
    net = accelerator.unwrap_model(model) if accelerator is not None else model
    was_training = net.training
    net.eval()
    if device is None:
        device = accelerator.device if accelerator is not None else next(net.parameters()).device
    collector = PredictionCollector(n_frames, overlap=overlap)
    it = loader
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(loader, desc="evaluating", unit="batch")
    for batch in it:
        batch = _to_device(batch, device)
        out = net.forward_batch(mask_modality(batch, mask))
        rows = batch_rows(batch, out)
        if accelerator is not None:
            rows = accelerator.gather_for_metrics(rows, use_gather_object=True)
        collector.add_rows(rows)
    net.train(was_training)
    return collector.result(require_labelled=require_labelled)


def smooth_predictions(video: VideoPrediction, window: int) -> np.ndarray:
    """``(N, 2)`` centred moving average of a video's predictions over its predicted frames."""
    return moving_average(np.nan_to_num(video.pred), window, valid=video.counts > 0)


__all__ = ["VideoPrediction", "batch_rows", "PredictionCollector", "predict_loader", "smooth_predictions",
           "OVERLAP_POLICIES", "mask_modality", "MASKABLE"]
