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
