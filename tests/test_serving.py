"""The serving spec travels with the model: a model trained on HSV crops is served HSV crops,
`evaluate` and `predict` of one model give the same per-frame values where they run the same
windows, an exported folder predicts with its own window length, folders exported before specs
existed fall back with one warning, and a model name means that model whatever folders exist."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import command

pytestmark = pytest.mark.usefixtures("one_thread")

CLIP_LEN = 8
train_cmd, evaluate_cmd, predict_cmd = command("train"), command("evaluate"), command("predict")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    from avfusion.synthetic import SyntheticConfig, generate_dataset

    root = tmp_path_factory.mktemp("serving")
    generate_dataset(root, SyntheticConfig(clips=6, frames=20, size=64, pair=False, gaps=False, clips_per_actor=1))
    return root


def _data(root: Path) -> list[str]:
    return [f"data.root={root}", f"data.clip_len={CLIP_LEN}", f"data.stride={CLIP_LEN // 2}",
            "data.test_fraction=0.34", "data.val_fraction=0.17"]


@pytest.fixture(scope="module")
def trained(root, tmp_path_factory) -> dict[str, Path]:
    """The tiny video-only model trained (1 epoch, raw clips) on HSV crops and on RGB crops."""
    out = {}
    for colour in ("hsv", "rgb"):
        run = tmp_path_factory.mktemp(f"run-{colour}")
        train_cmd.main(["--config", "tiny_synthetic", "--no-tensorboard", f"output_dir={run}", *_data(root),
                        "model_overrides.mode=video", f"data.hsv={'true' if colour == 'hsv' else 'false'}",
                        "train.epochs=1", "train.cpu=true"])
        out[colour] = run / "best"
    return out


def _evaluate(model: Path, root: Path, out: Path) -> pd.DataFrame:
    evaluate_cmd.main(["--model", str(model), "--config", "tiny_synthetic", *_data(root), "--part", "test",
                       "--out", str(out), "--no-plots", "--cpu", "--smooth", "1"])
    return pd.read_csv(out / "predictions.csv")


def _predict(model: Path, video: Path, out: Path, *extra: str) -> pd.DataFrame:
    predict_cmd.main([str(video), "--model", str(model), "--face-backend", "full", "--speech", "off",
                      "--out", str(out), "--no-plot", "--quiet", *extra])
    return pd.read_csv(out / f"{video.stem}_va.csv")


def _gap(root: Path, model: Path, tmp: Path, *extra: str) -> float:
    """The largest |evaluate - predict| per frame over the test clips' frames."""
    ev = _evaluate(model, root, tmp / "eval")
    manifest = pd.read_csv(root / "manifest.csv")
    worst = 0.0
    for vid, rows in ev.groupby("video_id"):
        video = root / manifest.set_index("video_id").loc[vid, "video_path"]
        table = _predict(model, video, tmp / "pred", *extra)
        got = table[["valence", "arousal"]].to_numpy()
        ref = np.clip(rows.sort_values("frame")[["valence_pred", "arousal_pred"]].to_numpy(), -1, 1)
        assert len(got) == len(ref)
        worst = max(worst, float(np.nanmax(np.abs(got - ref))))
    return worst


def test_a_model_trained_on_hsv_crops_is_served_hsv_crops(root, trained, tmp_path):
    spec = json.loads((trained["hsv"] / "config.json").read_text())["model"]["serving"]
    assert spec["colour"] == "hsv" and spec["clip_len"] == CLIP_LEN and spec["crop_size"] == 64
    assert json.loads((trained["rgb"] / "config.json").read_text())["model"]["serving"]["colour"] == "rgb"
    # The same windows (hop = clip_len, as evaluate runs them): the same values.
    for colour in ("hsv", "rgb"):
        assert _gap(root, trained[colour], tmp_path / f"same-{colour}", "--hop", str(CLIP_LEN)) < 1e-5, colour
    # predict's half-overlapping windows differ from evaluate's by window averaging only, and no
    # more for the HSV-trained model than for the RGB one (before the spec: 0.172 against 0.009).
    hsv, rgb = (_gap(root, trained[c], tmp_path / f"half-{c}") for c in ("hsv", "rgb"))
    assert hsv < 2 * rgb + 0.05, (hsv, rgb)


def test_rgb_crops_for_an_hsv_model_would_show(root, trained, tmp_path):
    """The check above can fail: the HSV-trained model served RGB crops (the old skew) is off."""
    import avfusion
    from avfusion.predict import Predictor

    ev = _evaluate(trained["hsv"], root, tmp_path / "eval")
    vid, rows = next(iter(ev.groupby("video_id")))
    video = root / pd.read_csv(root / "manifest.csv").set_index("video_id").loc[vid, "video_path"]
    model = avfusion.load_model(trained["hsv"])
    model.cfg.serving.colour = "rgb"
    table = Predictor(model, device="cpu", face_backend="full", speech="off", hop=CLIP_LEN).predict_video(video)
    ref = np.clip(rows.sort_values("frame")[["valence_pred", "arousal_pred"]].to_numpy(), -1, 1)
    assert np.nanmax(np.abs(table[["valence", "arousal"]].to_numpy() - ref)) > 1e-3


def test_an_exported_folder_predicts_with_its_own_window(tmp_path):
    import avfusion
    from avfusion.predict import Predictor

    torch.manual_seed(0)
    model = avfusion.create_model("tiny")
    model.cfg.serving.clip_len = 6
    model.cfg.serving.face_margin = 0.1
    avfusion.save_pretrained(model, tmp_path / "m")
    p = Predictor(tmp_path / "m", device="cpu", face_backend="full")
    assert p.clip_len == 6 and p.cropper.margin == 0.1 and p.settings["clip_len"] == 6
    assert p.settings["precision"] == p.runner.precision  # the table's summary states the precision
    with pytest.warns(RuntimeWarning, match="serving spec: 6"):
        assert Predictor(tmp_path / "m", device="cpu", face_backend="full", clip_len=4).clip_len == 4


def test_a_folder_exported_before_serving_specs_falls_back_with_one_warning(tmp_path):
    import avfusion
    from avfusion.predict import Predictor

    model = avfusion.create_model("tiny")
    avfusion.save_pretrained(model, tmp_path / "old")
    cfg = json.loads((tmp_path / "old" / "config.json").read_text())
    del cfg["model"]["serving"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "old" / "experiment.yaml").write_text("data:\n  clip_len: 12\n  hsv: true\n")
    with pytest.warns(RuntimeWarning, match="exported before models carried their serving spec") as seen:
        p = Predictor(tmp_path / "old", device="cpu", face_backend="full")
        Predictor(tmp_path / "old", device="cpu", face_backend="full")
    assert p.clip_len == 12 and p.serving.colour == "hsv"
    assert sum("serving spec" in str(w.message) for w in seen) == 1


def test_a_model_name_means_that_model_whatever_folders_exist(tmp_path, monkeypatch):
    import avfusion
    from avfusion.factory import resolve_model

    (tmp_path / "tiny").mkdir()  # e.g. a run's output folder named like the model
    monkeypatch.chdir(tmp_path)
    assert resolve_model("tiny").kind == "name"
    assert avfusion.create_model("tiny").cfg.video.name == "hog"
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_model("./tiny")  # a path is a path


def test_a_bad_serving_spec_is_one_line_naming_the_file(tmp_path):
    import avfusion

    avfusion.save_pretrained(avfusion.create_model("tiny"), tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["model"]["serving"]["colour"] = "lab"
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"m/config.json: serving.colour must be one of"):
        avfusion.load_model(tmp_path / "m")
