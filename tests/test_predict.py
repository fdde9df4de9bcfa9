"""Predictor: per-frame tables for a short mp4 with an audio track and one without (audio masked),
the CSV / plot / overlay outputs, and the `predict` subcommand parser."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

COLUMNS = ["video", "frame", "timestamp", "track_id", "face_found", "face_x", "face_y", "face_w", "face_h",
           "face_score", "speech", "speech_prob", "valid", "valence", "arousal", "quadrant"]
from conftest import NEURAL_AV  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> tuple[Path, Path]:
    """A synthetic talking-face mp4 with AAC audio, and the same frames re-encoded without audio."""
    import av

    from avfusion.synthetic import SyntheticConfig, generate_dataset
    from avfusion.data.video import VideoFile

    root = tmp_path_factory.mktemp("videos")
    generate_dataset(root / "syn", SyntheticConfig(clips=1, frames=12, size=64, pair=False, gaps=False))
    with_audio = root / "syn" / "videos" / "001.mp4"
    frames = VideoFile(with_audio).get_batch(list(range(12)))
    silent = root / "silent.mp4"
    with av.open(str(silent), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        for f in frames:
            for packet in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return with_audio, silent


def tiny_model():
    import avfusion
    from avfusion.config import ModelConfig, from_dict

    torch.manual_seed(0)
    return avfusion.create_model(from_dict(ModelConfig, NEURAL_AV))


def check_table(table: pd.DataFrame, path: Path) -> None:
    from avfusion.data.video import VideoFile

    video = VideoFile(path)
    assert list(table.columns) == COLUMNS  # an AV model has no expression probabilities
    assert len(table) == len(video)
    assert (table["video"] == str(path)).all()
    np.testing.assert_array_equal(table["frame"], np.arange(len(video)))
    np.testing.assert_allclose(table["timestamp"], video.timestamps, atol=1e-6)
    for dim in ("valence", "arousal"):
        v = table[dim].to_numpy()
        assert np.isfinite(v).all() and (np.abs(v) <= 1).all()
    assert table["face_found"].all() and table["valid"].all()  # the 'full' backend: the frame is the face
    assert (table["track_id"] == 0).all()
    w, h = video.get_batch([0]).shape[2:0:-1]
    np.testing.assert_array_equal(table[["face_x", "face_y", "face_w", "face_h"]].to_numpy(),
                                  np.tile([0, 0, w, h], (len(table), 1)))
    expected = np.where(table["valence"] >= 0, np.where(table["arousal"] >= 0, "pleasant-activated",
                                                       "pleasant-deactivated"),
                        np.where(table["arousal"] >= 0, "unpleasant-activated", "unpleasant-deactivated"))
    np.testing.assert_array_equal(table["quadrant"], expected)


def test_predict_with_and_without_audio(videos, tmp_path):
    from avfusion.data.video import VideoFile
    from avfusion.predict import Predictor

    with_audio, silent = videos
    model = tiny_model()
    # speech="off": the synthetic voice is a tone, not speech; here the whole track must count.
    predictor = Predictor(model, clip_len=8, device="cpu", face_backend="full", speech="off")
    out = tmp_path / "out"
    table = predictor.predict_video(with_audio, out_dir=out, overlay=True)
    check_table(table, with_audio)
    assert table["speech"].isna().all()  # not looked for
    saved = pd.read_csv(out / "001_va.csv")
    assert list(saved.columns) == COLUMNS
    pd.testing.assert_frame_equal(saved.drop(columns="speech"), table.drop(columns="speech"), check_dtype=False)
    summary = json.loads((out / "001_summary.json").read_text())
    assert summary["frames"] == 12 and summary["frames_with_face"] == 12 and summary["valid_frames"] == 12
    assert summary["valence_mean"] == pytest.approx(table["valence"].mean(), abs=1e-5)
    assert summary["arousal_std"] == pytest.approx(table["arousal"].std(ddof=0), abs=1e-5)
    assert summary["frames_with_speech"] is None and summary["options"]["speech"] == "off"
    assert sum(summary["seconds_per_quadrant"].values()) == pytest.approx(summary["duration_s"], abs=1e-3)
    assert (out / "001_va.png").stat().st_size > 1000
    assert len(VideoFile(out / "001_overlay.mp4")) == len(table)

    with pytest.warns(RuntimeWarning, match="no audio stream"):
        quiet = predictor.predict_video(silent)
    check_table(quiet, silent)

    # The audio really is masked: other audio-encoder weights change the predictions of the video
    # with a voice, and leave those of the silent one untouched.
    with torch.no_grad():
        for p in model.audio_encoder.parameters():
            p.add_(torch.randn_like(p))
    table2 = predictor.predict_video(with_audio)
    with pytest.warns(RuntimeWarning, match="no audio stream"):
        quiet2 = predictor.predict_video(silent)
    assert not np.allclose(table2["valence"], table["valence"], atol=1e-4)
    np.testing.assert_allclose(quiet2[["valence", "arousal"]], quiet[["valence", "arousal"]], atol=1e-6)


def test_predict_command_on_exported_model(videos, tmp_path, capsys):
    from avfusion import save_pretrained
    from avfusion.cli import predict

    save_pretrained(tiny_model(), tmp_path / "model")
    args = predict.parse_args([str(videos[0]), "--model", str(tmp_path / "model"), "--out",
                              str(tmp_path / "pred"), "--face-backend", "full", "--clip-len", "8",
                              "--device", "cpu", "--no-plot", "--speech", "off"])
    assert args.func(args) == 0
    table = pd.read_csv(tmp_path / "pred" / "001_va.csv")
    check_table(table, videos[0])
    assert "12 frames, face found in 100 %" in capsys.readouterr().out
    assert not (tmp_path / "pred" / "001_va.png").exists()


def test_predict_bad_input(tmp_path):
    from avfusion.data.video import VideoDecodeError
    from avfusion.predict import Predictor

    predictor = Predictor(tiny_model(), clip_len=8, device="cpu", face_backend="full")
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        predictor.predict_video(tmp_path / "missing.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    with pytest.raises(VideoDecodeError, match="bad.mp4"):
        predictor.predict_video(bad)
    with pytest.raises(ValueError, match="temporal range"):
        Predictor(tiny_model(), clip_len=10_000)
