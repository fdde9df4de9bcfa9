"""Valence/arousal metrics over a whole split, as the official EmoNet evaluation computes them.

Every metric is computed once over all valid frames of a split concatenated, in float64, after
clipping predictions to [-1, 1] (the range of the labels). Statistics are population statistics
(ddof=0). Arguments come in the order ``(pred, target, mask)``; numpy arrays, torch tensors and
sequences are all accepted.

A constant prediction (or a constant target) has no correlation to speak of: CCC and PCC are then 0,
never NaN, so a collapsed model scores 0 rather than poisoning an average.

Per-clip results take *clips*: a mapping ``clip_id -> clip`` (or a sequence of clips, numbered from
0), where a clip is ``(pred, target)``, ``(pred, target, mask)`` or a mapping with keys ``pred``,
``target`` and optionally ``mask``. ``pred`` / ``target`` are ``(T, 2)`` (valence, arousal) or
mappings with keys ``valence`` and ``arousal`` holding ``(T,)``; ``mask`` is ``(T,)`` bool.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Union
import warnings

import numpy as np
import pandas as pd
import torch

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[float]]
# A clip as described in the module docstring.
Clip = Union[tuple, Mapping[str, Any]]
Clips = Union[Mapping[Any, Clip], Sequence[Clip]]

DIMS = ("valence", "arousal")
# Four quadrants of the circumplex, so a random guess is right a quarter of the time.
QUADRANT_CHANCE = 0.25


# ----------------------------------------------------------------------------------------------
# Input handling


def _to_numpy(x: ArrayLike | None, name: str) -> np.ndarray | None:
    """Any array-like as a numpy array; tensors leave the graph and the device (float -> float64)."""
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bool:
            return x.numpy()
        return x.to(torch.float64).numpy()
    arr = np.asarray(x)
    if arr.dtype == object:
        raise ValueError(f"{name}: could not be read as a numeric array")
    return arr


def _mask_array(mask: ArrayLike | None, shape: tuple[int, ...], name: str = "mask") -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    m = _to_numpy(mask, name)
    if m.dtype != bool:
        raise ValueError(f"{name} must be boolean (True = valid frame), got dtype {m.dtype}")
    if m.shape != shape:
        raise ValueError(f"{name} has shape {m.shape}, the values have shape {shape}")
    return m


def _valid_pair(
    pred: ArrayLike, target: ArrayLike, mask: ArrayLike | None, clip: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Validated float64 1-D ``(pred, target)`` restricted to the mask, pred clipped to [-1, 1]."""
    p = _to_numpy(pred, "pred").astype(np.float64, copy=False)
    t = _to_numpy(target, "target").astype(np.float64, copy=False)
    if p.ndim != 1 or t.ndim != 1:
        raise ValueError(
            f"pred and target must be 1-D (one value per frame), got shapes {p.shape} and {t.shape}; "
            "use va_metrics for (N, 2) valence/arousal arrays"
        )
    if p.shape != t.shape:
        raise ValueError(f"pred has {p.shape[0]} frames but target has {t.shape[0]}")
    m = _mask_array(mask, p.shape)
    p, t = p[m], t[m]
    if p.size == 0:
        raise ValueError("no valid frames to score (empty input, or the mask selects nothing)")
    for arr, name in ((p, "pred"), (t, "target")):
        if not np.all(np.isfinite(arr)):
            bad = int(np.sum(~np.isfinite(arr)))
            raise ValueError(f"{name} holds {bad} NaN/inf value(s) among the valid frames; mask them out")
    if clip:
        p = np.clip(p, -1.0, 1.0)
    return p, t


def _is_constant(x: np.ndarray) -> bool:
    # Exact test: a computed variance of identical floats can come out as 1e-34 instead of 0.
    return bool(np.all(x == x[0]))


def _as_va(x: ArrayLike | Mapping[str, ArrayLike], name: str) -> np.ndarray:
    """``(N, 2)`` float64 from an ``(N, 2)`` array or a mapping with ``valence`` and ``arousal``."""
    if isinstance(x, Mapping):
        missing = [d for d in DIMS if d not in x]
        if missing:
            raise ValueError(f"{name}: mapping lacks key(s) {missing}; expected 'valence' and 'arousal'")
        cols = [_to_numpy(x[d], f"{name}[{d!r}]").astype(np.float64, copy=False) for d in DIMS]
        if any(c.ndim != 1 for c in cols) or cols[0].shape != cols[1].shape:
            raise ValueError(
                f"{name}: valence and arousal must be 1-D of equal length, got "
                f"{cols[0].shape} and {cols[1].shape}"
            )
        return np.stack(cols, axis=1)
    arr = _to_numpy(x, name).astype(np.float64, copy=False)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must be (N, 2) (valence, arousal), got shape {arr.shape}")
    return arr


# ----------------------------------------------------------------------------------------------
# Frame-level metrics


def ccc(pred: ArrayLike, target: ArrayLike, mask: ArrayLike | None = None, clip: bool = True) -> float:
    """Concordance correlation coefficient over the valid frames.

    ``2 cov / (var_p + var_t + (mean_p - mean_t)^2)`` with population statistics; 0 when either
    side is constant (including a single valid frame).
    """
    p, t = _valid_pair(pred, target, mask, clip)
    if _is_constant(p) or _is_constant(t):
        return 0.0
    mp, mt = p.mean(), t.mean()
    dp, dt = p - mp, t - mt
    cov = np.mean(dp * dt)
    return float(2.0 * cov / (np.mean(dp * dp) + np.mean(dt * dt) + (mp - mt) ** 2))


def pcc(pred: ArrayLike, target: ArrayLike, mask: ArrayLike | None = None, clip: bool = True) -> float:
    """Pearson correlation over the valid frames; 0 when either side is constant."""
    p, t = _valid_pair(pred, target, mask, clip)
    if _is_constant(p) or _is_constant(t):
        return 0.0
    dp, dt = p - p.mean(), t - t.mean()
    r = np.mean(dp * dt) / np.sqrt(np.mean(dp * dp) * np.mean(dt * dt))
    # Rounding can push |r| a hair above 1 for (anti-)proportional inputs.
    return float(np.clip(r, -1.0, 1.0))


def rmse(pred: ArrayLike, target: ArrayLike, mask: ArrayLike | None = None, clip: bool = True) -> float:
    """Root mean squared error over the valid frames."""
    p, t = _valid_pair(pred, target, mask, clip)
    return float(np.sqrt(np.mean((p - t) ** 2)))


def sagr(pred: ArrayLike, target: ArrayLike, mask: ArrayLike | None = None, clip: bool = True) -> float:
    """Sign agreement ``mean(sign(target) == sign(pred))`` over the valid frames.

    As in EmoNet's evaluation, ``sign(0) = 0``: a zero label only agrees with an exact zero prediction.
    """
    p, t = _valid_pair(pred, target, mask, clip)
    return float(np.mean(np.sign(p) == np.sign(t)))


def va_metrics(
    pred: ArrayLike | Mapping[str, ArrayLike],
    target: ArrayLike | Mapping[str, ArrayLike],
    mask: ArrayLike | None = None,
    clip: bool = True,
) -> dict[str, float]:
    """CCC, PCC, RMSE and SAGR of valence and arousal, their mean CCC and the ABAW score.

    pred, target: ``(N, 2)`` or mappings ``{"valence": (N,), "arousal": (N,)}``; mask: ``(N,)``.
    Keys: ``ccc_valence, pcc_valence, rmse_valence, sagr_valence`` (same for arousal), ``ccc_mean``
    and ``p_va`` = 0.5 (CCC_valence + CCC_arousal), the Aff-Wild2 challenge score (equal to
    ``ccc_mean``; both names are kept because papers report both).
    """
    p, t = _as_va(pred, "pred"), _as_va(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred has {p.shape[0]} frames but target has {t.shape[0]}")
    m = _mask_array(mask, p.shape[:1])
    out: dict[str, float] = {}
    for i, dim in enumerate(DIMS):
        for name, fn in (("ccc", ccc), ("pcc", pcc), ("rmse", rmse), ("sagr", sagr)):
            out[f"{name}_{dim}"] = fn(p[:, i], t[:, i], m, clip)
    out["ccc_mean"] = 0.5 * (out["ccc_valence"] + out["ccc_arousal"])
    out["p_va"] = out["ccc_mean"]
    return out


# ----------------------------------------------------------------------------------------------
# Circumplex quadrants


def quadrant(valence: ArrayLike, arousal: ArrayLike) -> np.ndarray:
    """Quadrant 1-4 of each (valence, arousal) point; zero counts as positive.

    Q1 = (v >= 0, a >= 0), Q2 = (v < 0, a >= 0), Q3 = (v < 0, a < 0), Q4 = (v >= 0, a < 0).
    """
    v = np.asarray(_to_numpy(valence, "valence"), dtype=np.float64)
    a = np.asarray(_to_numpy(arousal, "arousal"), dtype=np.float64)
    if v.shape != a.shape:
        raise ValueError(f"valence has shape {v.shape} but arousal has {a.shape}")
    if not (np.all(np.isfinite(v)) and np.all(np.isfinite(a))):
        raise ValueError("valence/arousal hold NaN/inf: a quadrant needs finite values")
    q = np.where(a >= 0, np.where(v >= 0, 1, 2), np.where(v < 0, 3, 4))
    return q.astype(np.int64)


def quadrant_accuracy(
    pred: ArrayLike | Mapping[str, ArrayLike],
    target: ArrayLike | Mapping[str, ArrayLike],
    mask: ArrayLike | None = None,
    clip: bool = True,
) -> float:
    """Fraction of valid frames whose predicted quadrant equals the labelled one (chance 0.25).

    pred, target: ``(N, 2)`` or valence/arousal mappings; mask: ``(N,)``.
    """
    p, t = _as_va(pred, "pred"), _as_va(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred has {p.shape[0]} frames but target has {t.shape[0]}")
    m = _mask_array(mask, p.shape[:1])
    # _valid_pair checks emptiness and NaNs per dimension; clipping does not change a quadrant.
    pv, tv = _valid_pair(p[:, 0], t[:, 0], m, clip)
    pa, ta = _valid_pair(p[:, 1], t[:, 1], m, clip)
    return float(np.mean(quadrant(pv, pa) == quadrant(tv, ta)))


# ----------------------------------------------------------------------------------------------
# Per-clip results


def _iter_clips(clips: Clips) -> list[tuple[Any, np.ndarray, np.ndarray, np.ndarray]]:
    """``[(clip_id, pred (T, 2), target (T, 2), mask (T,))]`` from any accepted clip container."""
    if isinstance(clips, Mapping):
        items = list(clips.items())
    elif isinstance(clips, Sequence) and not isinstance(clips, (str, bytes)):
        items = list(enumerate(clips))
    else:
        raise ValueError("clips must be a mapping clip_id -> clip or a sequence of clips")
    out = []
    for cid, c in items:
        if isinstance(c, Mapping):
            if "pred" not in c or "target" not in c:
                raise ValueError(
                    f"clip {cid!r}: mapping needs keys 'pred' and 'target' (and optional 'mask')"
                )
            pred, target, mask = c["pred"], c["target"], c.get("mask")
        elif isinstance(c, (tuple, list)) and len(c) in (2, 3):
            pred, target, mask = c[0], c[1], (c[2] if len(c) == 3 else None)
        else:
            raise ValueError(f"clip {cid!r}: expected (pred, target[, mask]) or a mapping")
        p, t = _as_va(pred, f"clip {cid!r} pred"), _as_va(target, f"clip {cid!r} target")
        if p.shape != t.shape:
            raise ValueError(f"clip {cid!r}: pred has {p.shape[0]} frames but target has {t.shape[0]}")
        m = _mask_array(mask, p.shape[:1], f"clip {cid!r} mask")
        out.append((cid, p, t, m))
    if not out:
        raise ValueError("no clips given")
    return out


def moving_average(x: ArrayLike, window: int, valid: ArrayLike | None = None) -> np.ndarray:
    """Centred moving average along the first axis, same length as ``x``.

    x: ``(T,)`` or ``(T, C)``. Near the edges the window shrinks to the frames that exist, so nothing
    shifts in time. ``valid`` (``(T,)`` bool, e.g. frames with a face) restricts the average to valid
    frames; a frame with no valid neighbour keeps its own value. ``window`` must be odd (1 = none).
    """
    if not isinstance(window, (int, np.integer)) or window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd integer (centred), got {window!r}")
    arr = _to_numpy(x, "x").astype(np.float64)
    if arr.ndim not in (1, 2):
        raise ValueError(f"x must be (T,) or (T, C), got shape {arr.shape}")
    n = arr.shape[0]
    w = _mask_array(valid, (n,), "valid").astype(np.float64)
    if window == 1 or n == 0:
        return arr.copy()
    w_b = w if arr.ndim == 1 else w[:, None]
    # Zero the invalid frames first so that garbage (even NaN) there cannot leak into the sums.
    xw = np.where(w_b > 0, arr, 0.0)
    total = np.zeros_like(arr)
    count = np.zeros_like(w_b)
    half = window // 2
    for k in range(-half, half + 1):
        src = slice(max(0, k), n + min(0, k))
        dst = slice(max(0, -k), n - max(0, k))
        total[dst] += xw[src]
        count[dst] += w_b[src]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / count
    return np.where(count > 0, out, arr)


def smooth_clips(clips: Clips, window: int) -> dict[Any, dict[str, np.ndarray]]:
    """The same clips with each clip's predictions smoothed by :func:`moving_average`.

    Smoothing runs within a clip (never across clip boundaries) over every frame: the mask marks
    labels, and a frame without a label still has a prediction. Returns ``{clip_id: {"pred",
    "target", "mask"}}``, ready for :func:`per_clip_summary`.
    """
    return {
        cid: {"pred": moving_average(p, window), "target": t, "mask": m}
        for cid, p, t, m in _iter_clips(clips)
    }


def _clip_ccc(p: np.ndarray, t: np.ndarray, clip: bool) -> tuple[float, bool]:
    """(CCC, degenerate): degenerate when under 2 frames or a side is constant, CCC is then 0."""
    if p.size < 2:
        return 0.0, True
    pc = np.clip(p, -1.0, 1.0) if clip else p
    degenerate = _is_constant(pc) or _is_constant(t)
    return ccc(p, t, clip=clip), degenerate


def per_clip_summary(
    clips: Clips, threshold: float = 0.5, clip: bool = True
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Per-clip CCC of valence and arousal, summarised as AFEW-VA papers report it.

    Returns ``(summary, table)``. ``table`` has one row per clip (index ``clip_id``) with columns
    ``n_frames`` (valid frames), ``ccc_valence``, ``ccc_arousal``, ``degenerate_valence``,
    ``degenerate_arousal`` (True when the clip has fewer than 2 valid frames or a constant prediction
    or label: its CCC is then 0 by convention and counts as a clip below the threshold), and the
    clip-mean quadrants ``quadrant_pred`` / ``quadrant_target``. ``summary`` holds, for each dim,
    ``ccc_<dim>_min/_max/_mean`` over clips, ``n_clips_<dim>_ge`` / ``n_clips_<dim>_lt`` (clips with
    CCC >= / < ``threshold``) and ``ccc_<dim>_combined`` (all clips' valid frames concatenated), plus
    ``quadrant_acc_clip`` (clip-mean quadrants), ``quadrant_acc_frame``, ``n_clips``, ``threshold``
    and ``empty_clips`` (ids of clips without any valid frame: left out of everything, with a warning).
    """
    rows, empty = [], []
    all_p, all_t = [], []
    for cid, p, t, m in _iter_clips(clips):
        p, t = p[m], t[m]
        if p.shape[0] == 0:
            empty.append(cid)
            continue
        for arr, name in ((p, "pred"), (t, "target")):
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"clip {cid!r}: {name} holds NaN/inf among the valid frames; mask them out")
        row: dict[str, Any] = {"clip_id": cid, "n_frames": int(p.shape[0])}
        for i, dim in enumerate(DIMS):
            row[f"ccc_{dim}"], row[f"degenerate_{dim}"] = _clip_ccc(p[:, i], t[:, i], clip)
        pm = np.clip(p, -1.0, 1.0).mean(axis=0) if clip else p.mean(axis=0)
        tm = t.mean(axis=0)
        row["quadrant_pred"] = int(quadrant(pm[0], pm[1]))
        row["quadrant_target"] = int(quadrant(tm[0], tm[1]))
        rows.append(row)
        all_p.append(p)
        all_t.append(t)
    if empty:
        warnings.warn(
            f"{len(empty)} clip(s) have no valid frame and are left out: {empty[:10]}", stacklevel=2
        )
    if not rows:
        raise ValueError("no clip has a valid frame to score")
    table = pd.DataFrame(rows).set_index("clip_id")
    cat_p, cat_t = np.concatenate(all_p), np.concatenate(all_t)
    summary: dict[str, Any] = {"n_clips": len(rows), "threshold": float(threshold)}
    for i, dim in enumerate(DIMS):
        c = table[f"ccc_{dim}"].to_numpy()
        summary[f"ccc_{dim}_min"] = float(c.min())
        summary[f"ccc_{dim}_max"] = float(c.max())
        summary[f"ccc_{dim}_mean"] = float(c.mean())
        summary[f"n_clips_{dim}_ge"] = int(np.sum(c >= threshold))
        summary[f"n_clips_{dim}_lt"] = int(np.sum(c < threshold))
        summary[f"ccc_{dim}_combined"] = ccc(cat_p[:, i], cat_t[:, i], clip=clip)
    summary["quadrant_acc_clip"] = float(np.mean(table["quadrant_pred"] == table["quadrant_target"]))
    summary["quadrant_acc_frame"] = quadrant_accuracy(cat_p, cat_t, clip=clip)
    summary["empty_clips"] = empty
    return summary, table


def clip_quadrant_accuracy(clips: Clips, clip: bool = True) -> float:
    """Fraction of clips whose clip-mean predicted quadrant equals the clip-mean labelled one.

    Means run over each clip's valid frames; clips without a valid frame are left out.
    """
    hits = []
    for cid, p, t, m in _iter_clips(clips):
        if not m.any():
            continue
        p, t = p[m], t[m]
        if not (np.all(np.isfinite(p)) and np.all(np.isfinite(t))):
            raise ValueError(f"clip {cid!r}: NaN/inf among the valid frames; mask them out")
        pm = (np.clip(p, -1.0, 1.0) if clip else p).mean(axis=0)
        tm = t.mean(axis=0)
        hits.append(quadrant(pm[0], pm[1]) == quadrant(tm[0], tm[1]))
    if not hits:
        raise ValueError("no clip has a valid frame to score")
    return float(np.mean(hits))


def format_clip_summary(summary: Mapping[str, Any], digits: int = 3, title: str | None = None) -> str:
    """The per-clip summary as a markdown table, one row for valence and one for arousal."""
    thr = summary["threshold"]
    lines = []
    if title:
        lines += [f"**{title}**", ""]
    lines += [
        f"| dimension | min CCC | max CCC | mean CCC | clips CCC >= {thr:g} | clips CCC < {thr:g} "
        "| combined CCC |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    def fmt(x: float) -> str:
        # "-0.000" for a tiny negative rounding residue reads like a finding; print it as 0.
        return f"{x + 0.0:.{digits}f}" if abs(x) >= 0.5 * 10.0**-digits else f"{0.0:.{digits}f}"

    for dim in DIMS:
        lines.append(
            f"| {dim} | {fmt(summary[f'ccc_{dim}_min'])} | {fmt(summary[f'ccc_{dim}_max'])} "
            f"| {fmt(summary[f'ccc_{dim}_mean'])} | {summary[f'n_clips_{dim}_ge']} "
            f"| {summary[f'n_clips_{dim}_lt']} | {fmt(summary[f'ccc_{dim}_combined'])} |"
        )
    lines.append("")
    lines.append(
        f"{summary['n_clips']} clips; quadrant accuracy "
        f"{100 * summary['quadrant_acc_frame']:.1f} % of frames, "
        f"{100 * summary['quadrant_acc_clip']:.1f} % of clips (chance {100 * QUADRANT_CHANCE:.0f} %). "
        "Clips with fewer than 2 valid frames or a constant prediction or label count as CCC 0."
    )
    return "\n".join(lines)


__all__ = [
    "ccc",
    "pcc",
    "rmse",
    "sagr",
    "va_metrics",
    "quadrant",
    "quadrant_accuracy",
    "clip_quadrant_accuracy",
    "moving_average",
    "smooth_clips",
    "per_clip_summary",
    "format_clip_summary",
    "QUADRANT_CHANCE",
]
