"""The published experts as frozen encoders for training: `avfusion cache` + `avfusion train` with the
experts' features on the demo's data (synthetic expert weights found by name), and `fit-mix`, which
recovers a known per-dimension mix on data built for it and saves a model folder that predicts."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import command
from expert_files import W2V2_TINY_OVERRIDES
from test_experts_predict import install_expert_weights

pytestmark = pytest.mark.usefixtures("one_thread")
cache_cmd, train_cmd, fit_cmd = command("cache"), command("train"), command("fit_mix")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from avfusion.synthetic import SyntheticConfig, generate_dataset

    tmp = tmp_path_factory.mktemp("experts-train")
    root = tmp / "data"
    generate_dataset(root, SyntheticConfig(clips=4, frames=8, size=64, pair=False, gaps=False, clips_per_actor=2))
    old = os.environ.get("AVFUSION_HOME")
    os.environ["AVFUSION_HOME"] = str(tmp / "home")
    try:
        install_expert_weights(tmp / "home")
        yield tmp, root
    finally:
        if old is None:
            os.environ.pop("AVFUSION_HOME", None)
        else:
            os.environ["AVFUSION_HOME"] = old


def test_cache_and_train_on_the_experts_features(world):
    tmp, root = world
    data = [f"data.root={root}", "data.clip_len=8", "data.stride=4", "data.val_fraction=0.25", "data.test_fraction=0"]
    cache_cmd.main(["--config", "tiny_synthetic", "--model", "av_experts_fusion", "--out", str(tmp / "cache"),
                    "--cpu", "--dtype", "float32", *data])
    manifest = json.loads((tmp / "cache" / "manifest.json").read_text())
    assert manifest["video_dim"] == 1280 and manifest["audio_dim"] == W2V2_TINY_OVERRIDES["hidden_size"]
    assert manifest["preprocessing"]["face_margin"] == 0.0  # the face expert's tight boxes
    result = train_cmd.main([
        "--config", "tiny_synthetic", "--no-tensorboard", "model=av_experts_fusion", f"output_dir={tmp / 'run'}",
        f"data.features={tmp / 'cache'}", *data, "train.epochs=1", "train.cpu=true",
        f"model_overrides={{audio: {{hf_config: {json.dumps(W2V2_TINY_OVERRIDES)}}}, "
        "fusion: {d_model: 16, n_layers: 1, n_heads: 2}}"])
    assert result["epochs_done"] == 1
    exported = json.loads((tmp / "run" / "best" / "config.json").read_text())["model"]
    assert exported["video"]["name"] == "enet_b0_va" and exported["serving"]["face_margin"] == 0.0


def test_fit_mix_recovers_a_known_mix():
    from avfusion.inference.aggregate import VideoPrediction
    from avfusion.evaluation.run import fit_experts_mix

    rng = np.random.default_rng(0)
    videos = {}
    truth = np.array([[0.7, 0.3], [0.2, 0.8]])
    for k in range(4):
        n = 200
        heads = np.tanh(rng.normal(0, 0.6, (n, 2, 2)))
        present = np.ones((n, 2), dtype=bool)
        present[: n // 5, 1] = False  # no speech at the start: the face alone there
        heads[~present[:, None, :].repeat(2, 1)] = np.nan
        w = np.where(present[:, None, :], truth[None], 0.0)
        target = (w * np.nan_to_num(heads)).sum(-1) / w.sum(-1)
        videos[str(k)] = VideoPrediction(str(k), np.zeros((n, 2)), target, np.ones(n, bool), present[:, 0],
                                         np.arange(n) / 25.0, np.ones(n, np.int64), heads, present)
    fit = fit_experts_mix(videos, np.full((2, 2), 0.5))
    np.testing.assert_allclose(fit["mix"], truth, atol=0.051)
    assert fit["after"]["valence"] > 0.99 and fit["after"]["arousal"] > 0.99
    assert fit["before"]["arousal"] < fit["after"]["arousal"]


def test_fit_mix_command_saves_a_model_that_predicts(world):
    import avfusion

    tmp, root = world
    fit = fit_cmd.main(["--model", "av_experts", "--config", "tiny_synthetic", f"data.root={root}", "--part", "all",
                        "--speech", "off", "--out", str(tmp / "fitted"), "--cpu"])
    saved = json.loads((tmp / "fitted" / "config.json").read_text())
    assert saved["model"]["mix"]["valence"] == pytest.approx(list(fit["mix"][0]))
    model = avfusion.load_model(tmp / "fitted")  # a folder: its own weights, no download needed
    np.testing.assert_allclose(model.experts_mix, fit["mix"])
