"""Live prediction: `Predictor.stream` yields rows while a file read at its own pace is still being
read (never before a frame's time, a bounded delay after it), frame-by-frame and temporal models
alike; `avfusion predict --live` appends rows to its CSV while it runs; bad sources and models that
cannot run live fail in one line."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")

FRAME_BY_FRAME = {"mode": "video", "video": {"name": "emonet", "n_expression": 8, "width": 16, "num_modules": 1,
                                             "n_blocks": 1, "frozen": True}, "audio": None, "fusion": None}
COLUMNS = ["video", "frame", "timestamp", "track_id", "face_found", "face_x", "face_y", "face_w", "face_h",
           "face_score", "speech", "speech_prob", "valid", "valence", "arousal", "quadrant"]
SECONDS, FPS = 2.0, 25  # 50 frames: every paced test plays the file in real time


def make(cfg):
    import avfusion
    from avfusion.config import ModelConfig, from_dict

    torch.manual_seed(0)
    return avfusion.create_model(from_dict(ModelConfig, cfg) if isinstance(cfg, dict) else cfg).eval()


@pytest.fixture(scope="module")
def talking(tmp_path_factory) -> Path:
    from avfusion.synthetic.talking import write_talking_video

    path = tmp_path_factory.mktemp("live") / "talk.mp4"
    write_talking_video(path, seconds=SECONDS, width=160, height=96, fps=FPS)
    return path


@pytest.mark.parametrize("cfg", [FRAME_BY_FRAME, "tiny"], ids=["frame-by-frame", "temporal"])
def test_stream_yields_rows_while_the_file_is_read(talking, cfg):
    from avfusion.predict import Predictor
    from avfusion.predict.live import LiveSource, stream_rows

    predictor = Predictor(make(cfg), device="cpu", face_backend="full", speech="off", batch_size=8)
    source = LiveSource(talking)  # a file: read at its own pace
    assert source.realtime
    seen = []  # (row, seconds since the reading started, frames read by then)
    for row in stream_rows(predictor, talking, live=source):
        seen.append((row, time.monotonic() - source.started_at, source.frames_read))
    n = int(SECONDS * FPS)
    rows = pd.DataFrame([r for r, _, _ in seen])
    assert list(rows.columns[: len(COLUMNS)]) == COLUMNS
    assert len(rows) + source.dropped == n and source.dropped <= n // 10
    assert rows["frame"].is_monotonic_increasing and rows["valid"].all()
    assert np.isfinite(rows[["valence", "arousal"]].to_numpy()).all()
    wall = np.array([w for _, w, _ in seen])
    ts = rows["timestamp"].to_numpy()
    # Paced: no row before its frame's time; the first rows come out while most of the file is
    # still unread, and the last only once the file has played.
    assert (wall >= ts - 0.02).all()
    assert seen[0][2] < n // 2
    assert wall[-1] >= SECONDS - 2.0 / FPS
    # Bounded delay: rows follow their frames by well under a second (a loaded machine: the median).
    assert np.median(wall - ts) < 0.5 and (wall - ts).max() < 2.0


def test_stream_as_fast_as_possible_matches_the_file_predictions(talking):
    from avfusion.predict import Predictor

    predictor = Predictor(make(FRAME_BY_FRAME), device="cpu", face_backend="full")
    start = time.monotonic()
    rows = pd.DataFrame(predictor.stream(talking, realtime=False))
    assert time.monotonic() - start < SECONDS  # not paced
    table = predictor.predict_video(talking)
    assert len(rows) == len(table)
    np.testing.assert_array_equal(rows["frame"], table["frame"])
    np.testing.assert_allclose(rows["timestamp"], table["timestamp"], atol=1e-3)
    # The same network on the same crops (the whole frame): the same values and expressions.
    cols = ["valence", "arousal"] + [c for c in table.columns if c.startswith("expr_")]
    assert len(cols) == 10
    np.testing.assert_allclose(rows[cols].to_numpy(float), table[cols].to_numpy(float), atol=1e-4)


def test_live_refusals(talking, tmp_path):
    from avfusion.predict import Predictor
    from avfusion.predict.live import LiveSourceError

    predictor = Predictor(make(FRAME_BY_FRAME), device="cpu", face_backend="full")
    with pytest.raises(LiveSourceError, match="nothing.mp4: no such file"):
        next(predictor.stream(tmp_path / "nothing.mp4"))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 20)
    with pytest.raises(LiveSourceError, match="bad.mp4: cannot open"):
        next(predictor.stream(bad))
    audio_only = Predictor(make_audio_only(), device="cpu", speech="off")
    with pytest.raises(ValueError, match="audio only"):
        next(audio_only.stream(talking))


def make_audio_only():
    import avfusion

    torch.manual_seed(0)
    return avfusion.create_model("tiny", mode="audio").eval()


def test_predict_live_command_writes_rows_as_it_runs(talking, tmp_path):
    from avfusion import save_pretrained

    save_pretrained(make(FRAME_BY_FRAME), tmp_path / "model")
    out = tmp_path / "out"
    csv = out / "talk_live.csv"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "avfusion.cli.predict", "--live", str(talking), "--model",
                             str(tmp_path / "model"), "--face-backend", "full", "--device", "cpu", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    counts = []  # data rows in the CSV while the command still runs
    try:
        while proc.poll() is None:
            if csv.is_file():
                counts.append(max(0, len(csv.read_text().splitlines()) - 1))
            time.sleep(0.05)
        output = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    n = int(SECONDS * FPS)
    # Rows were there, and growing, before the end: some while under half of the video was written.
    assert any(0 < c < n // 2 for c in counts), counts[-20:]
    table = pd.read_csv(csv)
    assert list(table.columns[: len(COLUMNS)]) == COLUMNS and len(table) >= n - n // 10
    assert table["speech"].isna().all() and table["valid"].all()
    assert f"rows in {csv}" in output and "frame" in output


YUNET = os.environ.get("AVFUSION_TEST_YUNET")
MEDIA = os.environ.get("AVFUSION_TEST_MEDIA")


@pytest.mark.skipif(not (MEDIA and Path(MEDIA, "face_noface.mov").is_file() and YUNET and Path(YUNET).is_file()),
                    reason="set AVFUSION_TEST_MEDIA (real face videos) and AVFUSION_TEST_YUNET")
def test_stream_follows_a_real_face_that_leaves():
    from avfusion.predict import Predictor

    predictor = Predictor(make(FRAME_BY_FRAME), device="cpu", yunet_model=YUNET)
    rows = pd.DataFrame(predictor.stream(Path(MEDIA, "face_noface.mov"), realtime=False))
    table = predictor.predict_video(Path(MEDIA, "face_noface.mov"))
    assert len(rows) == len(table) == 169
    face = rows["face_found"].to_numpy()
    assert face[:20].all() and not face[-20:].any()  # the person leaves
    assert (rows.loc[face, "track_id"] == 0).all() and (rows.loc[~face, "track_id"] == -1).all()
    assert rows.loc[~face, ["valence", "arousal", "face_x"]].isna().all().all()
    # Live and file find the face in the same frames, nearly (the tracker bridges short misses).
    assert (face == table["face_found"].to_numpy()).mean() > 0.95
    both = face & table["face_found"].to_numpy()
    assert np.abs(rows.loc[both, "face_x"].to_numpy() - table.loc[both, "face_x"].to_numpy()).max() < 20


def test_live_and_file_give_the_same_values_on_the_same_window(talking):
    """Through the one engine: each live batch's values come from the window of the last clip_len
    frames; the file engine run on exactly that window gives the same values."""
    from avfusion.inference.engine import predict_temporal, stream_predictions
    from avfusion.inference.readers import LiveSource, VideoFile
    from avfusion.predict import Predictor

    import avfusion

    torch.manual_seed(0)
    model = avfusion.create_model("tiny", mode="video").eval()  # live sources carry no audio
    p = Predictor(model, device="cpu", face_backend="full", speech="off", clip_len=8, batch_size=4)
    chunks = list(stream_predictions(p.model, p.runner, LiveSource(talking, realtime=False), p.cropper, p.transform,
                                     p.clip_len, p.serving.sample_rate))
    assert sum(len(c.indices) for c in chunks) == int(SECONDS * FPS)
    reader = VideoFile(talking)
    for c in chunks[::5]:
        end = int(c.indices[-1])
        window = np.arange(max(0, end - p.clip_len + 1), end + 1)[None]
        out = predict_temporal(p.model, p.runner, reader, p.cropper, p.transform, p.clip_len, windows=window)
        np.testing.assert_allclose(c.va, out.va[c.indices], atol=1e-5)
