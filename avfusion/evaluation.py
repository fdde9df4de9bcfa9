"""Evaluate a model on a split: per-frame predictions stitched per video, metrics, tables, plots.

The protocol (FORMATS.md, "Metrics"): predictions of non-overlapping windows are put back on the
frames of their video (every labelled frame scored exactly once), then every metric is computed once
over all labelled frames of the split concatenated; per-clip CCC summaries and circumplex-quadrant
accuracy come from :mod:`avfusion.metrics`. Moving-average smoothing of each clip's predictions
(within the clip, centred, odd window) is reported beside the raw figures.

Works on raw-clip batches (:class:`~avfusion.data.clips.ClipDataset`) and cached-feature batches
(:class:`~avfusion.data.features.FeatureDataset`) alike, on one process or several
(``accelerator.gather_for_metrics`` collects the rows of every process, padding duplicates dropped).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

import numpy as np
import pandas as pd
import torch

from .metrics import DIMS, format_clip_summary, moving_average, per_clip_summary, va_metrics

PathLike = Union[str, Path]


# ------------------------------------------------------------------------------------------------
# The model


def load_model(name_or_path: PathLike, checkpoint: Optional[PathLike] = None, **overrides: Any) -> torch.nn.Module:
    """A ``save_pretrained`` folder (with its weights), or a named / YAML architecture.

    ``checkpoint`` is the video encoder's weight file of a named model (``emonet_8`` +
    ``emonet_8.pth``: EmoNet frame by frame, the zero-shot setting); ``overrides`` are nested
    model-config changes (``video={"flip_average": False}``).
    """
    from .factory import CONFIG_NAME, create_model, from_pretrained

    path = Path(name_or_path)
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        if checkpoint is not None:
            raise ValueError(f"{path} is an exported model with its own weights: a checkpoint applies "
                             "only to a named architecture")
        return from_pretrained(path, **overrides)
    if checkpoint is not None:
        overrides = dict(overrides)
        overrides["video"] = {**dict(overrides.get("video") or {}), "checkpoint": str(checkpoint)}
    return create_model(str(name_or_path), **overrides)


# ------------------------------------------------------------------------------------------------
# Stitching windows back onto videos


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
        if overlap not in ("error", "mean"):
            raise ValueError(f"overlap must be 'error' or 'mean', got {overlap!r}")
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
            out[vid] = VideoPrediction(vid, pred, target, label, face, ts, counts)
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
) -> dict[str, VideoPrediction]:
    """Run ``model`` (an :class:`~avfusion.model.AVModel`) over every batch and stitch per video.

    With an ``accelerator`` the loader must be prepared by it: each process predicts its share and
    ``gather_for_metrics`` hands every process all rows (the duplicates that even batches add at
    the end are dropped), so every process returns the same result.
    """
    model.eval()
    if device is None:
        device = accelerator.device if accelerator is not None else next(model.parameters()).device
    collector = PredictionCollector(n_frames, overlap=overlap)
    it = loader
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(loader, desc="evaluating", unit="batch")
    for batch in it:
        batch = _to_device(batch, device)
        out = model.forward_batch(batch)
        rows = batch_rows(batch, out)
        if accelerator is not None:
            rows = accelerator.gather_for_metrics(rows, use_gather_object=True)
        collector.add_rows(rows)
    return collector.result(require_labelled=require_labelled)


# ------------------------------------------------------------------------------------------------
# Metrics


def smooth_predictions(video: VideoPrediction, window: int) -> np.ndarray:
    """``(N, 2)`` centred moving average of a video's predictions over its predicted frames."""
    return moving_average(np.nan_to_num(video.pred), window, valid=video.counts > 0)


def _clips(videos: Mapping[str, VideoPrediction], smooth: int, face_only: bool) -> dict[str, dict]:
    clips = {}
    for vid, v in videos.items():
        mask = v.scored & (v.face_mask if face_only else True)
        pred = smooth_predictions(v, smooth) if smooth > 1 else v.pred
        clips[vid] = {"pred": np.nan_to_num(pred), "target": np.nan_to_num(v.target), "mask": mask}
    return clips


def _frame_metrics(clips: Mapping[str, dict]) -> dict[str, float]:
    pred = np.concatenate([c["pred"][c["mask"]] for c in clips.values()])
    target = np.concatenate([c["target"][c["mask"]] for c in clips.values()])
    return va_metrics(pred, target)


def compute_metrics(
    videos: Mapping[str, VideoPrediction],
    smooth_window: int = 5,
    threshold: float = 0.5,
    face_only: bool = False,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Whole-split metrics, per-clip summary and quadrant accuracy, raw and smoothed.

    Returns ``(results, per_clip)``: ``results`` is JSON-ready (``frames``: :func:`va_metrics` over
    all scored frames; ``per_clip``: :func:`per_clip_summary`'s summary; ``quadrant_accuracy``;
    ``smoothed``: the same with ``smooth_window``-frame smoothing; counts); ``per_clip`` has one row
    per clip with raw and ``smoothed_`` CCC columns. ``face_only`` scores only frames with a face
    (default: every labelled frame, as the published protocols do).
    """
    if smooth_window < 1 or smooth_window % 2 == 0:
        raise ValueError(f"smoothing window must be a positive odd number of frames, got {smooth_window}")
    if not videos:
        raise ValueError("no videos to evaluate")
    raw = _clips(videos, 1, face_only)
    n_scored = int(sum(c["mask"].sum() for c in raw.values()))
    if n_scored == 0:
        raise ValueError("no labelled frame to score in this split")
    summary, table = per_clip_summary(raw, threshold=threshold)
    results: dict[str, Any] = {
        "n_videos": len(videos),
        "n_frames_scored": n_scored,
        "n_frames_scored_without_face": int(sum((v.scored & ~v.face_mask).sum() for v in videos.values())),
        "face_only": bool(face_only),
        "frames": _frame_metrics(raw),
        "per_clip": summary,
        "quadrant_accuracy": {"frame": summary["quadrant_acc_frame"], "clip": summary["quadrant_acc_clip"]},
        "smoothing_window": int(smooth_window),
    }
    smooth_clips = _clips(videos, smooth_window, face_only) if smooth_window > 1 else raw
    s_summary, s_table = per_clip_summary(smooth_clips, threshold=threshold)
    results["smoothed"] = {
        "frames": _frame_metrics(smooth_clips),
        "per_clip": s_summary,
        "quadrant_accuracy": {"frame": s_summary["quadrant_acc_frame"], "clip": s_summary["quadrant_acc_clip"]},
    }
    for vid in table.index:
        v, m = videos[vid], raw[vid]["mask"]
        for i, dim in enumerate(DIMS):
            table.loc[vid, f"mean_pred_{dim}"] = float(np.clip(v.pred[m, i], -1, 1).mean())
            table.loc[vid, f"mean_target_{dim}"] = float(v.target[m, i].mean())
    table["smoothed_ccc_valence"] = s_table["ccc_valence"]
    table["smoothed_ccc_arousal"] = s_table["ccc_arousal"]
    table["smoothed_quadrant_pred"] = s_table["quadrant_pred"]
    return _jsonable(results), table


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return float(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def _fmt(x: float, digits: int) -> str:
    # A tiny negative residue printed as "-0.000" reads like a finding: print it as 0.
    return f"{x:.{digits}f}" if abs(x) >= 0.5 * 10.0 ** -digits else f"{0.0:.{digits}f}"


def format_report(results: Mapping[str, Any], digits: int = 3) -> str:
    """The per-clip tables (raw and smoothed), whole-split metrics and quadrant accuracy, as text."""
    w = results["smoothing_window"]
    lines = [format_clip_summary(results["per_clip"], digits, title="Per-clip CCC (no smoothing)"), ""]
    if w > 1:
        lines += [format_clip_summary(results["smoothed"]["per_clip"], digits,
                                      title=f"Per-clip CCC (moving average over {w} frames)"), ""]
    lines += ["**Whole split (all scored frames concatenated)**", "",
              "| predictions | CCC valence | CCC arousal | mean CCC | PCC v | PCC a | RMSE v | RMSE a "
              "| SAGR v | SAGR a | quadrant acc. (frames) | quadrant acc. (clips) |",
              "|---|" + "---:|" * 11]
    rows = [("raw", results)]
    if w > 1:
        rows.append((f"smoothed ({w})", results["smoothed"]))
    for name, r in rows:
        f, q = r["frames"], r["quadrant_accuracy"]
        vals = [f["ccc_valence"], f["ccc_arousal"], f["ccc_mean"], f["pcc_valence"], f["pcc_arousal"],
                f["rmse_valence"], f["rmse_arousal"], f["sagr_valence"], f["sagr_arousal"]]
        cells = " | ".join(_fmt(x, digits) for x in vals)
        lines.append(f"| {name} | {cells} | {100 * q['frame']:.1f} % | {100 * q['clip']:.1f} % |")
    lines += ["", f"{results['n_videos']} clips, {results['n_frames_scored']} scored frames "
              f"({results['n_frames_scored_without_face']} of them without a detected face"
              f"{'; left out' if results['face_only'] else ''})."]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Files and plots


def predictions_frame(videos: Mapping[str, VideoPrediction], smooth_window: int = 1) -> pd.DataFrame:
    """One row per frame: video_id, frame, timestamp, predictions (and smoothed), labels, masks."""
    parts = []
    for vid, v in videos.items():
        d = {
            "video_id": vid,
            "frame": np.arange(v.n_frames),
            "timestamp": v.timestamps,
            "valence_pred": v.pred[:, 0],
            "arousal_pred": v.pred[:, 1],
        }
        if smooth_window > 1:
            s = smooth_predictions(v, smooth_window)
            d["valence_pred_smoothed"], d["arousal_pred_smoothed"] = s[:, 0], s[:, 1]
        d.update({"valence": v.target[:, 0], "arousal": v.target[:, 1], "labelled": v.label_mask,
                  "face_found": v.face_mask})
        parts.append(pd.DataFrame(d))
    return pd.concat(parts, ignore_index=True)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def save_plots(
    videos: Mapping[str, VideoPrediction],
    per_clip: pd.DataFrame,
    out_dir: PathLike,
    n_examples: int = 4,
    smooth_window: int = 1,
    threshold: float = 0.5,
) -> list[Path]:
    """Scatter of predicted vs true values, per-clip CCC histograms, and a few clips over time.

    The example clips are the best, the worst and ones in between by mean per-clip CCC.
    """
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []

    pred = np.concatenate([np.clip(v.pred[v.scored], -1, 1) for v in videos.values()])
    target = np.concatenate([v.target[v.scored] for v in videos.values()])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8))
    for i, (ax, dim) in enumerate(zip(axes, DIMS)):
        if len(pred) > 5000:
            ax.hexbin(target[:, i], pred[:, i], gridsize=40, extent=(-1, 1, -1, 1), mincnt=1, bins="log")
        else:
            ax.scatter(target[:, i], pred[:, i], s=6, alpha=0.4)
        ax.plot([-1, 1], [-1, 1], "k--", lw=0.8)
        ax.set(xlim=(-1.05, 1.05), ylim=(-1.05, 1.05), xlabel=f"true {dim}", ylabel=f"predicted {dim}",
               aspect="equal")
        ax.set_title(f"{dim}: {len(pred)} frames")
    fig.tight_layout()
    paths.append(out / "scatter.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    bins = np.linspace(-1, 1, 21)
    for ax, dim in zip(axes, DIMS):
        ax.hist(per_clip[f"ccc_{dim}"], bins=bins, color="C0", alpha=0.7, label="raw")
        if smooth_window > 1 and f"smoothed_ccc_{dim}" in per_clip:
            ax.hist(per_clip[f"smoothed_ccc_{dim}"], bins=bins, histtype="step", color="C1", lw=1.5,
                    label=f"smoothed ({smooth_window})")
        ax.axvline(threshold, color="k", ls="--", lw=0.8)
        ax.set(xlabel=f"per-clip CCC ({dim})", ylabel="clips")
        ax.legend()
    fig.tight_layout()
    paths.append(out / "per_clip_ccc_hist.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    mean_ccc = (per_clip["ccc_valence"] + per_clip["ccc_arousal"]) / 2
    order = list(mean_ccc.sort_values(ascending=False).index)
    k = min(n_examples, len(order))
    picks = [order[int(round(j))] for j in np.linspace(0, len(order) - 1, k)] if k else []
    if picks:
        fig, axes = plt.subplots(len(picks), 2, figsize=(11, 2.4 * len(picks)), squeeze=False)
        for row, vid in zip(axes, picks):
            v = videos[vid]
            t = v.timestamps if np.isfinite(v.timestamps).all() else np.arange(v.n_frames)
            smooth = smooth_predictions(v, smooth_window) if smooth_window > 1 else None
            for i, (ax, dim) in enumerate(zip(row, DIMS)):
                ax.plot(t, np.where(v.label_mask, v.target[:, i], np.nan), "k", lw=1.2, label="true")
                ax.plot(t, np.clip(v.pred[:, i], -1, 1), "C0", lw=0.8, alpha=0.8, label="predicted")
                if smooth is not None:
                    ax.plot(t, np.clip(smooth[:, i], -1, 1), "C1", lw=1.2, label=f"smoothed ({smooth_window})")
                ax.set(ylim=(-1.05, 1.05), ylabel=dim)
                ax.set_title(f"{vid}: CCC {per_clip.loc[vid, f'ccc_{dim}']:.2f}", fontsize=9)
            row[0].legend(fontsize=7, loc="upper left")
        for ax in axes[-1]:
            ax.set_xlabel("time (s)")
        fig.tight_layout()
        paths.append(out / "clips_over_time.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def write_results(
    videos: Mapping[str, VideoPrediction],
    results: Mapping[str, Any],
    per_clip: pd.DataFrame,
    out_dir: PathLike,
    plots: bool = True,
    extra: Optional[Mapping[str, Any]] = None,
) -> dict[str, Path]:
    """``metrics.json``, ``per_clip.csv``, ``predictions.csv`` and the plots under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"metrics": out / "metrics.json", "per_clip": out / "per_clip.csv",
             "predictions": out / "predictions.csv"}
    payload = {**_jsonable(dict(extra or {})), **results}
    files["metrics"].write_text(json.dumps(payload, indent=1, allow_nan=True) + "\n")
    per_clip.to_csv(files["per_clip"], index_label="clip_id")
    predictions_frame(videos, results["smoothing_window"]).to_csv(files["predictions"], index=False)
    if plots:
        for p in save_plots(videos, per_clip, out / "plots", smooth_window=results["smoothing_window"],
                            threshold=results["per_clip"]["threshold"]):
            files[p.stem] = p
    return files


def evaluate(
    model: torch.nn.Module,
    loader: Iterable[Mapping[str, Any]],
    n_frames: Optional[Mapping[str, int]] = None,
    out_dir: Optional[PathLike] = None,
    smooth_window: int = 5,
    threshold: float = 0.5,
    face_only: bool = False,
    accelerator: Any = None,
    plots: bool = True,
    progress: bool = False,
    extra: Optional[Mapping[str, Any]] = None,
) -> tuple[dict[str, Any], pd.DataFrame, dict[str, VideoPrediction]]:
    """Predict, stitch, score and (on the main process, when ``out_dir``) write everything.

    Returns ``(results, per_clip, videos)``.
    """
    videos = predict_loader(model, loader, n_frames, accelerator=accelerator, progress=progress)
    results, per_clip = compute_metrics(videos, smooth_window, threshold, face_only)
    main = accelerator is None or accelerator.is_main_process
    if out_dir is not None and main:
        write_results(videos, results, per_clip, out_dir, plots=plots, extra=extra)
    return results, per_clip, videos


__all__ = [
    "load_model", "VideoPrediction", "PredictionCollector", "batch_rows", "predict_loader", "smooth_predictions",
    "compute_metrics", "format_report", "predictions_frame", "save_plots", "write_results", "evaluate",
]
