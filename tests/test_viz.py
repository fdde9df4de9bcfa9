"""Pictures users read: the prediction plot (axes named valence/arousal, the video and the model in
the title, no-face and no-speech spans shaded, quadrant band, trajectory on the circumplex) and the
evaluation plots (CCC/PCC in the scatter titles, a hexbin for many points, best/median/worst clips
labelled, a quadrant confusion matrix that counts right)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest


def prediction_table(n: int = 100, fps: float = 25.0) -> pd.DataFrame:
    t = np.arange(n) / fps
    face = np.ones(n, bool)
    face[20:30] = False  # one span without a face
    speech = np.ones(n, bool)
    speech[50:60] = speech[70:75] = False  # two spans without speech
    v, a = np.sin(t), np.cos(t)
    valid = face.copy()
    v[~valid] = a[~valid] = np.nan
    from avfusion.predict.predictor import quadrant_names

    return pd.DataFrame({"video": "clip.mp4", "frame": np.arange(n), "timestamp": t, "face_found": face,
                         "speech": pd.array(speech, dtype="boolean"), "valid": valid, "valence": v, "arousal": a,
                         "quadrant": quadrant_names(v, a)})


def texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(lambda o: hasattr(o, "get_text") and hasattr(o, "get_position"))]


def test_prediction_figure_names_video_model_and_axes(tmp_path):
    from matplotlib.patches import Polygon, Rectangle

    from avfusion.viz import QUADRANT_LABELS, plot_prediction, prediction_figure, pyplot

    table = prediction_table()
    fig = prediction_figure(table, video="clip.mp4", model="exp-best")
    ax_v, ax_a, ax_q, ax_c = fig.axes[:4]
    assert "clip.mp4" in fig._suptitle.get_text() and "exp-best" in fig._suptitle.get_text()
    assert (ax_v.get_ylabel(), ax_a.get_ylabel()) == ("valence", "arousal")
    assert (ax_c.get_xlabel(), ax_c.get_ylabel()) == ("valence", "arousal")
    assert "value" not in (ax_v.get_ylabel(), ax_a.get_ylabel())
    labels = " ".join(texts(fig)).replace("\n", "-")
    for q in QUADRANT_LABELS:
        assert q in labels
    legend = [t.get_text() for t in ax_v.get_legend().get_texts()]
    assert {"valence", "arousal", "no face", "no speech"} <= set(legend)

    def spans(ax, hatched):
        return [p for p in ax.patches if isinstance(p, (Polygon, Rectangle)) and bool(p.get_hatch()) == hatched]

    # One grey span without a face, two hatched spans without speech, on both time axes.
    for ax in (ax_v, ax_a):
        assert len(spans(ax, False)) == 1 and len(spans(ax, True)) == 2
        span = spans(ax, False)[0]
        x = np.asarray(span.get_xy())[:, 0] if isinstance(span, Polygon) else \
            np.array([span.get_x(), span.get_x() + span.get_width()])
        assert x.min() == pytest.approx(0.8) and x.max() == pytest.approx(1.2)  # frames 20-29 at 25 fps
    # The quadrant band covers the valid frames only: as many runs as quadrant changes + gaps.
    q = table["quadrant"].where(table["valid"])
    runs = int(((q != q.shift()) & q.notna()).sum())
    assert len(ax_q.patches) == runs
    # The trajectory has one segment per pair of consecutive valid frames.
    segs = ax_c.collections[0].get_segments()
    ok = table["valid"].to_numpy()
    assert len(segs) == int((ok[1:] & ok[:-1]).sum())
    pyplot().close(fig)

    out = plot_prediction(table, tmp_path / "p.png", video="clip.mp4", model="m")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_prediction_figure_without_speech_column_or_values():
    from avfusion.viz import prediction_figure, pyplot

    table = prediction_table(20).drop(columns="speech")
    table["valid"] = False
    table[["valence", "arousal"]] = np.nan
    fig = prediction_figure(table, video="v.mp4", model="m")
    assert "no speech" not in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    pyplot().close(fig)


def fake_videos(n_clips: int, frames: int, seed: int = 0):
    from avfusion.metrics import ccc

    rng = np.random.default_rng(seed)
    videos, rows = {}, {}
    for c in range(n_clips):
        target = rng.uniform(-1, 1, (frames, 2))
        noise = 0.1 + 0.4 * c  # clip 0 is the best, the last the worst
        pred = np.clip(target + rng.normal(0, noise, target.shape), -1, 1)
        vid = f"clip{c}"
        videos[vid] = SimpleNamespace(pred=pred, target=target, scored=np.ones(frames, bool),
                                      label_mask=np.ones(frames, bool), counts=np.ones(frames),
                                      timestamps=np.arange(frames) / 25, n_frames=frames)
        rows[vid] = {"ccc_valence": ccc(pred[:, 0], target[:, 0]), "ccc_arousal": ccc(pred[:, 1], target[:, 1])}
    per_clip = pd.DataFrame.from_dict(rows, orient="index")
    # Mean CCCs 0.8, 0.6, ... by clip number, listed out of order.
    per_clip["ccc_valence"] = per_clip["ccc_arousal"] = 0.8 - 0.2 * np.arange(n_clips)
    return videos, per_clip.iloc[rng.permutation(n_clips)]


def test_evaluation_plots(tmp_path):
    from avfusion.metrics import ccc, pcc, quadrant
    from avfusion.viz import (HEXBIN_ABOVE, clip_picks, clips_figure, confusion_figure, pyplot, quadrant_confusion,
                              save_plots, scatter_figure)

    videos, per_clip = fake_videos(5, 40)
    picks = clip_picks(per_clip)
    assert picks == [("best", "clip0"), ("median", "clip2"), ("worst", "clip4")]
    fig = clips_figure(videos, per_clip, picks)
    titles = [ax.get_title() for ax in fig.axes]
    assert any(t.startswith("best clip: clip0") for t in titles)
    assert any(t.startswith("median clip: clip2") for t in titles)
    assert any(t.startswith("worst clip: clip4") for t in titles)
    pyplot().close(fig)
    assert [label for label, _ in clip_picks(per_clip.iloc[:1])] == ["best"]

    pred = np.concatenate([v.pred for v in videos.values()])
    target = np.concatenate([v.target for v in videos.values()])
    fig = scatter_figure(pred, target, "model m")
    for i, (ax, dim) in enumerate(zip(fig.axes, ("valence", "arousal"))):
        title = ax.get_title()
        assert f"CCC {ccc(pred[:, i], target[:, i]):.3f}" in title and f"PCC {pcc(pred[:, i], target[:, i]):.3f}" in title
        assert title.startswith(dim)
        assert len(ax.collections) == 1 and type(ax.collections[0]).__name__ == "PathCollection"  # scatter
    pyplot().close(fig)
    many = np.random.default_rng(1).uniform(-1, 1, (HEXBIN_ABOVE + 1, 2))
    fig = scatter_figure(many, many, "")
    assert type(fig.axes[0].collections[0]).__name__ == "PolyCollection"  # hexbin
    pyplot().close(fig)

    m = quadrant_confusion(pred, target)
    assert m.sum() == len(pred) and np.trace(m) == int((quadrant(*pred.T) == quadrant(*target.T)).sum())
    # Row = true quadrant: a true Q2 (v<0, a>=0) predicted Q1 counts in row 1, column 0.
    one = quadrant_confusion(np.array([[0.5, 0.5]]), np.array([[-0.5, 0.5]]))
    assert one[1, 0] == 1 and one.sum() == 1
    fig = confusion_figure(pred, target)
    assert f"{100 * np.trace(m) / m.sum():.1f} %" in fig.axes[0].get_title()
    pyplot().close(fig)

    paths = save_plots(videos, per_clip, tmp_path, title="model exp/best, test part")
    assert {p.name for p in paths} == {"scatter.png", "per_clip_ccc_hist.png", "clips_over_time.png",
                                       "quadrant_confusion.png"}
    assert all(p.stat().st_size > 1000 for p in paths)


def test_evaluation_plot_title():
    from avfusion.evaluation.report import plot_title

    assert plot_title({"model": "runs/exp/best", "part": "test", "masked": "audio"}) == \
        "model exp/best, test part, audio masked"
    assert plot_title(None) == ""
