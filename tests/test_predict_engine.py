"""The inference engine under `avfusion predict`: the same numbers as the window path, box smoothing
that does not depend on how a video is chunked, each frame through the network once, stride with
interpolation, a worker thread that hands errors back, and options checked before any decoding."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import NEURAL_AV

pytestmark = pytest.mark.usefixtures("one_thread")

FRAME_BY_FRAME = {"mode": "video", "video": {"name": "emonet", "n_expression": 8, "width": 16, "num_modules": 1,
                                             "n_blocks": 1, "frozen": True}, "audio": None, "fusion": None}


def make(cfg: dict):
    import avfusion
    from avfusion.config import ModelConfig, from_dict

    torch.manual_seed(0)
    return avfusion.create_model(from_dict(ModelConfig, cfg)).eval()


@pytest.fixture(scope="module")
def talking(tmp_path_factory):
    from avfusion.synthetic.talking import write_talking_video

    path = tmp_path_factory.mktemp("talk") / "talk.mp4"
    write_talking_video(path, seconds=1.6, width=160, height=128, fps=25)
    return path


def test_temporal_model_matches_the_window_path(talking):
    """Features once per frame + half-overlapping fusion windows == ClipDataset windows through
    predict_loader (the training/evaluation path) for the same model."""
    from torch.utils.data import DataLoader

    from avfusion.data.clips import ClipDataset, collate
    from avfusion.data.faces import FaceCropper
    from avfusion.data.records import VideoRecord
    from avfusion.data.transforms import build_transform
    from avfusion.data.video import VideoFile
    from avfusion.evaluation.collect import predict_loader
    from avfusion.predict import Predictor

    model = make(NEURAL_AV)
    # speech="off": the synthetic voice is not speech to a VAD, and the window path reads all audio.
    table = Predictor(model, clip_len=8, device="cpu", face_backend="full", precision="fp32",
                      speech="off").predict_video(talking)
    n = len(VideoFile(talking))
    rec = VideoRecord(video_id="v", source=str(talking), n_frames=n, fps=25.0,
                      labels=np.full((n, 2), np.nan, np.float32), label_mask=np.zeros(n, bool),
                      audio_path=str(talking), face_mode="detect", timestamps=VideoFile(talking).timestamps)
    ds = ClipDataset([rec], 8, stride=4, cropper=FaceCropper("full"), transform=build_transform(model.pretrained_cfg, False))
    ref = predict_loader(model, DataLoader(ds, batch_size=3, collate_fn=collate), {"v": n}, overlap="mean",
                         require_labelled=False)["v"]
    np.testing.assert_allclose(table[["valence", "arousal"]].to_numpy(), np.clip(ref.pred, -1, 1), atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 3, 7, 50])
def test_streaming_crops_equal_whole_clip_crops(chunk):
    from avfusion.data.faces import FaceCropper, StreamingCropper

    rng = np.random.default_rng(0)
    T = 23
    frames = rng.integers(0, 255, (T, 48, 64, 3), dtype=np.uint8)
    lms = np.cumsum(rng.normal(0, 2, (T, 1, 2)), 0) + np.array([32, 24]) + rng.normal(0, 5, (1, 5, 2))
    lms[[4, 5, 17]] = np.nan  # frames without a face
    cropper = FaceCropper("landmarks", output_size=16, smoothing=5)
    whole_boxes, whole_mask = cropper.boxes(frames, lms)
    whole_crops = cropper.crop(frames, whole_boxes, whole_mask)
    stream = StreamingCropper(cropper)
    got = []
    for s in range(0, T, chunk):
        got.append(stream.push(np.arange(s, min(T, s + chunk)), frames[s:s + chunk], lms[s:s + chunk]))
    got.append(stream.finish())
    got = [g for g in got if g is not None]
    idx = np.concatenate([g[0] for g in got])
    np.testing.assert_array_equal(idx, np.arange(T))
    np.testing.assert_array_equal(np.concatenate([g[1] for g in got]), whole_crops)
    np.testing.assert_allclose(np.concatenate([g[2] for g in got]), whole_boxes)
    np.testing.assert_array_equal(np.concatenate([g[3] for g in got]), whole_mask)


def test_frame_by_frame_runs_each_frame_once_and_stride_interpolates(talking):
    from avfusion.predict import Predictor

    model = make(FRAME_BY_FRAME)
    p1 = Predictor(model, device="cpu", face_backend="full", precision="fp32", batch_size=5)
    frames = []
    p1.runner.module.register_forward_pre_hook(lambda m, a: frames.append(a[0].shape[0]))
    t1 = p1.predict_video(talking)
    n = len(t1)
    assert sum(frames) == n  # each frame exactly once (no half-overlapping windows, no flip)

    # The engine's values are the model's own per-frame output on the same crops.
    out = model(video=torch.stack([p1.transform(p1.cropper(fr[None])[0])[0] for fr in _frames(talking)])[None])
    np.testing.assert_allclose(t1["valence"], out["valence"][0].numpy(), atol=1e-5)

    p3 = Predictor(model, device="cpu", face_backend="full", precision="fp32", stride=3)
    frames.clear()
    p3.runner.module.register_forward_pre_hook(lambda m, a: frames.append(a[0].shape[0]))
    t3 = p3.predict_video(talking)
    at = np.append(np.arange(0, n, 3), n - 1) if (n - 1) % 3 else np.arange(0, n, 3)
    assert sum(frames) == len(at)
    v1, v3 = t1["valence"].to_numpy(), t3["valence"].to_numpy()
    np.testing.assert_allclose(v3[at], v1[at], atol=1e-6)
    ts = t3["timestamp"].to_numpy()
    i = 4  # between frames 3 and 6
    w = (ts[i] - ts[3]) / (ts[6] - ts[3])
    assert v3[i] == pytest.approx((1 - w) * v1[3] + w * v1[6], abs=1e-6)


def _frames(path):
    from avfusion.data.video import VideoFile

    v = VideoFile(path)
    return v.get_batch(list(range(len(v))))


def test_predict_frames_equals_predict_video(talking):
    from avfusion.data.audio import load_audio
    from avfusion.data.video import VideoFile
    from avfusion.predict import Predictor

    p = Predictor(make(NEURAL_AV), clip_len=8, device="cpu", face_backend="full", precision="fp32", speech="off")
    from_file = p.predict_video(talking)
    v = VideoFile(talking)
    from_memory = p.predict_frames(_frames(talking), v.fps, audio=load_audio(talking, 16000), timestamps=v.timestamps)
    np.testing.assert_allclose(from_memory[["valence", "arousal"]], from_file[["valence", "arousal"]], atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        p.predict_frames(np.zeros((3, 8, 8, 3), np.float32), 25)


def test_prefetch_hands_errors_to_the_consumer_and_stops_the_worker():
    import threading

    from avfusion.inference.engine import prefetch

    def items():
        yield 1
        raise ValueError("clip.mp4: broken")

    with pytest.raises(ValueError, match="clip.mp4"):
        list(prefetch(items()))
    produced = []

    def endless():
        k = 0
        while True:
            produced.append(k)
            yield k
            k += 1

    for x in prefetch(endless(), depth=2):
        if x == 3:
            break
    n = len(produced)
    import time

    time.sleep(0.3)
    assert len(produced) <= n + 1 and len(produced) < 10
    assert not any(t.name == "avfusion-decode" and t.is_alive() for t in threading.enumerate())


@pytest.mark.parametrize("argv, message", [
    (["--stride", "0"], "stride must be >= 1"),
    (["--smooth", "4"], "smooth must be a positive odd"),
    (["--smooth", "-3"], "smooth must be a positive odd"),
    (["--batch-size", "0"], "batch size must be >= 1"),
    (["--clip-len", "0"], "clip length must be >= 1"),
    (["--stride", "2", "--model", "tiny"], "only frame-by-frame models"),
    (["--flip", "--model", "tiny"], "flip averaging is available for EmoNet"),
])
def test_bad_options_fail_before_any_decoding(talking, tmp_path, monkeypatch, capsys, argv, message):
    from avfusion.cli import predict
    from avfusion.data import video

    def no_decoding(self):
        raise AssertionError("a video was opened before the options were checked")

    monkeypatch.setattr(video.VideoFile, "_open", no_decoding)
    base = ["--model", "tiny", "--face-backend", "full", "--out", str(tmp_path / "out")]
    assert predict.main([str(talking), *base, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_precision_choice():
    from avfusion.inference.hardware import cpu_has_fast_bf16
    from avfusion.inference.runner import FrameRunner, resolve_precision

    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_has_fast_bf16() else "fp32")
    assert resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16", "cpu")
    # Weight-free HOG features stay float32 whatever is asked.
    import avfusion

    assert FrameRunner(avfusion.create_model("tiny"), "bf16", device="cpu").precision == "fp32"
    runner = FrameRunner(make(FRAME_BY_FRAME), "bf16", device="cpu")
    assert runner.precision == "bf16" and next(runner.module.parameters()).dtype == torch.bfloat16
    x = torch.rand(3, 3, 256, 256)
    ref = FrameRunner(make(FRAME_BY_FRAME), "fp32", device="cpu")(x)["va"]
    assert np.abs(runner(x)["va"] - ref).max() < 0.05  # bf16: close to float32, not equal


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_missing_gpu_is_one_line(talking, tmp_path, capsys):
    from avfusion.cli import predict

    assert predict.main([str(talking), "--model", "tiny", "--face-backend", "full", "--device", "cuda",
                         "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU is available" in err and len(err.strip().splitlines()) == 1


def test_one_pass_equals_the_track_pass_on_a_real_clip(monkeypatch):
    """The one pass (detection and tracking beside the network, the largest face cropped) gives the
    table the track's own pass gives, when the largest face is the main track on every frame; the
    table's face boxes are the track's."""
    import os
    from pathlib import Path

    from avfusion.predict import Predictor
    from avfusion.predict import predictor as P

    media, yunet = os.environ.get("AVFUSION_TEST_MEDIA"), os.environ.get("AVFUSION_TEST_YUNET")
    if media is None or yunet is None:
        pytest.skip("needs AVFUSION_TEST_MEDIA and AVFUSION_TEST_YUNET")
    video = Path(media) / "single_face.mp4"
    p = Predictor(make(FRAME_BY_FRAME), device="cpu", yunet_model=yunet, precision="fp32")
    passes = []
    real = P.Predictor._pass
    monkeypatch.setattr(P.Predictor, "_pass", lambda self, *a, **k: passes.append(1) or real(self, *a, **k))
    one = p.predict_video(video)
    assert len(passes) == 1 and one["face_found"].mean() > 0.9

    real_one = P.Predictor._one_pass

    def disagreeing(self, *a, **k):
        out, tracks, _ = real_one(self, *a, **k)
        return out, tracks, lambda track: False

    monkeypatch.setattr(P.Predictor, "_one_pass", disagreeing)
    two = p.predict_video(video)
    assert len(passes) == 3  # the one pass, then the track's own pass
    cols = ["face_found", "face_x", "face_y", "face_w", "face_h", "valid", "valence", "arousal"]
    pd_testing = pytest.importorskip("pandas.testing")
    pd_testing.assert_frame_equal(one[cols], two[cols], check_exact=False, atol=1e-6)
