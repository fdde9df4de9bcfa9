"""Which face `avfusion predict` reads: tracks across frames so the person never switches, one
warning when several people appear, one row per face with `--faces all`; and on real face videos
(AVFUSION_TEST_MEDIA) every column, NaN where no face is, and a summary that counts right."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from avfusion.data.faces import Detection

pytestmark = pytest.mark.usefixtures("one_thread")

FRAME_BY_FRAME = {"mode": "video", "video": {"name": "emonet", "n_expression": 8, "width": 16, "num_modules": 1,
                                             "n_blocks": 1, "frozen": True}, "audio": None, "fusion": None}
YUNET = os.environ.get("AVFUSION_TEST_YUNET")
MEDIA = os.environ.get("AVFUSION_TEST_MEDIA")
needs_yunet = pytest.mark.skipif(not (YUNET and Path(YUNET).is_file()),
                                 reason="set AVFUSION_TEST_YUNET to the YuNet onnx file")
needs_media = pytest.mark.skipif(not (MEDIA and Path(MEDIA).is_dir() and YUNET and Path(YUNET).is_file()),
                                 reason="set AVFUSION_TEST_MEDIA (real face videos) and AVFUSION_TEST_YUNET")


def tiny_emonet():
    import avfusion
    from avfusion.config import ModelConfig, from_dict

    torch.manual_seed(0)
    return avfusion.create_model(from_dict(ModelConfig, FRAME_BY_FRAME)).eval()


# --- the tracker alone -------------------------------------------------------------------------


def two_people(n: int = 40, seed: int = 0) -> list[list[Detection]]:
    """Two similar faces side by side, jittering, the bigger one alternating; listed in random order."""
    rng = np.random.default_rng(seed)
    frames = []
    for t in range(n):
        dets = []
        for cx in (100.0, 300.0):
            side = 80 + 6 * ((t + (cx > 200)) % 2) + rng.normal(0, 1)
            x, y = cx + rng.normal(0, 3) - side / 2, 100 + rng.normal(0, 3)
            dets.append(Detection((x, y, side, side * 1.2), 0.9))
        rng.shuffle(dets)
        frames.append(dets)
    return frames


def test_tracker_keeps_two_people_apart():
    from avfusion.data.tracking import FaceTracker, main_track

    frames = two_people()
    # The scenario is a hard one for "the largest face per frame": that choice changes sides.
    largest = [max(d, key=lambda x: x.area).center[0] < 200 for d in frames]
    assert sum(a != b for a, b in zip(largest, largest[1:])) > 10

    tracker = FaceTracker()
    side_id: dict[bool, int] = {}
    for t, dets in enumerate(frames):
        ids = tracker.update(t, dets)
        for d, i in zip(dets, ids):  # each person keeps their id
            assert side_id.setdefault(d.center[0] < 200, i) == i
    assert sorted(side_id.values()) == [0, 1]
    tracks = tracker.tracks
    assert len(tracks) == 2 and [t.n_frames for t in tracks] == [40, 40]
    for tr in tracks:
        xs = np.asarray(tr.boxes)[:, 0]
        assert xs.max() < 200 or xs.min() > 200  # one side only
    assert main_track(tracks) in tracks


def test_tracker_gaps_new_people_and_main_choice():
    from avfusion.data.tracking import FaceTracker, main_track

    tracker = FaceTracker(max_gap=3)
    a = Detection((10, 10, 50, 60), 0.9)
    for t in range(10):
        if t not in (4, 5):  # a two-frame miss: still the same track
            tracker.update(t, [a])
    tracker.update(20, [a])  # gone for longer than max_gap: a new track
    tracker.update(21, [Detection((200, 10, 50, 60), 0.9), Detection((14, 12, 50, 60), 0.9)])
    tracks = tracker.tracks
    assert [t.n_frames for t in tracks] == [8, 2, 1]
    assert tracks[0].frames == [0, 1, 2, 3, 6, 7, 8, 9]
    assert main_track(tracks).id == 0
    boxes, scores = tracks[0].per_frame(12)
    assert np.isnan(boxes[[4, 5, 10, 11]]).all() and np.isfinite(boxes[[0, 9]]).all()
    with pytest.raises(ValueError, match="increasing"):
        tracker.update(21, [])
    # Ties in length: the bigger face.
    big = FaceTracker()
    for t in range(5):
        big.update(t, [Detection((0, 0, 20, 20), 0.9), Detection((100, 0, 40, 40), 0.9)])
    assert main_track(big.tracks).mean_area == 1600
    assert main_track([]) is None


# --- real YuNet on two faces ---------------------------------------------------------------------


def write_video(path: Path, frames: np.ndarray, fps: int = 25) -> Path:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            for packet in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return path


@pytest.fixture(scope="module")
def two_faces(tmp_path_factory) -> Path:
    """48 frames: skimage's astronaut face twice side by side (the right one mirrored), both
    jittering and breathing in size so that the bigger one changes every few frames."""
    import cv2
    from skimage.data import astronaut

    face = astronaut()[10:230, 120:330]  # 220 x 210 around the face (box 178, 63, 90, 113)
    rng = np.random.default_rng(0)
    frames = np.full((48, 288, 640, 3), 90, np.uint8)
    for t in range(48):
        for k, cx in enumerate((170, 470)):
            scale = 0.9 + 0.05 * np.sin(t / 2.0 + k * np.pi)
            img = cv2.resize(face if k == 0 else face[:, ::-1], None, fx=scale, fy=scale)
            h, w = img.shape[:2]
            x0 = int(cx - w / 2 + rng.integers(-4, 5))
            y0 = int(30 + rng.integers(-4, 5))
            frames[t, y0:y0 + h, x0:x0 + w] = img
    return write_video(tmp_path_factory.mktemp("two") / "two_faces.mp4", frames)


@needs_yunet
def test_two_faces_one_stable_track_and_all_faces(two_faces, tmp_path):
    from avfusion.data.faces import FaceCropper, create_detector
    from avfusion.data.video import VideoFile
    from avfusion.predict import Predictor
    from avfusion.predict.predictor import main_rows

    mid = 320
    # Without tracking, the largest face of each frame changes sides.
    frames = VideoFile(two_faces).get_batch(list(range(48)))
    raw, found = FaceCropper(create_detector("yunet", model_path=YUNET)).raw_boxes(frames)
    assert found.all()
    side = raw[:, 0] < mid
    assert (side[1:] != side[:-1]).sum() >= 3

    model = tiny_emonet()
    main = Predictor(model, device="cpu", yunet_model=YUNET, precision="fp32")
    with pytest.warns(RuntimeWarning, match="2 faces appear") as rec:
        table = main.predict_video(two_faces, out_dir=tmp_path / "main", plot=False)
    assert sum("faces appear" in str(w.message) for w in rec) == 1
    assert len(table) == 48 and table["face_found"].all() and table["valid"].all()
    assert table["track_id"].nunique() == 1
    centres = table["face_x"] + table["face_w"] / 2
    assert (centres < mid).all() or (centres > mid).all()  # never switches
    assert (table["face_score"] > 0.5).all() and table["face_w"].between(60, 120).all()
    summary = json.loads((tmp_path / "main" / "two_faces_summary.json").read_text())
    assert summary["faces_tracked"] == 2 and summary["main_track"] == int(table["track_id"][0])
    assert summary["frames_with_face"] == 48 and summary["valid_frames"] == 48
    expr = [c for c in table.columns if c.startswith("expr_")]
    assert expr == ["expr_neutral", "expr_happy", "expr_sad", "expr_surprise", "expr_fear", "expr_disgust",
                    "expr_anger", "expr_contempt"]
    np.testing.assert_allclose(table[expr].sum(axis=1), 1.0, atol=1e-4)

    every = Predictor(model, device="cpu", yunet_model=YUNET, precision="fp32", faces="all")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "several faces" warning: they were asked for
        both = every.predict_video(two_faces, out_dir=tmp_path / "all")
    assert len(both) == 96 and both["track_id"].nunique() == 2
    assert (both.groupby("frame")["track_id"].nunique() == 2).all()
    for _, rows in both.groupby("track_id"):
        c = rows["face_x"] + rows["face_w"] / 2
        assert len(rows) == 48 and ((c < mid).all() or (c > mid).all())
    # The main face's rows are the `main` table's, and the two people get different values.
    own = both[both["track_id"] == summary["main_track"]].reset_index(drop=True)
    np.testing.assert_allclose(own[["valence", "arousal", "face_x"]], table[["valence", "arousal", "face_x"]],
                               atol=1e-5)
    other = both[both["track_id"] != summary["main_track"]]
    assert not np.allclose(other["valence"].to_numpy(), own["valence"].to_numpy(), atol=1e-4)
    shown = main_rows(both)  # what the plot and the overlay draw: the main face, one row per frame
    assert list(shown["frame"]) == list(range(48)) and (shown["track_id"] == summary["main_track"]).all()
    assert (tmp_path / "all" / "two_faces_va.png").stat().st_size > 1000
    saved = pd.read_csv(tmp_path / "all" / "two_faces_va.csv")
    assert len(saved) == 96 and list(saved.columns) == list(both.columns)
    s2 = json.loads((tmp_path / "all" / "two_faces_summary.json").read_text())
    assert [t["frames"] for t in s2["tracks"]] == [48, 48] and s2["options"]["faces"] == "all"


# --- real face videos ----------------------------------------------------------------------------


@needs_media
def test_real_clips_columns_nan_and_summary(tmp_path, capsys):
    from avfusion import save_pretrained
    from avfusion.cli import predict
    from avfusion.data.video import VideoFile
    from avfusion.predict import COLUMNS

    save_pretrained(tiny_emonet(), tmp_path / "model")
    out = tmp_path / "out"
    code = predict.main([MEDIA, "--model", str(tmp_path / "model"), "--yunet-model", YUNET, "--out", str(out),
                         "--no-plot", "--quiet", "--precision", "fp32", "--device", "cpu"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "Traceback" not in printed.err
    seen = {}
    for name in ("single_face", "no_face", "face_noface"):
        [path] = [p for p in Path(MEDIA).iterdir() if p.stem == name]
        table = pd.read_csv(out / f"{name}_va.csv")
        summary = json.loads((out / f"{name}_summary.json").read_text())
        n = len(VideoFile(path))
        assert list(table.columns[: len(COLUMNS)]) == list(COLUMNS)
        assert [c for c in table.columns if c.startswith("expr_")] == list(table.columns[len(COLUMNS):])
        assert len(table) == n == summary["frames"]
        np.testing.assert_allclose(table["timestamp"], VideoFile(path).timestamps, atol=1e-6)
        face = table["face_found"].to_numpy(bool)
        valid = table["valid"].to_numpy(bool)
        np.testing.assert_array_equal(valid, face)  # a video model: valid where the face is
        values = table[["valence", "arousal", "face_x", "face_y", "face_w", "face_h", "face_score"]].to_numpy()
        assert np.isnan(values[~face]).all() and np.isfinite(values[face]).all()
        assert table["quadrant"][~face].isna().all() and table["quadrant"][face].notna().all()
        assert (table["track_id"][~face] == -1).all()
        assert summary["frames_with_face"] == face.sum() and summary["valid_frames"] == valid.sum()
        assert summary["frames_with_speech"] is None  # a video-only model does not listen
        assert summary["duration_s"] == pytest.approx(VideoFile(path).duration, abs=1e-3)
        per_q = sum(summary["seconds_per_quadrant"].values())
        if valid.any():
            assert summary["valence_mean"] == pytest.approx(table["valence"][valid].mean(), abs=1e-5)
            assert summary["arousal_std"] == pytest.approx(table["arousal"][valid].std(ddof=0), abs=1e-5)
            assert 0 < per_q <= summary["duration_s"] + 1e-6
        assert summary["model"] and summary["avfusion_version"] and summary["options"]["faces"] == "main"
        seen[name] = face.mean()
    assert seen["single_face"] > 0.95 and seen["no_face"] == 0 and 0.1 < seen["face_noface"] < 0.9
    nf = json.loads((out / "no_face_summary.json").read_text())
    assert nf["valence_mean"] is None and nf["arousal_mean"] is None and nf["valid_frames"] == 0
    assert nf["seconds_per_quadrant"] == {q: 0.0 for q in nf["seconds_per_quadrant"]}
    line = next(x for x in printed.out.splitlines() if "no_face.mp4" in x)
    assert "face found in 0 %" in line and "no mean values" in line
    combined = pd.read_csv(out / "predictions.csv")
    assert combined.columns[0] == "video" and combined["video"].nunique() == 3


@needs_yunet
def test_two_faces_all_with_a_temporal_model(two_faces):
    """`--faces all` with an audio-visual model: one fusion pass per face, each face's own values."""
    import avfusion
    from avfusion.config import ModelConfig, from_dict
    from avfusion.predict import Predictor

    from conftest import NEURAL_AV

    torch.manual_seed(0)
    model = avfusion.create_model(from_dict(ModelConfig, NEURAL_AV)).eval()
    p = Predictor(model, clip_len=16, device="cpu", yunet_model=YUNET, precision="fp32", faces="all")
    with pytest.warns(RuntimeWarning, match="no audio stream"):
        table = p.predict_video(two_faces)
    assert len(table) == 96 and table["valid"].all() and table["track_id"].nunique() == 2
    a, b = (rows.reset_index(drop=True) for _, rows in table.groupby("track_id"))
    assert (a["frame"] == b["frame"]).all()
    assert not np.allclose(a["valence"], b["valence"], atol=1e-4)
    assert [c for c in table.columns if c.startswith("expr_")] == []  # the fusion model gives none


# --- a phone clip: stored sideways, shown upright (display matrix) ---------------------------------


def write_rotated(path: Path, upright: np.ndarray, degrees: int, fps: int = 25) -> Path:
    """Frames stored turned by -``degrees`` with a display matrix of ``degrees`` (counter-clockwise),
    as a phone writes a portrait clip: a player shows ``upright``."""
    import av

    stored = np.ascontiguousarray(np.rot90(upright, -(degrees // 90), axes=(1, 2)))
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = stored.shape[2], stored.shape[1], "yuv420p"
        s.set_display_rotation(degrees)
        for f in stored:
            for packet in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return path


def _astronaut_portrait(n: int = 6) -> np.ndarray:
    from skimage.data import astronaut

    return np.repeat(astronaut()[:, 64:448][None], n, axis=0)  # 512 x 384, face box (114, 63, 90, 113)


def test_rotated_phone_clip_is_predicted_upright(tmp_path):
    """The decoded frames are the upright picture (every reading path), and the table's boxes are in
    display coordinates: with the full-frame backend the box is the upright frame."""
    from avfusion import Predictor
    from avfusion.data.video import VideoFile

    upright = _astronaut_portrait()
    path = write_rotated(tmp_path / "phone.mp4", upright, -90)  # stored 384 x 512 (landscape)
    video = VideoFile(path)
    assert video.turns == 3  # -90 degrees: three counter-clockwise quarter turns
    frames = video.get_batch([0, 3])
    seq = next(video.iter_batches(np.arange(len(video)), 8))[1]
    for got in (frames[0], seq[0]):
        assert got.shape == upright.shape[1:]
        assert np.abs(got.astype(int) - upright[0]).mean() < 8  # the picture, not a turned one
    table = Predictor(tiny_emonet(), face_backend="full", speech="off").predict_video(path)
    assert table[["face_w", "face_h"]].iloc[0].tolist() == [384, 512]


@needs_yunet
def test_rotated_phone_clip_face_found_upright(tmp_path):
    """YuNet finds the face of a sideways-stored portrait clip, and its box is where the face is in
    the picture as a player shows it."""
    from avfusion import Predictor

    path = write_rotated(tmp_path / "phone.mp4", _astronaut_portrait(), 90)
    table = Predictor(tiny_emonet(), face_backend="yunet", yunet_model=YUNET, speech="off").predict_video(path)
    assert table["face_found"].all()
    box = table[["face_x", "face_y", "face_w", "face_h"]].median().to_numpy()
    expected = np.array([114.0, 63.0, 90.0, 113.0])  # the astronaut's face in the upright picture
    assert np.abs(box[:2] + box[2:] / 2 - (expected[:2] + expected[2:] / 2)).max() < 20
    assert 0.7 < box[2] / expected[2] < 1.4
