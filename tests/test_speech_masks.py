"""Speech detection as a data step: ``avfusion cache`` stores each frame's speech probability, and
training, evaluation and predict mask the audio of the same frames by the model's speech rule.

The clips are the hard synthetic ones (``avfusion synth --hard``): a voice with pauses over room
noise, which Silero VAD hears as speech and pauses, and one clip without an audio track.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")

T = 32


def test_speech_rule_on_frames():
    from avfusion.data.speech import SpeechRule, chunks_to_frames, speech_frames

    fps = 25.0
    p = np.zeros(60)
    p[5:20] = 0.9     # 15 frames (0.6 s) of speech
    p[20:22] = 0.2    # a 2-frame pause (80 ms < 100 ms): closed
    p[22:30] = 0.9
    p[30:33] = 0.4    # above the exit threshold (0.35) after speech: still speech
    p[40:44] = 0.95   # 4 frames (160 ms < 250 ms): dropped
    got = speech_frames(p, fps, SpeechRule(pad=0.0))
    want = np.zeros(60, bool)
    want[5:33] = True
    np.testing.assert_array_equal(got, want)
    padded = speech_frames(p, fps, SpeechRule(pad=0.03))  # 30 ms: one frame each side
    want[4], want[33] = True, True
    np.testing.assert_array_equal(padded, want)
    # Chunks of 512 samples (32 ms) to 40 ms frames: the mean of the chunks each frame overlaps.
    probs = np.arange(10, dtype=np.float32) / 10
    frames = chunks_to_frames(probs, np.arange(9) / fps, 16000, fps)
    assert frames[0] == pytest.approx((0.0 + 0.1) / 2)   # samples 0-640: chunks 0, 1
    assert frames[1] == pytest.approx((0.1 + 0.2) / 2)   # samples 640-1280: chunks 1, 2
    assert frames[7] == pytest.approx((0.8 + 0.9) / 2)   # samples 4480-5120: chunks 8, 9
    assert frames[8] == 0.0                               # past the last chunk: no audio


@pytest.fixture(scope="module")
def hard_data(tmp_path_factory):
    from avfusion.synthetic import SyntheticConfig, generate_dataset

    root = tmp_path_factory.mktemp("hard") / "data"
    # Clip index 3 (the 4th) has no audio track in the hard variant.
    generate_dataset(root, SyntheticConfig(clips=4, frames=3 * T, size=64, pair=False, gaps=False,
                                           clips_per_actor=1, hard=True))
    return root


def test_cache_stores_what_predict_computes_and_both_mask_the_same_frames(hard_data, tmp_path):
    """As a user runs it: ``cache`` then a model whose serving spec is what training records;
    ``evaluate`` reads the cache's speech probabilities, ``predict`` computes them from the mp4."""
    import dataclasses
    import warnings

    from torch.utils.data import DataLoader

    from avfusion.caching import cache_features
    from avfusion.data.build import feature_datasets, load_records, serving_for
    from avfusion.data.features import collate_features, load_video_features, video_filename
    from avfusion.data.speech import serving_rule, speech_frames
    from avfusion.evaluation.collect import predict_loader
    from avfusion.predict import Predictor
    from avfusion.train.experiment import build_model, load_experiment

    cfg = load_experiment("tiny_synthetic", [f"data.root={hard_data}", f"data.clip_len={T}", "data.speech=vad"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    model.cfg.serving = serving_for(cfg.data, model, training=True)  # as training records it
    rule = serving_rule(model.serving)
    assert rule is not None  # trained with speech detection on
    cache = tmp_path / "cache"
    cache_features(model, cfg.data, cache, dtype="float32", cpu=True)
    records = sorted(load_records(cfg.data), key=lambda r: r.video_id)
    n = {r.video_id: r.n_frames for r in records}
    data = dataclasses.replace(cfg.data, features=str(cache))
    made, _ = feature_datasets(data, {"all": records}, model)
    cached = predict_loader(model, DataLoader(made["all"], batch_size=3, collate_fn=collate_features), n)

    predictor = Predictor(model, face_backend="full", precision="fp32", device="cpu", hop=T, runtime="torch")
    unmasked = Predictor(model, face_backend="full", precision="fp32", device="cpu", hop=T, runtime="torch",
                         speech="off")
    some_masked = False
    for rec in records:
        stored = load_video_features(cache / video_filename(rec.video_id))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the clip without a track says so
            table = predictor.predict_video(rec.source)
        if not stored.audio_valid:  # the clip without a track: nothing heard
            assert not stored.speech.any() and table["speech_prob"].isna().all()
        else:
            np.testing.assert_allclose(table["speech_prob"].to_numpy(), stored.speech, rtol=0, atol=1e-6)
            said = speech_frames(stored.speech, rec.fps, rule)
            np.testing.assert_array_equal(table["speech"].to_numpy(bool), said)
            some_masked |= bool(said.any() and not said.all())
        # Evaluated from the cache and predicted from the mp4: the same values at every frame.
        pred = table[["valence", "arousal"]].to_numpy()
        np.testing.assert_allclose(pred, cached[rec.video_id].pred, rtol=0, atol=1e-5, err_msg=rec.video_id)
        if stored.audio_valid and not said.all():
            other = unmasked.predict_video(rec.source)
            assert np.abs(other[["valence", "arousal"]].to_numpy() - pred).max() > 1e-4  # the masking matters
    assert some_masked  # the pauses of the hard clips are found and masked


def test_training_data_masks_the_frames_the_serving_spec_says(hard_data, tmp_path):
    """A model trained with ``data.speech=off`` records it, and its datasets keep every frame's
    audio; ``vad`` (an architecture's default) masks the pauses."""
    from avfusion.data.build import DataConfig, clip_datasets, feature_datasets, load_records, serving_for
    from avfusion.train.experiment import build_model, load_experiment

    cfg = load_experiment("tiny_synthetic", [f"data.root={hard_data}", "data.speech=null"])
    model = build_model(cfg)
    assert model.serving.speech == "vad"  # the architecture's default
    records = load_records(cfg.data)
    vad, _ = clip_datasets(cfg.data, {"val": records}, model)
    off_cfg = DataConfig(**{**cfg.data.__dict__, "speech": False})  # YAML's bare off
    off, _ = clip_datasets(off_cfg, {"val": records}, model)
    assert serving_for(off_cfg, model, training=True).speech == "off"
    assert serving_for(cfg.data, model, training=True).speech == "vad"
    heard = [vad["val"][i]["audio_frames"] for i in range(len(vad["val"]))]
    every = [off["val"][i]["audio_frames"] for i in range(len(off["val"]))]
    masked = sum(int((e & ~h).sum()) for h, e in zip(heard, every))
    assert masked > 0 and all(bool((h <= e).all()) for h, e in zip(heard, every))
