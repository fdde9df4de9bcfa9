"""Speech detection in `avfusion predict`: a silent track is no speech, and the audio-visual model
reads it exactly like a video without a track; a voice (espeak-ng, when installed) is speech in the
frames it speaks and not around them."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import NEURAL_AV

pytestmark = pytest.mark.usefixtures("one_thread")
FPS, SIZE, SR = 25, 64, 16000


def mux(path: Path, frames: np.ndarray, audio: np.ndarray | None) -> Path:
    """frames (T, H, W, 3) RGB at 25 fps; audio: 16 kHz mono float (None: no audio stream)."""
    import av

    from avfusion.synthetic.generator import mux_audio

    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        ast = None
        if audio is not None:
            ast = c.add_stream("aac", rate=SR)
            ast.layout = "mono"
        for k, f in enumerate(frames):
            fr = av.VideoFrame.from_ndarray(f, format="rgb24")
            fr.pts = k
            for p in vs.encode(fr):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        if ast is not None:
            mux_audio(c, ast, audio.astype(np.float32), SR)
            for p in ast.encode():
                c.mux(p)
    return path


def face_frames(n: int) -> np.ndarray:
    """Frames that change over time (so the video part is not constant)."""
    rng = np.random.default_rng(0)
    base = rng.integers(40, 200, (SIZE, SIZE, 3)).astype(np.int16)
    return np.stack([np.clip(base + 3 * k, 0, 255).astype(np.uint8) for k in range(n)])


def av_model():
    import avfusion
    from avfusion.config import ModelConfig, from_dict

    torch.manual_seed(0)
    return avfusion.create_model(from_dict(ModelConfig, NEURAL_AV)).eval()


def test_silent_track_is_no_speech_and_equals_no_track(tmp_path):
    from avfusion.predict import Predictor

    n = 40
    frames = face_frames(n)
    silent = mux(tmp_path / "silent.mp4", frames, np.zeros(int(n / FPS * SR), np.float32))
    none = mux(tmp_path / "none.mp4", frames, None)
    model = av_model()
    p = Predictor(model, clip_len=16, device="cpu", face_backend="full", precision="fp32")
    with pytest.warns(RuntimeWarning, match="no speech in the audio track"):
        quiet = p.predict_video(silent)
    with pytest.warns(RuntimeWarning, match="no audio stream"):
        without = p.predict_video(none)
    assert quiet["speech"].notna().all() and not quiet["speech"].any()
    assert quiet.attrs["summary"]["frames_with_speech"] == 0
    assert quiet["valid"].all()  # the face is there
    np.testing.assert_allclose(quiet[["valence", "arousal"]], without[["valence", "arousal"]], atol=1e-6)
    # Without speech detection the zeros are read as audio, and the values differ: the test above
    # can fail.
    heard = Predictor(model, clip_len=16, device="cpu", face_backend="full", precision="fp32", speech="off")
    loud = heard.predict_video(silent)
    assert loud["speech"].isna().all()
    assert not np.allclose(loud[["valence", "arousal"]], without[["valence", "arousal"]], atol=1e-4)


def test_level_check_and_frame_speech():
    from avfusion.data.speech import SpeechDetector, frame_speech

    det = SpeechDetector()
    assert det.segments(np.zeros(SR * 2, np.float32)).shape == (0, 2)
    assert det.segments(np.full(SR, 5e-5, np.float32)).shape == (0, 2)  # below -80 dBFS
    assert det._model is None  # never loaded for digital silence
    times = np.arange(10) * 0.1
    np.testing.assert_array_equal(frame_speech(np.array([[0.2, 0.45], [0.8, 2.0]]), times),
                                  [0, 0, 1, 1, 1, 0, 0, 0, 1, 1])
    with pytest.raises(ValueError, match="16000"):
        det.segments(np.zeros(100, np.float32), 8000)


def espeak_voice(tmp_path: Path) -> np.ndarray:
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng) to voice a test sentence")
    import librosa
    import soundfile as sf

    wav = tmp_path / "say.wav"
    subprocess.run([exe, "-w", str(wav), "The quick brown fox jumps over the lazy dog, and then it runs away."],
                   check=True, capture_output=True, timeout=60)
    x, sr = sf.read(wav, dtype="float32")
    x = librosa.resample(x, orig_sr=sr, target_sr=SR)
    loud = np.flatnonzero(np.abs(x) > 0.02)
    return x[loud[0] : loud[-1] + 1] / np.abs(x).max() * 0.5


def test_spoken_frames_are_speech(tmp_path):
    from avfusion.predict import Predictor

    voice = espeak_voice(tmp_path)
    lead, tail = 1.0, 1.0
    audio = np.concatenate([np.zeros(int(lead * SR)), voice, np.zeros(int(tail * SR))]).astype(np.float32)
    n = int(len(audio) / SR * FPS)
    video = mux(tmp_path / "talk.mp4", face_frames(n), audio[: int(n / FPS * SR)])
    model = av_model()
    p = Predictor(model, clip_len=16, device="cpu", face_backend="full", precision="fp32")
    table = p.predict_video(video, out_dir=tmp_path / "out", plot=False)
    t = table["timestamp"].to_numpy()
    speech = table["speech"].to_numpy(bool)
    start, end = lead, lead + len(voice) / SR
    inside = (t > start + 0.3) & (t < end - 0.3)
    outside = (t < start - 0.3) | (t > end + 0.3)
    assert speech[inside].mean() > 0.8, (speech[inside].mean(), speech.astype(int))
    assert not speech[outside].any()
    summary = table.attrs["summary"]
    assert summary["frames_with_speech"] == speech.sum() and summary["options"]["speech"] == "auto"

    # The windows with speech use the audio: other audio weights change them, and leave a window
    # far from the voice untouched (its audio is masked).
    with torch.no_grad():
        for q in model.audio_encoder.parameters():
            q.add_(torch.randn_like(q))
    other = p.predict_video(video)
    changed = ~np.isclose(other["valence"], table["valence"], atol=1e-5)
    assert changed[inside].all()
    assert not changed[:8].any()  # frames 0-7 are in the first window only (0-0.64 s): no speech


def test_audio_only_model_needs_no_face_detector_and_reads_no_silence():
    import copy

    import avfusion
    from avfusion.config import ModelConfig, from_dict
    from avfusion.predict import Predictor

    cfg = copy.deepcopy(NEURAL_AV)
    cfg["mode"], cfg["video"] = "audio", None
    torch.manual_seed(0)
    model = avfusion.create_model(from_dict(ModelConfig, cfg)).eval()
    # yunet_model points nowhere: an audio-only model never builds the detector.
    p = Predictor(model, clip_len=16, device="cpu", yunet_model="/nonexistent/yunet.onnx")
    assert p.cropper is None
    frames = face_frames(30)
    with pytest.warns(RuntimeWarning, match="nothing to read"):
        table = p.predict_frames(frames, FPS, audio=np.zeros(int(30 / FPS * SR), np.float32))
    assert not table["valid"].any() and table["valence"].isna().all() and not table["speech"].any()
    summary = table.attrs["summary"]
    assert summary["valence_mean"] is None and summary["valid_frames"] == 0 and summary["frames_with_speech"] == 0
