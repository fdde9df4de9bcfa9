"""Pictures: evaluation plots and prediction plots (files only: matplotlib on its Agg backend).

- :func:`save_plots` (``avfusion evaluate``): predicted vs true values with CCC and PCC in the
  titles (a hexbin when there are many frames), per-clip CCC histograms, the best, median and
  worst clips over time (labelled as such), and a confusion matrix of circumplex quadrants.
- :func:`plot_prediction` (``avfusion predict``): valence and arousal over time, with the spans
  without a face or without speech shaded and a band of the quadrant at each frame, beside the
  trajectory on the valence/arousal circle; the title names the video and the model.

The overlay video is :mod:`avfusion.predict.overlay`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np
import pandas as pd

from .files import atomic_path
from .metrics import DIMS, ccc, moving_average, pcc, quadrant

PathLike = Union[str, Path]

# Quadrants of the circumplex in the order of metrics.quadrant (1-4), with their colours.
QUADRANT_LABELS = ("pleasant-activated", "unpleasant-activated", "unpleasant-deactivated", "pleasant-deactivated")
QUADRANT_COLOURS = ("#f4a261", "#e76f51", "#577590", "#90be6d")
# More frames than this: a hexbin instead of a scatter (points would hide each other).
HEXBIN_ABOVE = 3000



def _save(fig: Any, path: PathLike, dpi: int = 100) -> None:
    """Save a figure whole or not at all (the one atomic writer; the format from the suffix)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=Path(path).suffix.lstrip(".") or "png")

def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _smoothed(v: Any, window: int) -> np.ndarray:
    return moving_average(np.nan_to_num(v.pred), window, valid=v.counts > 0)


def _safe(metric: Any, p: np.ndarray, t: np.ndarray) -> float:
    try:
        return float(metric(p, t))
    except ValueError:  # too few frames, or a constant
        return float("nan")


def clip_picks(per_clip: pd.DataFrame) -> list[tuple[str, Any]]:
    """The best, median and worst clips by mean per-clip CCC (valence and arousal), as
    ``(label, clip id)``; a clip is listed once (fewer than three clips: fewer picks)."""
    mean_ccc = ((per_clip["ccc_valence"] + per_clip["ccc_arousal"]) / 2).dropna()
    order = list(mean_ccc.sort_values(ascending=False, kind="stable").index)
    if not order:
        return []
    picks: list[tuple[str, Any]] = []
    for label, vid in (("best", order[0]), ("median", order[(len(order) - 1) // 2]), ("worst", order[-1])):
        if all(vid != v for _, v in picks):
            picks.append((label, vid))
    return picks


def quadrant_confusion(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(4, 4) frame counts: row = true quadrant, column = predicted (order of QUADRANT_LABELS)."""
    m = np.zeros((4, 4), dtype=np.int64)
    if len(pred):
        np.add.at(m, (quadrant(target[:, 0], target[:, 1]) - 1, quadrant(pred[:, 0], pred[:, 1]) - 1), 1)
    return m


def scatter_figure(pred: np.ndarray, target: np.ndarray, title: str = "") -> Any:
    """Predicted vs true valence and arousal (N, 2 each): a scatter, or a hexbin (log counts) above
    :data:`HEXBIN_ABOVE` frames; CCC and PCC in each panel's title."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 5))
    for i, (ax, dim) in enumerate(zip(axes, DIMS)):
        if len(pred) > HEXBIN_ABOVE:
            hb = ax.hexbin(target[:, i], pred[:, i], gridsize=40, extent=(-1, 1, -1, 1), mincnt=1, bins="log",
                           cmap="viridis")
            fig.colorbar(hb, ax=ax, shrink=0.8, label="frames")
        else:
            ax.scatter(target[:, i], pred[:, i], s=6, alpha=0.4)
        ax.plot([-1, 1], [-1, 1], "k--", lw=0.8)
        ax.set(xlim=(-1.05, 1.05), ylim=(-1.05, 1.05), xlabel=f"true {dim}", ylabel=f"predicted {dim}",
               aspect="equal")
        c, r = _safe(ccc, pred[:, i], target[:, i]), _safe(pcc, pred[:, i], target[:, i])
        ax.set_title(f"{dim}: CCC {c:.3f}, PCC {r:.3f} ({len(pred)} frames)", fontsize=10)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def clips_figure(videos: Mapping[str, Any], per_clip: pd.DataFrame, picks: list[tuple[str, Any]],
                 smooth_window: int = 1, title: str = "") -> Any:
    """True and predicted values over time of the ``picks`` (``(label, clip id)``, e.g. from
    :func:`clip_picks`), one row per clip, each panel titled with its label and CCC."""
    plt = pyplot()
    fig, axes = plt.subplots(len(picks), 2, figsize=(11, 2.5 * len(picks)), squeeze=False)
    for row, (label, vid) in zip(axes, picks):
        v = videos[vid]
        t = v.timestamps if np.isfinite(v.timestamps).all() else np.arange(v.n_frames)
        smooth = _smoothed(v, smooth_window) if smooth_window > 1 else None
        for i, (ax, dim) in enumerate(zip(row, DIMS)):
            ax.plot(t, np.where(v.label_mask, v.target[:, i], np.nan), "k", lw=1.2, label="true")
            ax.plot(t, np.clip(v.pred[:, i], -1, 1), "C0", lw=0.8, alpha=0.8, label="predicted")
            if smooth is not None:
                ax.plot(t, np.clip(smooth[:, i], -1, 1), "C1", lw=1.2, label=f"smoothed ({smooth_window})")
            ax.axhline(0, color="0.6", lw=0.5)
            ax.set(ylim=(-1.05, 1.05), ylabel=dim)
            ax.set_title(f"{label} clip: {vid} (CCC {dim} {per_clip.loc[vid, f'ccc_{dim}']:.2f})", fontsize=9)
        row[0].legend(fontsize=7, loc="upper left")
    for ax in axes[-1]:
        ax.set_xlabel("time (s)")
    fig.suptitle((title + ": " if title else "") + "best, median and worst clips by mean per-clip CCC",
                 fontsize=10)
    fig.tight_layout()
    return fig


def confusion_figure(pred: np.ndarray, target: np.ndarray, title: str = "") -> Any:
    """The quadrant confusion matrix (:func:`quadrant_confusion`): share of each true quadrant's
    frames per predicted quadrant, counts in brackets, overall agreement in the title."""
    plt = pyplot()
    m = quadrant_confusion(pred, target)
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros(m.shape), where=rows > 0)
    fig, ax = plt.subplots(figsize=(6.4, 5.4))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for r in range(4):
        for c in range(4):
            ax.text(c, r, f"{100 * share[r, c]:.0f} %\n({m[r, c]})", ha="center", va="center", fontsize=8,
                    color="white" if share[r, c] > 0.6 else "black")
    names = [q.replace("-", "\n") for q in QUADRANT_LABELS]
    ax.set_xticks(range(4), names, fontsize=8)
    ax.set_yticks(range(4), names, fontsize=8)
    ax.set(xlabel="predicted quadrant", ylabel="true quadrant")
    acc = np.trace(m) / max(1, m.sum())
    ax.set_title(((title + "\n") if title else "") + f"quadrants: {100 * acc:.1f} % of {m.sum()} frames right "
                 "(rows: share of the true quadrant)", fontsize=9)
    fig.tight_layout()
    return fig


def save_plots(
    videos: Mapping[str, Any],
    per_clip: pd.DataFrame,
    out_dir: PathLike,
    n_examples: int = 3,
    smooth_window: int = 1,
    threshold: float = 0.5,
    title: str = "",
) -> list[Path]:
    """``scatter.png`` (predicted vs true, CCC and PCC in the titles; a hexbin for many frames),
    ``per_clip_ccc_hist.png``, ``clips_over_time.png`` (the best, median and worst clips by mean
    per-clip CCC, labelled) and ``quadrant_confusion.png`` under ``out_dir``. ``title`` (e.g. the
    model and split) heads every figure. ``n_examples`` is kept for callers; at most three clips
    (best, median, worst) are drawn."""
    plt = pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []

    pred = np.concatenate([np.clip(v.pred[v.scored], -1, 1) for v in videos.values()])
    target = np.concatenate([v.target[v.scored] for v in videos.values()])
    ok = np.isfinite(pred).all(axis=1) & np.isfinite(target).all(axis=1)
    pred, target = pred[ok], target[ok]
    fig = scatter_figure(pred, target, title)
    paths.append(out / "scatter.png")
    _save(fig, paths[-1])
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    bins = np.linspace(-1, 1, 21)
    for ax, dim in zip(axes, DIMS):
        ax.hist(per_clip[f"ccc_{dim}"].dropna(), bins=bins, color="C0", alpha=0.7, label="raw")
        if smooth_window > 1 and f"smoothed_ccc_{dim}" in per_clip:
            ax.hist(per_clip[f"smoothed_ccc_{dim}"].dropna(), bins=bins, histtype="step", color="C1", lw=1.5,
                    label=f"smoothed ({smooth_window})")
        ax.axvline(threshold, color="k", ls="--", lw=0.8)
        ax.set(xlabel=f"per-clip CCC ({dim})", ylabel="clips")
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    paths.append(out / "per_clip_ccc_hist.png")
    _save(fig, paths[-1])
    plt.close(fig)

    picks = clip_picks(per_clip)[: max(1, int(n_examples))]
    if picks:
        fig = clips_figure(videos, per_clip, picks, smooth_window, title)
        paths.append(out / "clips_over_time.png")
        _save(fig, paths[-1])
        plt.close(fig)

    fig = confusion_figure(pred, target, title)
    paths.append(out / "quadrant_confusion.png")
    _save(fig, paths[-1])
    plt.close(fig)
    return paths


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, last + 1) of every run of True in ``mask``."""
    m = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]])
    d = np.flatnonzero(np.diff(m.astype(np.int8)))
    return list(zip(d[0::2], d[1::2]))


def _frame_ends(t: np.ndarray) -> np.ndarray:
    if len(t) < 2:
        return t + 0.04
    period = float(np.median(np.diff(t)))
    return np.append(t[1:], t[-1] + period)


def _shade(ax: Any, t: np.ndarray, ends: np.ndarray, mask: np.ndarray, **kw: Any) -> bool:
    runs = _runs(mask)
    for a, b in runs:
        ax.axvspan(t[a], ends[b - 1], lw=0, **kw)
    return bool(runs)


def plot_prediction(table: pd.DataFrame, path: PathLike, video: str = "", model: str = "",
                    title: Optional[str] = None, dpi: int = 100) -> Path:
    """Save :func:`prediction_figure` as ``path`` (PNG)."""
    plt = pyplot()
    fig = prediction_figure(table, video, model, title)
    _save(fig, path, dpi)
    plt.close(fig)
    return Path(path)


def prediction_figure(table: pd.DataFrame, video: str = "", model: str = "", title: Optional[str] = None) -> Any:
    """The picture of one video's predictions (one row per frame, see :data:`avfusion.predict.
    COLUMNS`): valence and arousal over time, each on its own axis, with the spans without a face
    (grey) and without speech (hatched) shaded, a band with the quadrant at each frame below, and
    the trajectory on the circumplex (valence x, arousal y, quadrants labelled, coloured by time).
    The title names ``video`` and ``model`` (or is ``title``)."""
    from matplotlib.collections import LineCollection
    from matplotlib.patches import Circle, Patch

    plt = pyplot()
    t = table["timestamp"].to_numpy(np.float64)
    ends = _frame_ends(t)
    va = table[["valence", "arousal"]].to_numpy(np.float64, copy=True)
    valid = table["valid"].to_numpy(bool) if "valid" in table else np.isfinite(va).all(axis=1)
    va[~valid] = np.nan
    face = table["face_found"].to_numpy(bool) if "face_found" in table else np.ones(len(t), bool)
    speech = table["speech"] if "speech" in table else pd.Series([pd.NA] * len(t))
    looked = ~speech.isna().to_numpy()
    no_speech = looked & ~speech.fillna(False).to_numpy(bool)

    fig = plt.figure(figsize=(12.5, 5.2))
    grid = fig.add_gridspec(3, 2, height_ratios=(1, 1, 0.18), width_ratios=(2.3, 1), hspace=0.12, wspace=0.18)
    ax_v = fig.add_subplot(grid[0, 0])
    ax_a = fig.add_subplot(grid[1, 0], sharex=ax_v)
    ax_q = fig.add_subplot(grid[2, 0], sharex=ax_v)
    ax_c = fig.add_subplot(grid[:, 1])
    handles = []
    for k, (ax, dim, colour) in enumerate(((ax_v, "valence", "C0"), (ax_a, "arousal", "C3"))):
        shaded_face = _shade(ax, t, ends, ~face, color="0.85", zorder=0)
        shaded_speech = _shade(ax, t, ends, no_speech, facecolor="none", edgecolor="#7aa6c2", hatch="///", zorder=0)
        ax.axhline(0, color="k", lw=0.5)
        line, = ax.plot(t, va[:, k], color=colour, lw=1.3, label=dim)
        ax.set(ylim=(-1.05, 1.05), ylabel=dim)
        ax.grid(alpha=0.3)
        ax.tick_params(labelbottom=False)
        if k == 0:
            handles = [line]
            if shaded_face:
                handles.append(Patch(color="0.85", label="no face"))
            if shaded_speech:
                handles.append(Patch(facecolor="none", edgecolor="#7aa6c2", hatch="///", label="no speech"))
        else:
            handles.insert(1, line)
    ax_v.legend(handles=handles, loc="upper right", fontsize=8, ncol=len(handles), framealpha=0.8)
    for q, colour in enumerate(QUADRANT_COLOURS):
        here = valid & (quadrant(np.nan_to_num(va[:, 0]), np.nan_to_num(va[:, 1])) == q + 1)
        _shade(ax_q, t, ends, here, color=colour)
    ax_q.set(yticks=[], xlabel="time (s)", xlim=(t[0] if len(t) else 0, ends[-1] if len(t) else 1))
    ax_q.set_ylabel("quadrant", rotation=0, ha="right", va="center", fontsize=9)

    ax_c.add_patch(Circle((0, 0), 1, fill=False, color="0.5", lw=0.8))
    for q, (label, colour) in enumerate(zip(QUADRANT_LABELS, QUADRANT_COLOURS)):
        x, y = (1, 1) if q == 0 else (-1, 1) if q == 1 else (-1, -1) if q == 2 else (1, -1)
        ax_c.text(0.97 * x, 0.97 * y, label.replace("-", "\n"), ha="right" if x > 0 else "left",
                  va="top" if y > 0 else "bottom", fontsize=8, color=colour, fontweight="bold")
    ax_c.axhline(0, color="0.5", lw=0.6)
    ax_c.axvline(0, color="0.5", lw=0.6)
    pts = np.stack([va[:, 0], va[:, 1]], axis=1)
    segs = np.stack([pts[:-1], pts[1:]], axis=1) if len(pts) > 1 else np.zeros((0, 2, 2))
    keep = np.isfinite(segs).all(axis=(1, 2))
    if keep.any():
        lc = LineCollection(segs[keep], cmap="viridis", linewidths=1.4)
        lc.set_array(t[:-1][keep])
        ax_c.add_collection(lc)
        fig.colorbar(lc, ax=ax_c, shrink=0.6, pad=0.02, label="time (s)")
    good = np.flatnonzero(np.isfinite(pts).all(axis=1))
    if len(good):
        ax_c.plot(*pts[good[0]], "o", color="k", ms=5, label=f"start ({t[good[0]]:.1f} s)")
        ax_c.plot(*pts[good[-1]], "s", color="k", ms=5, label=f"end ({t[good[-1]]:.1f} s)")
        ax_c.legend(loc="lower center", fontsize=7, bbox_to_anchor=(0.5, -0.32), ncol=2)
    ax_c.set(xlim=(-1.08, 1.08), ylim=(-1.08, 1.08), xlabel="valence", ylabel="arousal", aspect="equal")
    ax_c.set_title("trajectory on the circumplex", fontsize=9)
    if title is None:
        title = f"Valence and arousal: {video or 'frames'}" + (f" (model: {model})" if model else "")
    fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(left=0.07, right=0.97, top=0.9, bottom=0.12)
    return fig


__all__ = ["pyplot", "save_plots", "plot_prediction", "prediction_figure", "scatter_figure", "clips_figure",
           "confusion_figure", "clip_picks", "quadrant_confusion", "QUADRANT_LABELS",
           "QUADRANT_COLOURS"]
