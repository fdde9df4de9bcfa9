"""Metrics against hand-computed values and the definitions in docs/FORMATS.md."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avfusion import metrics as M

# A 4-frame example worked out by hand:
# target mean 0, var (0.16 + 0.04 + 0.04 + 0.16) / 4 = 0.1
# pred mean 0.1, deviations (-0.3, -0.1, -0.1, 0.5), var 0.36 / 4 = 0.09
# cov (0.12 + 0.02 - 0.02 + 0.20) / 4 = 0.08
# CCC = 2 * 0.08 / (0.1 + 0.09 + 0.1 ** 2) = 0.8; PCC = 0.08 / sqrt(0.1 * 0.09)
# errors (0.2, 0.2, -0.2, 0.2) -> RMSE 0.2; signs (-,-,+,+) vs (-,0,0,+) -> SAGR 0.5
TARGET4 = [-0.4, -0.2, 0.2, 0.4]
PRED4 = [-0.2, 0.0, 0.0, 0.6]


def test_hand_computed_example() -> None:
    assert M.ccc(PRED4, TARGET4) == pytest.approx(0.8, abs=1e-12)
    assert M.pcc(PRED4, TARGET4) == pytest.approx(0.08 / math.sqrt(0.1 * 0.09), abs=1e-12)
    assert M.rmse(PRED4, TARGET4) == pytest.approx(0.2, abs=1e-12)
    assert M.sagr(PRED4, TARGET4) == 0.5


def test_definitions_on_random_data() -> None:
    rng = np.random.default_rng(0)
    t = rng.uniform(-1, 1, 200)
    p = np.clip(0.6 * t + 0.3 * rng.normal(size=200) + 0.1, -1, 1)
    # The second form of CCC in docs/FORMATS.md, from independently computed pieces.
    r = np.corrcoef(p, t)[0, 1]
    expected = 2 * r * p.std() * t.std() / (p.var() + t.var() + (p.mean() - t.mean()) ** 2)
    assert M.ccc(p, t) == pytest.approx(expected, rel=1e-12)
    assert M.pcc(p, t) == pytest.approx(r, rel=1e-12)


def test_perfect_negated_shifted_constant() -> None:
    t = np.linspace(-0.8, 0.8, 50)
    assert M.ccc(t, t) == pytest.approx(1.0)
    assert M.pcc(t, t) == pytest.approx(1.0)
    assert M.rmse(t, t) == 0.0
    assert M.ccc(-t, t) == pytest.approx(-1.0)
    assert M.pcc(-t, t) == pytest.approx(-1.0)
    shifted = t + 0.1
    assert M.pcc(shifted, t) == pytest.approx(1.0)
    assert M.ccc(shifted, t) < M.pcc(shifted, t) - 0.01
    for const in (np.zeros(50), np.full(50, 0.1)):
        for a, b in ((const, t), (t, const)):
            assert M.ccc(a, b) == 0.0
            assert M.pcc(a, b) == 0.0
    # Both constant and equal: no variance anywhere, still 0 and not NaN.
    assert M.ccc(np.full(5, 0.3), np.full(5, 0.3)) == 0.0
    assert M.ccc([0.5], [0.5]) == 0.0


def test_predictions_are_clipped() -> None:
    t = np.array([-1.0, -0.5, 0.5, 1.0])
    p = np.array([-3.0, -0.5, 0.5, 3.0])
    assert M.rmse(p, t) == 0.0
    assert M.ccc(p, t) == pytest.approx(1.0)
    assert M.rmse(p, t, clip=False) == pytest.approx(math.sqrt(2 * 4 / 4))


def test_mask_ignores_garbage() -> None:
    p = np.array(PRED4 + [5.0, np.nan, -7.0])
    t = np.array(TARGET4 + [np.nan, 0.9, -5.0])
    mask = np.array([True] * 4 + [False] * 3)
    for fn in (M.ccc, M.pcc, M.rmse, M.sagr):
        assert fn(p, t, mask) == pytest.approx(fn(PRED4, TARGET4), abs=1e-15)
    va = M.va_metrics(np.stack([p, p], 1), np.stack([t, t], 1), mask)
    assert va["ccc_valence"] == pytest.approx(0.8)


def test_clear_errors() -> None:
    with pytest.raises(ValueError, match="no valid frames"):
        M.ccc([], [])
    with pytest.raises(ValueError, match="no valid frames"):
        M.ccc(PRED4, TARGET4, np.zeros(4, dtype=bool))
    with pytest.raises(ValueError, match="frames"):
        M.ccc(PRED4, TARGET4[:3])
    with pytest.raises(ValueError, match="NaN"):
        M.rmse([0.1, np.nan], [0.1, 0.2])
    with pytest.raises(ValueError, match="boolean"):
        M.ccc(PRED4, TARGET4, np.array([1, 1, 0, 1]))
    with pytest.raises(ValueError, match="mask has shape"):
        M.ccc(PRED4, TARGET4, np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="1-D"):
        M.ccc(np.zeros((4, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="arousal"):
        M.va_metrics({"valence": PRED4}, {"valence": TARGET4, "arousal": TARGET4})


def test_va_metrics_and_torch_input() -> None:
    p = np.stack([PRED4, -np.array(TARGET4)], 1)
    t = np.stack([TARGET4, TARGET4], 1)
    out = M.va_metrics(torch.tensor(p, dtype=torch.float32), t)
    assert out["ccc_valence"] == pytest.approx(0.8, abs=1e-6)
    assert out["ccc_arousal"] == pytest.approx(-1.0, abs=1e-6)
    assert out["p_va"] == pytest.approx(0.5 * (0.8 - 1.0), abs=1e-6)
    assert out["ccc_mean"] == out["p_va"]
    assert out["rmse_valence"] == pytest.approx(0.2, abs=1e-6)
    assert set(out) >= {f"{m}_{d}" for m in ("ccc", "pcc", "rmse", "sagr") for d in ("valence", "arousal")}
    as_dict = M.va_metrics({"valence": p[:, 0], "arousal": p[:, 1]}, {"valence": t[:, 0], "arousal": t[:, 1]})
    assert as_dict["ccc_valence"] == pytest.approx(0.8)
    # bfloat16 tensors and torch masks convert too.
    mask = torch.tensor([True, True, True, False])
    assert M.ccc(torch.tensor(PRED4).bfloat16(), torch.tensor(TARGET4), mask) == pytest.approx(
        M.ccc(PRED4[:3], TARGET4[:3]), abs=1e-2
    )


def test_quadrants() -> None:
    v = np.array([0.0, -0.1, -0.1, 0.2, 0.0])
    a = np.array([0.0, 0.3, -0.3, -0.2, -0.01])
    assert M.quadrant(v, a).tolist() == [1, 2, 3, 4, 4]
    target = np.array([[0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5]])
    pred = np.array([[0.1, 0.9], [0.2, 0.4], [-0.1, -0.1], [-0.3, -0.3]])  # right, wrong, right, wrong
    assert M.quadrant_accuracy(pred, target) == 0.5
    assert M.quadrant_accuracy(pred, target, np.array([True, False, True, False])) == 1.0


def _clip(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> dict:
    return {"pred": pred, "target": target, "mask": mask}


def test_per_clip_summary_counts() -> None:
    t = np.stack([np.linspace(-0.5, 0.5, 10), np.linspace(0.4, -0.4, 10)], 1)  # centred: negation gives -1
    garbage = np.full((3, 2), np.nan)
    clips = {
        "perfect": _clip(t, t),
        "negated": _clip(-t, t),
        "constant": _clip(np.zeros_like(t), t),
        # 0.8-CCC frames followed by masked-out garbage frames.
        "hand": _clip(
            np.concatenate([np.stack([PRED4, PRED4], 1), garbage]),
            np.concatenate([np.stack([TARGET4, TARGET4], 1), garbage]),
            np.array([True] * 4 + [False] * 3),
        ),
        "one_frame": _clip(t[:1], t[:1]),
    }
    summary, table = M.per_clip_summary(clips)
    assert list(table.index) == list(clips)
    assert table.loc["perfect", "ccc_valence"] == pytest.approx(1.0)
    assert table.loc["negated", "ccc_arousal"] == pytest.approx(-1.0)
    assert table.loc["constant", "ccc_valence"] == 0.0 and table.loc["constant", "degenerate_valence"]
    assert table.loc["one_frame", "ccc_arousal"] == 0.0 and table.loc["one_frame", "degenerate_arousal"]
    assert table.loc["hand", "n_frames"] == 4
    assert table.loc["hand", "ccc_valence"] == pytest.approx(0.8)
    assert not table.loc["hand", "degenerate_valence"]
    for d in ("valence", "arousal"):
        assert summary[f"ccc_{d}_min"] == pytest.approx(-1.0)
        assert summary[f"ccc_{d}_max"] == pytest.approx(1.0)
        assert summary[f"ccc_{d}_mean"] == pytest.approx((1.0 - 1.0 + 0.0 + 0.8 + 0.0) / 5)
        assert summary[f"n_clips_{d}_ge"] == 2
        assert summary[f"n_clips_{d}_lt"] == 3
    assert summary["n_clips"] == 5
    # Combined: every valid frame of every clip in one array.
    valid = [(c["pred"] if c["mask"] is None else c["pred"][c["mask"]]) for c in clips.values()]
    labels = [(c["target"] if c["mask"] is None else c["target"][c["mask"]]) for c in clips.values()]
    assert summary["ccc_valence_combined"] == pytest.approx(
        M.ccc(np.concatenate(valid)[:, 0], np.concatenate(labels)[:, 0])
    )
    text = M.format_clip_summary(summary)
    assert "| valence |" in text and "| arousal |" in text and "CCC >= 0.5" in text


def test_per_clip_summary_accepts_tuples_and_warns_on_empty_clip() -> None:
    t = np.stack([np.linspace(-0.5, 0.5, 6)] * 2, 1)
    clips = [(t, t), (t, t, np.zeros(6, dtype=bool))]
    with pytest.warns(UserWarning, match="no valid frame"):
        summary, table = M.per_clip_summary(clips)
    assert summary["n_clips"] == 1 and summary["empty_clips"] == [1]
    assert list(table.index) == [0]


def test_clip_quadrant_accuracy() -> None:
    # Frame-wise, clip "a" is in the right quadrant only half the time, but its mean is right.
    a_t = np.array([[0.5, 0.5]] * 4)
    a_p = np.array([[0.9, 0.9], [0.9, 0.9], [-0.1, 0.2], [-0.1, 0.2]])
    b_t = np.array([[-0.5, -0.5]] * 2)
    b_p = np.array([[0.5, -0.5]] * 2)
    clips = {"a": (a_p, a_t), "b": (b_p, b_t)}
    assert M.clip_quadrant_accuracy(clips) == 0.5
    summary, table = M.per_clip_summary(clips)
    assert summary["quadrant_acc_clip"] == 0.5
    assert summary["quadrant_acc_frame"] == pytest.approx(2 / 6)
    assert table.loc["a", "quadrant_pred"] == 1 and table.loc["b", "quadrant_pred"] == 4


def test_moving_average() -> None:
    x = np.array([0.0, 3.0, 6.0, 0.0, 3.0])
    out = M.moving_average(x, 3)
    # Centred; at the edges only the frames that exist are averaged.
    np.testing.assert_allclose(out, [1.5, 3.0, 3.0, 3.0, 1.5])
    assert M.moving_average(np.arange(7.0), 5).shape == (7,)
    # A linear ramp stays put inside the clip (no shift).
    np.testing.assert_allclose(M.moving_average(np.arange(7.0), 3)[1:-1], np.arange(1.0, 6.0))
    const = np.full((11, 2), 0.37)
    np.testing.assert_allclose(M.moving_average(const, 5), const, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(M.moving_average(x, 1), x)
    # Invalid frames neither contribute nor get garbage.
    y = np.array([1.0, np.nan, 3.0])
    np.testing.assert_allclose(M.moving_average(y, 3, np.array([True, False, True])), [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="odd"):
        M.moving_average(x, 4)


def test_smooth_clips_stays_within_clip() -> None:
    t = np.stack([np.linspace(-0.5, 0.5, 9)] * 2, 1)
    clips = {"a": (t, t), "b": (np.full_like(t, 0.2), t)}
    smoothed = M.smooth_clips(clips, 5)
    assert smoothed["a"]["pred"].shape == t.shape
    np.testing.assert_allclose(smoothed["b"]["pred"], 0.2, atol=1e-15)
    summary, _ = M.per_clip_summary(smoothed)
    assert summary["ccc_valence_max"] > 0.9
