"""The package as users get it: names resolve without a clone, inference defaults, one-line errors for
damaged model files, thin scripts, and the import layers."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import avfusion
from avfusion.cli.main import main

REPO = Path(__file__).resolve().parent.parent


def test_named_configs_resolve_from_the_installed_package(tmp_path, monkeypatch):
    from avfusion.config import builtin_config_dir, list_configs, resolve_experiment_file
    from avfusion.train.experiment import load_experiment

    monkeypatch.chdir(tmp_path)  # nothing relative to a clone
    assert (builtin_config_dir() / "models" / "emonet_8.yaml").is_file()
    assert set(avfusion.list_models()) >= {"emonet_8", "emonet_5", "tiny", "afew_emonet_video",
                                           "av_emonet_wav2vec2", "av_mae_vitb_wav2vec2"}
    assert "tiny_synthetic" in list_configs("experiments")
    assert resolve_experiment_file("tiny_synthetic").name == "tiny_synthetic.yaml"
    assert load_experiment("tiny_synthetic", ["train.epochs=1"]).train.epochs == 1
    with pytest.raises(ValueError, match="unknown experiment 'nope'.*tiny_synthetic"):
        load_experiment("nope")
    # A user's folder of model configs comes first.
    (tmp_path / "mine.yaml").write_text("mode: video\nvideo: {name: hog}\nfusion: {d_model: 16, n_layers: 1, n_heads: 2}\n")
    monkeypatch.setenv("AVFUSION_MODEL_CONFIGS", str(tmp_path))
    assert "mine" in avfusion.list_models()
    assert avfusion.create_model("mine").cfg.mode == "video"


def test_one_resolver_decides_what_a_model_string_means(tmp_path):
    from avfusion.factory import resolve_model

    assert resolve_model("tiny").kind == "name"
    yaml_file = tmp_path / "m.yaml"
    yaml_file.write_text("mode: audio\naudio: {name: logmel}\nvideo: null\n")
    assert resolve_model(yaml_file).kind == "yaml"
    avfusion.save_pretrained(avfusion.create_model("tiny"), tmp_path / "exported")
    assert resolve_model(tmp_path / "exported").kind == "exported"
    with pytest.raises(ValueError, match="unknown model 'tyni'"):
        resolve_model("tyni")
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        resolve_model(tmp_path)


def test_from_pretrained_is_ready_for_inference(tmp_path):
    """transformers' convention: a loaded model is in eval mode, so two calls give the same output."""
    torch.manual_seed(0)
    avfusion.save_pretrained(avfusion.create_model("tiny", fusion={"dropout": 0.3}), tmp_path / "m")
    model = avfusion.from_pretrained(tmp_path / "m")
    assert not model.training
    video = torch.rand(1, 8, 3, 64, 64)
    audio = torch.randn(1, 16000 * 8 // 25)
    times = torch.arange(8, dtype=torch.float64)[None] / 25
    with torch.no_grad():
        a = model(video=video, audio=audio, frame_times=times)["valence"]
        b = model(video=video, audio=audio, frame_times=times)["valence"]
    assert torch.equal(a, b)
    named = avfusion.load_model("afew_emonet_video", video={"width": 16, "num_modules": 1, "n_blocks": 1},
                                fusion={"d_model": 16, "n_layers": 1, "n_heads": 2, "dropout": 0.5})
    assert not named.training
    frames = torch.rand(1, 4, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(named(video=frames)["valence"], named(video=frames)["valence"])


@pytest.mark.parametrize("damage", ["config", "weights", "mismatch"])
def test_damaged_exported_model_is_one_line(tmp_path, capsys, damage):
    folder = tmp_path / "m"
    avfusion.save_pretrained(avfusion.create_model("tiny"), folder)
    if damage == "config":
        (folder / "config.json").write_text('{"model": {"mode": "av"')  # cut short
        culprit = "config.json"
    elif damage == "weights":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 3])
        culprit = "model.safetensors"
    else:
        avfusion.save_pretrained(avfusion.create_model("tiny", fusion={"d_model": 32, "n_heads": 2}),
                                 tmp_path / "other")
        (folder / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
        culprit = "model.safetensors"
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    assert main(["predict", str(video), "--model", str(folder), "--face-backend", "full"]) == 2
    err = capsys.readouterr().err
    assert culprit in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_scripts_are_thin_and_import_modules():
    for script in sorted((REPO / "scripts").glob("*.py")):
        text = script.read_text()
        assert len(text.splitlines()) < 20, script
        assert "from avfusion.cli." in text and "spec_from_file_location" not in text, script
    tests = [p for p in (REPO / "tests").glob("*.py") if p.name != Path(__file__).name]
    assert not [p for p in tests if "spec_from_file_location" in p.read_text()]


def test_no_import_cycles_and_no_upward_import_of_the_root():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("avfusion")
    cycles = sorted({tuple(sorted((m, imp))) for m in graph.modules
                     for imp in graph.find_modules_directly_imported_by(m)
                     if imp != "avfusion" and graph.chain_exists(importer=imp, imported=m)})
    assert not cycles
    upward = sorted(m for m in graph.modules if m != "avfusion"
                    and "avfusion" in graph.find_modules_directly_imported_by(m))
    assert not upward


def test_python_m_runs_each_command(tmp_path):
    # From a folder outside the clone: `python -m` puts the working folder first on sys.path.
    out = subprocess.run([sys.executable, "-m", "avfusion.cli.train", "--help"], capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.returncode == 0 and "--config" in out.stdout and "avfusion train" in out.stdout
    out = subprocess.run([sys.executable, "-m", "avfusion.cli.models"], capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.returncode == 0 and "emonet_8" in out.stdout


def test_ci_imports_the_installed_wheel():
    """CI installs a wheel built from the checkout; the tests must exercise that, not the clone."""
    import os

    if not os.environ.get("AVFUSION_TEST_INSTALLED"):
        pytest.skip("AVFUSION_TEST_INSTALLED not set (a development install)")
    assert "site-packages" in avfusion.__file__, avfusion.__file__
    assert (Path(avfusion.__file__).parent / "configs" / "models" / "emonet_8.yaml").is_file()


def test_default_evaluation_folders_of_two_experiments_differ(tmp_path):
    from avfusion.evaluation import default_eval_dir

    for name in ("a", "b"):
        (tmp_path / name / "best").mkdir(parents=True)
    first, second = default_eval_dir(tmp_path / "a" / "best", "test"), default_eval_dir(tmp_path / "b" / "best", "test")
    assert first != second and first.name == "a-best-test"
    assert default_eval_dir("emonet_8", "all").name == "emonet_8-all"


def test_recorded_settings_are_the_ones_used():
    """metrics.json and cache manifests record the data settings a run used, not every default:
    an Aff-Wild2 run on the official sets names no split_by/test_fraction/face_mode."""
    from avfusion.data.build import DataConfig, used_settings

    aw = used_settings(DataConfig(kind="affwild2", root="aw"))
    assert aw["kind"] == "affwild2" and aw["affwild2_split"] == "official"
    assert not {"split_by", "test_fraction", "face_mode", "folds", "features", "augment"} & set(aw)
    syn = used_settings(DataConfig(kind="synthetic", root="s", split_by="actor"), training=True)
    assert syn["split_by"] == "actor" and syn["face_mode"] == "detect" and "affwild2_split" not in syn
    cached = used_settings(DataConfig(kind="afew_va", root="a", features="cache"))
    assert cached["features"] == "cache" and not {"face_backend", "face_mode", "yunet_model"} & set(cached)
