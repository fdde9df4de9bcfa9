"""`avfusion predict --overlay`: an mp4 with the input's frame count and frame rate, an audio stream
when the input has one (none otherwise), the face box and a circumplex dot that moves with the
values, big enough to read at 640x360; the plot's title names the video and the model."""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")

FRAME_BY_FRAME = {"mode": "video", "video": {"name": "emonet", "n_expression": 8, "width": 16, "num_modules": 1,
                                             "n_blocks": 1, "frozen": True}, "audio": None, "fusion": None}


def streams(path: Path) -> dict:
    import av

    with av.open(str(path)) as c:
        v = c.streams.video[0]
        info = {"rate": Fraction(v.average_rate), "size": (v.codec_context.width, v.codec_context.height),
                "audio": [(a.codec_context.name, float(a.duration * a.time_base) if a.duration else None)
                          for a in c.streams.audio]}
        info["frames"] = sum(1 for _ in c.decode(video=0))
    return info


@pytest.fixture(scope="module")
def talking(tmp_path_factory):
    from avfusion.synthetic.talking import write_talking_video

    root = tmp_path_factory.mktemp("overlay")
    with_audio, silent = root / "talk.mp4", root / "mute.mp4"
    write_talking_video(with_audio, seconds=1.2, width=224, height=128, fps=15)
    write_talking_video(silent, seconds=0.8, width=160, height=96, fps=25, audio=False)
    return with_audio, silent


@pytest.mark.filterwarnings("ignore:.*no audio stream")
def test_overlay_keeps_frames_rate_and_audio(talking, tmp_path):
    import avfusion
    from avfusion.predict import Predictor

    torch.manual_seed(0)
    predictor = Predictor(avfusion.create_model("tiny"), device="cpu", face_backend="full", speech="off")
    for path in talking:
        table = predictor.predict_video(path, out_dir=tmp_path, overlay=True)
        src, out = streams(path), streams(tmp_path / f"{path.stem}_overlay.mp4")
        assert out["frames"] == src["frames"] == len(table)
        assert out["rate"] == src["rate"]
        assert min(out["size"]) >= 360  # small inputs are enlarged to stay readable
        if src["audio"]:
            assert len(out["audio"]) == 1 and out["audio"][0][0] == "aac"
            assert out["audio"][0][1] == pytest.approx(src["audio"][0][1], abs=0.15)
        else:
            assert out["audio"] == []
    # Written whole: no temporary file is left beside the outputs.
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


def test_overlay_draws_box_and_moving_dot():
    from avfusion.predict.overlay import draw_frame

    frame = np.full((360, 640, 3), 128, np.uint8)
    row = pd.Series({"face_found": True, "valid": True, "face_x": 200.0, "face_y": 100.0, "face_w": 120.0,
                     "face_h": 150.0, "valence": 0.8, "arousal": 0.5, "quadrant": "pleasant-activated",
                     "speech": True})
    img = draw_frame(frame, row, [(0.8, 0.5)])
    assert img.shape == frame.shape and (frame == 128).all()  # a copy
    green = (img[:, :, 1] > 200) & (img[:, :, 0] < 100)
    # The box's left edge runs down x = 200 between y = 100 and 250.
    assert green[120:240, 199:202].any(axis=1).all()
    assert not green[120:240, 230:290].any()  # inside the box: the picture

    def dot(v: float, a: float) -> np.ndarray:
        r = row.copy()
        r["valence"], r["arousal"] = v, a
        im = draw_frame(frame, r, [(v, a)]).astype(int)
        amber = (im[:, :, 0] > 230) & (im[:, :, 1] > 160) & (im[:, :, 1] < 210) & (im[:, :, 2] < 80)
        amber[:, : 640 - 140] = False  # the circumplex in the bottom-right corner
        amber[: 360 - 140] = False
        ys, xs = np.nonzero(amber)
        assert len(xs), "no dot drawn"
        return np.array([xs.mean(), ys.mean()])

    right, left, up = dot(0.8, 0.0), dot(-0.8, 0.0), dot(0.0, 0.8)
    assert right[0] - left[0] > 50  # valence moves the dot right
    assert up[1] < right[1] - 25  # arousal moves it up

    none = draw_frame(frame, pd.Series({"face_found": False, "valid": False, "valence": np.nan,
                                        "arousal": np.nan}), [(np.nan, np.nan)])
    assert not ((none[:, :, 1] > 200) & (none[:, :, 0] < 100)).any()  # no box without a face


def test_plot_title_names_video_and_model(talking, tmp_path, monkeypatch):
    import avfusion
    import avfusion.viz
    from avfusion import save_pretrained
    from avfusion.config import ModelConfig, from_dict
    from avfusion.predict import Predictor

    torch.manual_seed(0)
    save_pretrained(avfusion.create_model(from_dict(ModelConfig, FRAME_BY_FRAME)), tmp_path / "exp" / "best")
    seen = {}
    real = avfusion.viz.plot_prediction

    def spy(table, path, **kw):
        seen.update(kw)
        return real(table, path, **kw)

    monkeypatch.setattr(avfusion.viz, "plot_prediction", spy)
    predictor = Predictor(tmp_path / "exp" / "best", device="cpu", face_backend="full")
    predictor.predict_video(talking[1], out_dir=tmp_path / "out")
    assert seen["video"] == "mute.mp4"
    assert seen["model"] == "exp-best"  # not just the folder's name ("best")
    assert (tmp_path / "out" / "mute_va.png").stat().st_size > 5000


YUNET = os.environ.get("AVFUSION_TEST_YUNET")
MEDIA = os.environ.get("AVFUSION_TEST_MEDIA")


@pytest.mark.skipif(not (MEDIA and Path(MEDIA, "single_face.mp4").is_file() and YUNET and Path(YUNET).is_file()),
                    reason="set AVFUSION_TEST_MEDIA (real face videos) and AVFUSION_TEST_YUNET")
def test_overlay_of_a_real_face(tmp_path):
    import av

    import avfusion
    from avfusion.config import ModelConfig, from_dict
    from avfusion.predict import Predictor

    torch.manual_seed(0)
    predictor = Predictor(avfusion.create_model(from_dict(ModelConfig, FRAME_BY_FRAME)), device="cpu",
                          yunet_model=YUNET)
    path = Path(MEDIA, "single_face.mp4")
    table = predictor.predict_video(path, out_dir=tmp_path, overlay=True)
    out = tmp_path / "single_face_overlay.mp4"
    src, got = streams(path), streams(out)
    assert got["frames"] == src["frames"] == 72 and got["rate"] == src["rate"] and got["size"] == (640, 360)
    assert len(got["audio"]) == 1
    # The face box is drawn where the table says the face is (frame 36, its left edge).
    with av.open(str(out)) as c:
        img = next(f for k, f in enumerate(c.decode(video=0)) if k == 36).to_ndarray(format="rgb24").astype(int)
    x, y, w, h = table.loc[36, ["face_x", "face_y", "face_w", "face_h"]].round().astype(int)
    green = (img[:, :, 1] > 170) & (img[:, :, 0] < 130) & (img[:, :, 2] < 150)
    assert green[y + h // 4 : y + 3 * h // 4, max(0, x - 3) : x + 4].any(axis=1).mean() > 0.9
