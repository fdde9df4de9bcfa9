"""Metrics of a stitched split (the protocol of the official EmoNet evaluation, docs/FORMATS.md,
"Metrics"): every metric once over all scored frames of the split concatenated, predictions clipped
to [-1, 1]; per-clip CCC summaries and circumplex-quadrant accuracy, raw and smoothed; text
tables; ``metrics.json``, ``per_clip.csv``, ``predictions.csv`` and plots on disk.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

import numpy as np
import pandas as pd
import torch

from ..files import atomic_path, write_text_atomic
from ..metrics import DIMS, format_clip_summary, per_clip_summary, va_metrics
from ..viz import save_plots
from .collect import VideoPrediction, predict_loader, smooth_predictions

PathLike = Union[str, Path]


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
        "frames": split_metrics(videos, face_only),
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


def split_metrics(videos: Mapping[str, VideoPrediction], face_only: bool = False) -> dict[str, float]:
    """The whole-split figures training logs each epoch and ``evaluate`` reports under ``frames``:
    :func:`~avfusion.metrics.va_metrics` over every scored frame concatenated, plus the number of
    frames and clips scored and the mean per-clip CCC."""
    import warnings

    raw = _clips(videos, 1, face_only)
    n = int(sum(c["mask"].sum() for c in raw.values()))
    if n == 0:
        raise ValueError("no labelled frame to score in this split")
    m = _frame_metrics(raw)
    m["n_frames"] = n
    m["n_clips"] = len(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary, _ = per_clip_summary(raw)
    for dim in DIMS:
        m[f"clip_ccc_{dim}_mean"] = summary[f"ccc_{dim}_mean"]
    return m


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


def plot_title(extra: Optional[Mapping[str, Any]]) -> str:
    """The evaluation plots' title: the model (its folder's last two parts, so ``runs/exp/best``
    reads ``exp/best``), the part of the data and what was masked, from ``extra`` (what
    ``metrics.json`` records)."""
    extra = dict(extra or {})
    parts = []
    if extra.get("model"):
        parts.append("model " + "/".join(Path(str(extra["model"])).parts[-2:]))
    if extra.get("part"):
        parts.append(f"{extra['part']} part")
    if extra.get("masked"):
        parts.append(f"{extra['masked']} masked")
    return ", ".join(parts)


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
    # Tables first, metrics.json last: a folder with a metrics.json is complete.
    with atomic_path(files["per_clip"]) as tmp:
        per_clip.to_csv(tmp, index_label="clip_id")
    with atomic_path(files["predictions"]) as tmp:
        predictions_frame(videos, results["smoothing_window"]).to_csv(tmp, index=False)
    write_text_atomic(files["metrics"], json.dumps(payload, indent=1, allow_nan=True) + "\n")
    if plots:
        for p in save_plots(videos, per_clip, out / "plots", smooth_window=results["smoothing_window"],
                            threshold=results["per_clip"]["threshold"], title=plot_title(extra)):
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
    mask: Optional[str] = None,
) -> tuple[dict[str, Any], pd.DataFrame, dict[str, VideoPrediction]]:
    """Predict, stitch, score and (on the main process, when ``out_dir``) write everything.

    Returns ``(results, per_clip, videos)``.
    """
    videos = predict_loader(model, loader, n_frames, accelerator=accelerator, progress=progress, mask=mask)
    results, per_clip = compute_metrics(videos, smooth_window, threshold, face_only)
    main = accelerator is None or accelerator.is_main_process
    if out_dir is not None and main:
        write_results(videos, results, per_clip, out_dir, plots=plots, extra=extra)
    return results, per_clip, videos


__all__ = ["compute_metrics", "split_metrics", "format_report", "predictions_frame", "write_results", "plot_title",
           "evaluate"]
