"""Pictures: evaluation plots, prediction plots and the overlay video.

Only files, no display: matplotlib runs on its Agg backend.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Union

import numpy as np
import pandas as pd

from .metrics import DIMS, moving_average

PathLike = Union[str, Path]


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _smoothed(v: Any, window: int) -> np.ndarray:
    return moving_average(np.nan_to_num(v.pred), window, valid=v.counts > 0)


def save_plots(
    videos: Mapping[str, Any],
    per_clip: pd.DataFrame,
    out_dir: PathLike,
    n_examples: int = 4,
    smooth_window: int = 1,
    threshold: float = 0.5,
) -> list[Path]:
    """Scatter of predicted vs true values, per-clip CCC histograms, and a few clips over time.

    The example clips are the best, the worst and ones in between by mean per-clip CCC.
    """
    plt = pyplot()
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
            smooth = _smoothed(v, smooth_window) if smooth_window > 1 else None
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


def plot_prediction(table: pd.DataFrame, path: PathLike, title: str = "") -> Path:
    """Valence and arousal over time, frames without a prediction (``valid`` False; older tables:
    no face) shaded."""
    plt = pyplot()
    t = table["timestamp"].to_numpy()
    fig, ax = plt.subplots(figsize=(10, 3.5))
    ax.plot(t, table["valence"], label="valence", color="C0")
    ax.plot(t, table["arousal"], label="arousal", color="C3")
    missing = ~table["valid" if "valid" in table else "face_found"].to_numpy(bool)
    if missing.any():
        ax.fill_between(t, -1.05, 1.05, where=missing, color="0.85", step="mid", label="no prediction")
    ax.axhline(0, color="k", lw=0.5)
    ax.set(ylim=(-1.05, 1.05), xlabel="time (s)", ylabel="value", title=title)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def _draw(frame: np.ndarray, valence: float, arousal: float, face: bool) -> np.ndarray:
    """Bars and numbers for one RGB frame (drawn in place on a copy)."""
    import cv2

    img = np.ascontiguousarray(frame).copy()
    h, w = img.shape[:2]
    if min(h, w) < 360:  # text on a thumbnail is unreadable: enlarge small videos
        k = int(math.ceil(360 / min(h, w)))
        img = cv2.resize(img, (w * k, h * k), interpolation=cv2.INTER_NEAREST)
        h, w = img.shape[:2]
    scale = max(0.4, min(w, h) / 480)
    bar_w, bar_h, x0 = int(w * 0.3), max(4, int(10 * scale)), int(8 * scale)
    for k, (name, val, colour) in enumerate((("V", valence, (60, 120, 255)), ("A", arousal, (255, 80, 60)))):
        y = int((14 + 22 * k) * scale)
        cv2.rectangle(img, (x0 + int(20 * scale), y), (x0 + int(20 * scale) + bar_w, y + bar_h), (40, 40, 40), -1)
        mid = x0 + int(20 * scale) + bar_w // 2
        if np.isfinite(val):
            end = mid + int(round(val * bar_w / 2))
            cv2.rectangle(img, (min(mid, end), y), (max(mid, end), y + bar_h), colour, -1)
            text = f"{name} {val:+.2f}"
        else:
            text = f"{name}  n/a"
        cv2.putText(img, text, (x0 + int(26 * scale) + bar_w, y + bar_h), cv2.FONT_HERSHEY_SIMPLEX,
                    0.45 * scale, (255, 255, 255), max(1, int(scale)), cv2.LINE_AA)
        cv2.putText(img, name, (x0, y + bar_h), cv2.FONT_HERSHEY_SIMPLEX, 0.45 * scale, (255, 255, 255),
                    max(1, int(scale)), cv2.LINE_AA)
    if not face:
        cv2.putText(img, "no face", (x0, int(70 * scale)), cv2.FONT_HERSHEY_SIMPLEX, 0.45 * scale,
                    (255, 255, 0), max(1, int(scale)), cv2.LINE_AA)
    return img


def write_overlay(video_path: PathLike, table: pd.DataFrame, out_path: PathLike, chunk: int = 64) -> Path:
    """The video with each frame's valence/arousal drawn on it (H.264 mp4, no audio)."""
    import av

    from .data.video import VideoFile

    video = VideoFile(video_path)
    try:
        n = len(video)
        if n != len(table):
            raise ValueError(f"{video_path}: {n} frames but {len(table)} predictions")
        from fractions import Fraction

        rate = Fraction(video.fps).limit_denominator(1001) if video.fps > 0 else Fraction(25)
        out_path = Path(out_path)
        with av.open(str(out_path), mode="w") as container:
            stream = None
            for start in range(0, n, chunk):
                frames = video.get_batch(list(range(start, min(n, start + chunk))))
                for k, frame in enumerate(frames):
                    row = table.iloc[start + k]
                    img = _draw(frame, float(row["valence"]), float(row["arousal"]), bool(row["face_found"]))
                    # yuv420p needs even sizes.
                    img = img[: img.shape[0] // 2 * 2, : img.shape[1] // 2 * 2]
                    if stream is None:
                        stream = container.add_stream(_codec(), rate=rate)
                        stream.width, stream.height = img.shape[1], img.shape[0]
                        stream.pix_fmt = "yuv420p"
                    for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                        container.mux(packet)
            if stream is not None:
                for packet in stream.encode():
                    container.mux(packet)
    finally:
        video.close()  # now, not at a garbage collection that Ctrl-C may interrupt
    return out_path


def _codec() -> str:
    import av

    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


__all__ = ["pyplot", "save_plots", "plot_prediction", "write_overlay"]
