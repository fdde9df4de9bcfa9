"""A named pretrained model never runs on random weights outside training: `predict`, `evaluate`
and `Predictor.from_pretrained` without the downloaded weights stop with one line naming
`avfusion download`, and no table is written; `create_model` (training) still builds it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_grey_video

PRETRAINED = ("emonet_8", "emonet_5", "enet_b0_8_va_mtl", "w2v2_msp_dim", "av_experts")


@pytest.fixture
def empty_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("AVFUSION_HOME", str(home))
    monkeypatch.chdir(tmp_path)  # no ./pretrained/ either
    return home


def _names() -> list[str]:
    import avfusion

    return [n for n in PRETRAINED if n in avfusion.list_models()]


def test_every_pretrained_name_names_its_weight_source():
    from avfusion.factory import is_pretrained_name

    assert {"emonet_8", "emonet_5"} <= set(_names())
    for name in _names():
        assert is_pretrained_name(name), name
    assert not is_pretrained_name("tiny")


@pytest.mark.parametrize("name", PRETRAINED)
def test_predictor_without_weights_is_one_line_naming_the_download(empty_home, name):
    from avfusion.predict import Predictor
    from avfusion.sources import WeightsMissing

    if name not in _names():
        pytest.skip(f"{name} is not a shipped model here")
    with pytest.raises(WeightsMissing, match=r"avfusion download \w+") as err:
        Predictor.from_pretrained(name, face_backend="full")
    assert "\n" not in str(err.value)


def test_predict_and_evaluate_exit_2_and_write_no_table(empty_home, tmp_path):
    video = write_grey_video(tmp_path / "v.mp4", 10)
    env_cmd = [sys.executable, "-m", "avfusion.cli.predict", str(video), "--model", "emonet_8", "--face-backend",
               "full", "--out", str(tmp_path / "out"), "--quiet"]
    out = subprocess.run(env_cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    lines = [l for l in out.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and "avfusion download emonet_8" in lines[0] and "Traceback" not in out.stderr
    assert not list((tmp_path / "out").glob("*_va.*")) if (tmp_path / "out").exists() else True

    from avfusion.cli import evaluate

    assert evaluate.main(["--model", "emonet_8", "--data-kind", "synthetic", "--root", str(tmp_path)]) == 2


def test_create_model_still_builds_random_weights_for_training(empty_home):
    import avfusion

    model = avfusion.create_model("emonet_8")
    assert model.video_encoder is not None and model.fusion is None


def test_create_model_takes_the_converted_and_the_published_files(tmp_path):
    """`create_model(NAME, checkpoint=PATH)`: the face expert from its safetensors, its pickled whole
    model and its ONNX export gives one network; the voice expert from its published folder."""
    import torch

    import avfusion
    from expert_files import (enet_calibration_images, enet_reference, write_enet_onnx, write_enet_pickle,
                              write_enet_safetensors, write_w2v2_folder)

    ref = enet_reference(0)
    x = enet_calibration_images(1, 2)
    outs = []
    for f in (write_enet_safetensors(tmp_path / "a.safetensors", model=ref),
              write_enet_pickle(tmp_path / "a.pt", model=ref), write_enet_onnx(tmp_path / "a.onnx", model=ref)):
        with torch.no_grad():
            outs.append(avfusion.create_model("enet_b0_8_va_mtl", checkpoint=f).eval().video_encoder(x))
    for o in outs[1:]:
        for k in ("valence", "arousal", "expression"):
            torch.testing.assert_close(o[k], outs[0][k], rtol=1e-4, atol=1e-5)
    folder = write_w2v2_folder(tmp_path / "w", 0, weight_norm="old", fmt="bin", tiny=True)
    voice = avfusion.create_model("w2v2_msp_dim", checkpoint=folder).eval().audio_encoder
    with torch.no_grad():
        out = voice.utterance(torch.randn(1, 16000))
    assert {"arousal", "dominance", "valence"} <= set(out) and out["valence"].shape == (1,)
