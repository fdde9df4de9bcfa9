"""`avfusion predict --model av_experts` on a real talking face: a real clip of ../shared/media with
an espeak-ng sentence muxed in, the experts' weights (synthetic, in the converted formats) found by
name under $AVFUSION_HOME. The table holds the face's, the voice's and the fused values with the
face and speech masks; the fused value is the per-frame renormalised mix of the experts present;
the voice expert alone (`w2v2_msp_dim`) and the face expert alone (`enet_b0_8_va_mtl`) predict too."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import command

pytestmark = pytest.mark.usefixtures("one_thread")
MEDIA = os.environ.get("AVFUSION_TEST_MEDIA")
YUNET = os.environ.get("AVFUSION_TEST_YUNET")
SR = 16000
predict_cmd = command("predict")


def install_expert_weights(home: Path) -> None:
    """Synthetic expert weights where `avfusion download` puts the converted files."""
    from safetensors.torch import save_file

    from avfusion.encoders.face_expert import convert_face_expert
    from avfusion.encoders.voice_expert import convert_voice_expert
    from avfusion.sources import search_paths
    from expert_files import write_enet_safetensors, write_w2v2_folder

    home.mkdir(parents=True, exist_ok=True)
    src = write_enet_safetensors(home / "src_enet.safetensors", seed=0)
    save_file(convert_face_expert(src), str(search_paths("enet_b0_8_va_mtl")[0]))
    folder = write_w2v2_folder(home / "src_w2v2", seed=0, tiny=True)
    config, state = convert_voice_expert(folder)
    dst = search_paths("w2v2_msp_dim")[0]
    dst.mkdir()
    (dst / "config.json").write_text(__import__("json").dumps(config))
    save_file({k: v.contiguous() for k, v in state.items()}, str(dst / "model.safetensors"))


def talking_clip(tmp: Path) -> tuple[Path, float, float]:
    """single_face.mp4's frames with an espeak-ng sentence from 0.8 s on: (path, speech start, end)."""
    import av
    import librosa
    import soundfile as sf

    exe = shutil.which("espeak-ng")
    if exe is None or MEDIA is None or YUNET is None:
        pytest.skip("needs espeak-ng, AVFUSION_TEST_MEDIA and AVFUSION_TEST_YUNET")
    wav = tmp / "say.wav"
    subprocess.run([exe, "-w", str(wav), "Hello there, how are you?"], check=True, capture_output=True, timeout=60)
    x, sr = sf.read(wav, dtype="float32")
    x = librosa.resample(x, orig_sr=sr, target_sr=SR)
    loud = np.flatnonzero(np.abs(x) > 0.02)
    x = x[loud[0] : loud[-1] + 1] / np.abs(x).max() * 0.5
    with av.open(str(Path(MEDIA) / "single_face.mp4")) as c:
        stream = c.streams.video[0]
        fps = stream.average_rate
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(stream)]
    seconds = len(frames) / float(fps)
    start = 0.8
    x = x[: int((seconds - start - 0.1) * SR)]
    track = np.concatenate([np.zeros(int(start * SR), np.float32), x, np.zeros(int(seconds * SR), np.float32)])
    track = track[: int(seconds * SR)]
    out = tmp / "talk.mp4"
    with av.open(str(out), "w") as c:
        vs = c.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        ast = c.add_stream("aac", rate=SR)
        ast.layout = "mono"
        for k, f in enumerate(frames):
            fr = av.VideoFrame.from_ndarray(f, format="rgb24")
            fr.pts = k
            for p in vs.encode(fr):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        for s in range(0, len(track), 1024):
            af = av.AudioFrame.from_ndarray(track[None, s : s + 1024].copy(), format="flt", layout="mono")
            af.sample_rate, af.pts = SR, s
            for p in ast.encode(af):
                c.mux(p)
        for p in ast.encode():
            c.mux(p)
    return out, start, start + len(x) / SR


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("experts")
    clip = talking_clip(tmp)
    home = tmp / "home"
    old = os.environ.get("AVFUSION_HOME")
    os.environ["AVFUSION_HOME"] = str(home)
    try:
        install_expert_weights(home)
        yield tmp, clip
    finally:
        if old is None:
            os.environ.pop("AVFUSION_HOME", None)
        else:
            os.environ["AVFUSION_HOME"] = old


def test_av_experts_on_a_talking_face(setup):
    import avfusion

    tmp, (video, start, end) = setup
    predict_cmd.main([str(video), "--model", "av_experts", "--yunet-model", YUNET, "--out", str(tmp / "av"),
                      "--no-plot", "--quiet"])
    t = pd.read_csv(tmp / "av" / "talk_va.csv")
    for col in ("face_valence", "face_arousal", "voice_valence", "voice_arousal", "voice_dominance", "speech",
                "face_found", "valence", "arousal", "valid"):
        assert col in t.columns, col
    speech, face = t["speech"].astype(bool).to_numpy(), t["face_found"].to_numpy(bool)
    ts = t["timestamp"].to_numpy()
    assert face.mean() > 0.9
    assert speech[(ts > start + 0.3) & (ts < end - 0.3)].mean() > 0.8 and not speech[ts < start - 0.3].any()
    # Each expert has values exactly where its sense is there.
    assert np.isfinite(t["face_valence"][face]).all() and np.isnan(t["face_valence"][~face]).all()
    assert np.isfinite(t["voice_arousal"][speech]).all() and np.isnan(t["voice_arousal"][~speech]).all()
    # The fused value: the default mix renormalised over the experts present at each frame.
    cfg = avfusion.get_model_config("av_experts").mix
    mix = np.array([cfg["valence"], cfg["arousal"]])
    for d, dim in enumerate(("valence", "arousal")):
        f, v = t[f"face_{dim}"].to_numpy(), t[f"voice_{dim}"].to_numpy()
        wf, wv = np.where(np.isfinite(f), mix[d, 0], 0.0), np.where(np.isfinite(v), mix[d, 1], 0.0)
        want = (wf * np.nan_to_num(f) + wv * np.nan_to_num(v)) / np.maximum(wf + wv, 1e-12)
        ok = (wf + wv) > 0
        np.testing.assert_allclose(t[dim].to_numpy()[ok], want[ok], atol=1e-5)
        assert t["valid"].to_numpy(bool)[ok].all()


def test_each_expert_alone(setup):
    tmp, (video, _, _) = setup
    predict_cmd.main([str(video), "--model", "w2v2_msp_dim", "--out", str(tmp / "voice"), "--no-plot", "--quiet"])
    voice = pd.read_csv(tmp / "voice" / "talk_va.csv")
    heard = voice["speech"].astype(bool).to_numpy()
    assert heard.any() and (voice["valid"].to_numpy(bool) == heard).all()
    np.testing.assert_allclose(voice["valence"][heard], voice["voice_valence"][heard])
    # The face expert alone: the av table's face columns, with its 8 expression probabilities.
    predict_cmd.main([str(video), "--model", "enet_b0_8_va_mtl", "--yunet-model", YUNET, "--out",
                      str(tmp / "face"), "--no-plot", "--quiet", "--stride", "3"])
    face = pd.read_csv(tmp / "face" / "talk_va.csv")
    assert face["valid"].mean() > 0.9 and len([c for c in face.columns if c.startswith("expr_")]) == 8


def test_voice_beside_the_face_pass_changes_nothing_and_stops_with_it(setup, monkeypatch):
    """The voice expert runs in a thread beside the face pass (av_experts): the table equals the one
    computed with the voice first; an error in the face pass stops the voice thread, and an error in
    the voice reaches the caller."""
    import threading

    import avfusion.predict.predictor as P

    tmp, (video, _, _) = setup
    p = P.Predictor("av_experts", yunet_model=YUNET, stride=3)
    together = p.predict_video(video, plot=False)

    class First:  # the voice over the whole track first, then the face pass
        def __init__(self, work):
            self.value = work(None)

        def result(self):
            return self.value

        def stop(self):
            pass

    with monkeypatch.context() as m:
        m.setattr(P, "_Background", First)
        pd.testing.assert_frame_equal(p.predict_video(video, plot=False), together)

    def voices() -> list:
        return [t for t in threading.enumerate() if t.name == "avfusion-voice"]

    def face_fails(*args, **kwargs):
        raise RuntimeError("the face pass failed")

    with monkeypatch.context() as m:
        m.setattr(P, "predict_frame_by_frame", face_fails)
        with pytest.raises(RuntimeError, match="the face pass failed"):
            p.predict_video(video, plot=False)
    assert not voices()

    def voice_fails(wave):
        raise ValueError("the voice failed")

    with monkeypatch.context() as m:
        m.setattr(p.voice_runner, "utterance", voice_fails)
        with pytest.raises(ValueError, match="the voice failed"):
            p.predict_video(video, plot=False)
    assert not voices()
