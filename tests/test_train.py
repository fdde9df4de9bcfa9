"""Training with Accelerate: end-to-end runs of scripts/train.py on a tiny feature cache, exact
resume, cross-validation, and the pieces (schedule, weight decay groups, sampler, stitching)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from avfusion.data.features import (
    CACHE_FORMAT,
    CACHE_VERSION,
    FeatureDataset,
    VideoFeatures,
    collate_features,
    save_video_features,
    video_filename,
    write_manifest,
)
from avfusion.train.loop import EpochSampler
from avfusion.factory import from_pretrained
from avfusion.metrics import va_metrics
from conftest import command
from avfusion.train.experiment import load_experiment
from avfusion.train.optim import param_groups, warmup_cosine

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "avfusion" / "configs" / "tiny_synthetic.yaml"
DIM = 8  # width of the cached test features


train_script = command("train")


def write_cache(root: Path, n_videos: int = 8, n_frames: int = 30, seed: int = 0) -> Path:
    """A feature cache in the format scripts/cache_features.py writes, with features that carry the
    labels: video channel 0 follows valence, audio channel 0 arousal, plus noise. Two videos per
    actor; video 2 has a run of unlabelled frames (as Aff-Wild2's -5)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    videos = {}
    for i in range(n_videos):
        vid = f"clip{i:02d}"
        t = np.arange(n_frames) / 25.0
        v = 0.8 * np.sin(2 * np.pi * rng.uniform(0.2, 0.6) * t + rng.uniform(0, 6))
        a = 0.8 * np.cos(2 * np.pi * rng.uniform(0.2, 0.6) * t + rng.uniform(0, 6))
        labels = np.stack([v, a], 1).astype(np.float32)
        label_mask = np.ones(n_frames, dtype=bool)
        if i == 2:
            label_mask[5:11] = False
            labels[~label_mask] = np.nan
        video = rng.normal(size=(n_frames, DIM)).astype(np.float32)
        audio = rng.normal(size=(n_frames, DIM)).astype(np.float32)
        video[:, 0] += 3 * v
        audio[:, 0] += 3 * a
        feats = VideoFeatures(
            video_id=vid, timestamps=t, face_mask=np.ones(n_frames, dtype=bool), fps=25.0,
            video=torch.from_numpy(video), audio=torch.from_numpy(audio), audio_valid=True,
            speech=np.ones(n_frames, dtype=np.float32),  # every frame speech: all the audio counts
            labels=labels, label_mask=label_mask,
            meta={"actor": f"actor{i // 2}", "group": vid, "dataset": "test"})
        save_video_features(root / video_filename(vid), feats)
        videos[vid] = video_filename(vid)
    write_manifest(root, {
        "format": CACHE_FORMAT, "version": CACHE_VERSION, "encoder_hash": "none", "encoders": {},
        "video_dim": DIM, "audio_dim": DIM, "dtype": "float32", "window": 10, "dataset": {"kind": "test"},
        "videos": videos})
    return root


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cache(tmp_path_factory.mktemp("features") / "cache")


def tiny_args(cache: Path, out: Path, *extra: str) -> list[str]:
    """avfusion/configs/tiny_synthetic.yaml on the test cache: encoders named "features", a 1-layer fusion."""
    return [
        "--config", str(CONFIG), "--no-tensorboard",
        f"output_dir={out}", f"data.features={cache}", "data.root=null",
        f"model_overrides={{video: {{name: features, dim: {DIM}}}, audio: {{name: features, dim: {DIM}}}, "
        "fusion: {d_model: 16, n_layers: 1, n_heads: 2, dropout: 0.1, modality_dropout: 0.3}}",
        "data.clip_len=10", "data.stride=5", "data.batch_size=3", "data.val_fraction=0.25", "data.test_fraction=0",
        "train.epochs=2", "train.cpu=true", "train.lr=3e-3", "train.warmup_steps=2", "train.log_every=1",
        *extra,
    ]


def reevaluate(model: nn.Module, cache: Path, ids: list[str], clip_len: int) -> tuple[dict, int]:
    """Metrics of ``model`` on videos ``ids`` computed here, without the engine: plain loop, windows
    stitched by frame index, labelled frames only."""
    ds = FeatureDataset(cache, clip_len, video_ids=ids)
    model.eval()
    preds, tgts = [], []
    with torch.no_grad():
        for i in range(0, len(ds), 2):
            batch = collate_features([ds[j] for j in range(i, min(i + 2, len(ds)))])
            out = model.forward_batch(batch)
            keep = batch["mask"]
            preds.append(torch.stack([out["valence"], out["arousal"]], -1)[keep].double())
            tgts.append(torch.stack([batch["valence"], batch["arousal"]], -1)[keep].double())
    pred, tgt = torch.cat(preds).numpy(), torch.cat(tgts).numpy()
    return va_metrics(pred, tgt), pred.shape[0]


@pytest.mark.slow
def test_train_end_to_end_exports_a_model_that_reproduces_its_metric(cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = tiny_args(cache, out, "train.eval_before_training=true")
    args.remove("--no-tensorboard")
    result = train_script.main(args)

    assert result["epochs_done"] == 2 and not result["stopped_early"]
    rows = list(csv.DictReader(open(result["metrics_csv"])))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]  # the untrained baseline, then two epochs
    assert all(math.isfinite(float(r["train_loss"])) for r in rows[1:])
    assert list((out / "tensorboard").rglob("events.out.tfevents.*")), "no TensorBoard event file"
    split = json.loads((out / "split.json").read_text())
    val_ids = split["val"]
    actors = lambda ids: {int(v[4:]) // 2 for v in ids}  # noqa: E731
    assert val_ids and not actors(val_ids) & actors(split["train"]), "split_by: actor leaked an actor"

    # Every labelled val frame is scored once (nothing dropped, nothing duplicated by padding).
    n_val = sum(int(r.label_mask.sum()) for r in FeatureDataset(cache, 10, video_ids=val_ids).records)
    best = result["best"]
    assert best["n_frames"] == n_val == result["n_labelled"]["val"]

    # The exported model, loaded back, gives the logged validation metric.
    best_dir = Path(result["best_model"])
    assert (best_dir / "experiment.yaml").is_file()
    info = json.loads((best_dir / "config.json").read_text())["training"]
    assert info["epoch"] == result["best_epoch"]
    model = from_pretrained(best_dir)
    metrics, n = reevaluate(model, cache, val_ids, clip_len=10)
    assert n == n_val
    for k in ("ccc_valence", "ccc_arousal", "ccc_mean", "rmse_valence"):
        assert metrics[k] == pytest.approx(best[k], abs=1e-5), k
    assert best["ccc_mean"] == max(float(r["val_ccc_mean"]) for r in rows)


@pytest.mark.slow
def test_logged_validation_equals_avfusion_evaluate(cache: Path, tmp_path: Path) -> None:
    """One evaluation path: the metrics training logs for its best epoch are, to 1e-9 and over the
    same frames, what `avfusion evaluate` computes for the exported model on the same split."""
    out = tmp_path / "run"
    result = train_script.main(tiny_args(cache, out, "train.epochs=1"))
    best = result["best"]
    evaluated = command("evaluate").main([
        "--model", str(out / "best"), "--config", str(CONFIG), "--features", str(cache),
        "--split-file", str(out / "split.json"), "--part", "val", "--no-plots", "--out", str(tmp_path / "eval"),
        "data.root=null", "data.clip_len=10", "data.stride=5", "data.batch_size=3"])
    assert evaluated["n_frames_scored"] == best["n_frames"] == result["n_labelled"]["val"]
    assert evaluated["n_videos"] == best["n_clips"]
    for k, v in evaluated["frames"].items():
        assert v == pytest.approx(best[k], abs=1e-9, rel=0), k


@pytest.mark.slow
def test_resume_ends_with_the_same_weights(cache: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    # Accumulation over 2 batches, dropout and modality dropout: the RNG, the data order and the
    # accumulation counter must all be restored. 6 train videos x 3 windows = 18 windows -> 6
    # batches of 3 -> 3 optimizer steps per epoch; stopping after 4 steps stops inside epoch 2.
    common = ("train.grad_accum=2", "train.epochs=3", "data.stride=10")
    full = train_script.main(tiny_args(cache, tmp_path / "full", *common))
    killed = train_script.main(tiny_args(cache, tmp_path / "resumed", *common, "train.stop_after_steps=4"))
    assert killed["stopped_early"] and killed["global_step"] == 4
    state = json.loads((Path(killed["checkpoint"]) / "trainer_state.json").read_text())
    assert (state["epoch"], state["batch_in_epoch"]) == (1, 2), state
    resumed = train_script.main(tiny_args(cache, tmp_path / "resumed", *common, "--resume", "latest"))

    assert resumed["global_step"] == full["global_step"]
    a = load_file(str(Path(full["checkpoint"]) / "model.safetensors"))
    b = load_file(str(Path(resumed["checkpoint"]) / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for x, y in zip(full["history"], resumed["history"]):
        assert x["val_ccc_mean"] == y["val_ccc_mean"]
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-9)


@pytest.mark.slow
def test_cross_validation_reports_mean_and_std(cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "cv"
    cv = train_script.main(tiny_args(cache, out, "--folds", "2", "train.epochs=1", "data.val_fraction=0"))
    assert cv["folds"] == 2 and cv["part"] == "test"
    folds = [json.loads((out / f"fold_{i}" / "split.json").read_text()) for i in range(2)]
    tested = [set(f["test"]) for f in folds]
    assert not tested[0] & tested[1] and len(tested[0] | tested[1]) == 8  # every clip tested once
    vals = [json.loads((out / f"fold_{i}" / "test_metrics.json").read_text())["ccc_mean"] for i in range(2)]
    assert cv["metrics"]["ccc_mean"]["mean"] == pytest.approx(np.mean(vals))
    assert cv["metrics"]["ccc_mean"]["std"] == pytest.approx(np.std(vals, ddof=1))
    assert json.loads((out / "cv_results.json").read_text())["metrics"]["ccc_mean"]["folds"] == pytest.approx(vals)


@pytest.mark.slow
def test_tiny_model_on_features_cached_from_synthetic_video(tmp_path: Path) -> None:
    """The demo's path: synthetic mp4s -> scripts/cache_features.py -> training, with the tiny
    model's own (weight-free) encoders; video-only training reads the audio-visual cache too."""
    from avfusion.synthetic import SyntheticConfig, generate_dataset

    cache_script = command("cache")
    root, cache = tmp_path / "synth", tmp_path / "cache"
    # 8 clips of 4 actors; the last two share a two-face video, which ties their actors: 3 groups.
    generate_dataset(root, SyntheticConfig(clips=8, frames=24, size=64, clips_per_actor=2))
    cache_script.main(["--config", str(CONFIG), "--out", str(cache), "--cpu", f"data.root={root}",
                       "data.clip_len=12", "data.stride=6"])
    args = ["--config", str(CONFIG), "--no-tensorboard", f"data.root={root}", f"data.features={cache}",
            "data.clip_len=12", "data.stride=6", "data.batch_size=4", "train.epochs=1", "train.cpu=true"]
    for mode in ("av", "video"):
        result = train_script.main(args + [f"output_dir={tmp_path / mode}", f"model_overrides.mode={mode}"])
        assert result["best"]["n_frames"] == result["n_labelled"]["val"] > 0
        assert from_pretrained(result["best_model"]).cfg.mode == mode
    with pytest.raises(ValueError, match="64 wide, the model expects 32"):
        train_script.main(args + [f"output_dir={tmp_path / 'bad'}", "model_overrides.audio.n_mels=32"])


# ------------------------------------------------------------------------------------------------
# Pieces


def test_warmup_then_cosine() -> None:
    f = warmup_cosine(total_steps=110, warmup_steps=10, min_ratio=0.1)
    assert [round(f(s), 6) for s in (0, 4, 9)] == [round(1 / 11, 6), round(5 / 11, 6), round(10 / 11, 6)]
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)


def test_weight_decay_only_on_weight_matrices() -> None:
    from avfusion.factory import create_model

    for temporal, matrix in (("transformer", "self_attn.in_proj_weight"), ("gru", "rnn.weight_ih_l0")):
        model = create_model("tiny", video={"name": "features", "dim": 8}, audio={"name": "features", "dim": 8},
                             fusion={"temporal": temporal})
        decay, no_decay = param_groups(model, 0.05)
        assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
        names = {id(p): n for n, p in model.named_parameters()}
        dn = {names[id(p)] for p in decay["params"]}
        nn_ = {names[id(p)] for p in no_decay["params"]}
        assert all((n.endswith("weight") or ".weight_" in n) and "norm" not in n for n in dn)
        assert any(matrix in n for n in dn) and "fusion.head.weight" in dn
        for n in ("fusion.time_emb", "fusion.modality_emb", "fusion.missing", "fusion.head.bias",
                  "fusion.joint.norm.weight"):
            assert n in nn_, n
        if temporal == "gru":  # recurrent biases are not decayed
            assert any(".bias_ih_l0" in n for n in nn_)
        assert len(dn) + len(nn_) == sum(1 for p in model.parameters() if p.requires_grad)


def test_epoch_sampler_is_a_function_of_seed_and_epoch() -> None:
    s = EpochSampler(50, seed=3)
    s.set_epoch(1)
    first = list(s)
    s.set_epoch(0)
    assert list(s) != first and sorted(list(s)) == list(range(50))
    s.set_epoch(1)
    assert list(s) == first  # replayable, whatever ran before
    assert list(EpochSampler(5, seed=0, shuffle=False)) == [0, 1, 2, 3, 4]


def test_collector_averages_overlaps_only_when_asked() -> None:
    from avfusion.evaluation.collect import PredictionCollector

    def row(vid, frames, pred):
        n = len(frames)
        return {"video_id": vid, "frame_indices": np.array(frames), "pred": np.array(pred, dtype=float),
                "target": np.zeros((n, 2)), "mask": np.ones(n, bool), "face_mask": np.ones(n, bool),
                "timestamps": np.array(frames, dtype=float) / 25}

    rows = [row("a", [0, 1], [[0.1, 0.2], [0.3, 0.4]]), row("b", [0, -1], [[0.5, 0.6], [9, 9]]),
            row("a", [1, 2], [[0.5, 0.0], [0.7, 0.7]])]
    mean = PredictionCollector(overlap="mean")
    mean.add_rows(rows)
    videos = mean.result()
    assert list(videos) == ["a", "b"]
    np.testing.assert_allclose(videos["a"].pred, [[0.1, 0.2], [0.4, 0.2], [0.7, 0.7]])
    np.testing.assert_array_equal(videos["a"].counts, [1, 2, 1])
    assert videos["b"].n_frames == 1  # the padded position (-1) is not a frame
    strict = PredictionCollector(overlap="error")
    strict.add_rows(rows)
    with pytest.raises(ValueError, match="frame 1 was predicted 2 times"):
        strict.result()


def test_experiment_config_types_and_errors(tmp_path: Path) -> None:
    cfg = load_experiment(CONFIG, ["train.lr=1e-3", "data.batch_size=4.0", "train.epochs=3"])
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float) and cfg.data.batch_size == 4
    with pytest.raises(ValueError, match="data.kind"):
        load_experiment(CONFIG, ["data.kind=afew"])
    with pytest.raises(ValueError, match="train.lr must be a number"):
        load_experiment(CONFIG, ["train.lr=fast"])
    with pytest.raises(ValueError, match="unknown key"):
        load_experiment(CONFIG, ["train.learning_rate=1"])
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        train_script.main(tiny_args(tmp_path / "nocache", tmp_path / "none", "--resume", "latest"))


def test_every_experiment_config_loads_and_names_a_model() -> None:
    from avfusion.factory import get_model_config

    files = sorted((REPO / "avfusion" / "configs").glob("*.yaml"))
    assert {f.stem for f in files} >= {"tiny_synthetic", "afew_emonet_video", "afew_mae_video",
                                       "affwild2_av_mae_wav2vec2", "affwild2_av_emonet_wav2vec2"}
    for f in files:
        cfg = load_experiment(f)
        model_cfg = get_model_config(cfg.model, **cfg.model_overrides)
        assert cfg.data.split_file or cfg.data.folds or cfg.data.val_fraction or cfg.data.kind == "affwild2", f
        if cfg.data.kind == "afew_va":
            assert model_cfg.mode == "video", f"{f}: AFEW-VA has no audio"


@pytest.mark.slow
def test_tampered_checkpoint_is_refused_on_resume(cache: Path, tmp_path: Path, capsys) -> None:
    """A checkpoint records the sha256 of its files: a replaced random-state file (Accelerate would
    skip an unreadable one with an info log) makes --resume refuse in one line; --resume-unverified
    warns and continues."""
    out = tmp_path / "run"
    killed = train_script.main(tiny_args(cache, out, "train.epochs=2", "train.stop_after_steps=1"))
    ckpt = Path(killed["checkpoint"])
    state = json.loads((ckpt / "trainer_state.json").read_text())
    rng = [name for name in state["files"] if name.startswith("random_states")]
    assert rng and "model.safetensors" in state["files"]
    (ckpt / rng[0]).write_bytes(b"not the saved random state")
    from avfusion.cli.train import main as train_main

    assert train_main(tiny_args(cache, out, "train.epochs=2", "--resume", "latest")) == 2
    err = capsys.readouterr().err
    assert rng[0] in err and "changed since the checkpoint was saved" in err and "Traceback" not in err
    (ckpt / rng[0]).unlink()
    resumed = train_script.main(tiny_args(cache, out, "train.epochs=2", "--resume", "latest", "--resume-unverified"))
    assert "missing" in capsys.readouterr().out and resumed["epochs_done"] == 2


def _best_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "best").iterdir())}


@pytest.mark.slow
def test_an_output_folder_belongs_to_one_run(cache: Path, tmp_path: Path, capsys) -> None:
    """Two live runs into one output_dir: the second is refused before it writes anything. A
    finished run is kept, byte for byte, when another training is started into its folder, unless
    --overwrite, which replaces it whole (no checkpoint of the old seed left beside the new)."""
    import subprocess
    import sys

    from avfusion.cli.train import main as train_main

    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom avfusion.runlock import run_lock\n"
         "with run_lock(sys.argv[1], 'train'):\n    print('held', flush=True)\n    time.sleep(120)", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert train_main(tiny_args(cache, out, "train.epochs=1")) == 2
        err = capsys.readouterr().err
        assert f"avfusion train (pid {holder.pid} on " in err and "is writing into this folder" in err
        assert sorted(p.name for p in out.iterdir()) == [".avfusion.lock"]  # nothing written
    finally:
        holder.kill()
        holder.wait()

    # The holder was killed: its lock is stale (one warning) and this run takes the folder.
    with pytest.warns(RuntimeWarning, match=rf"removed a stale lock of avfusion train \(pid {holder.pid} "):
        first = train_script.main(tiny_args(cache, out, "train.epochs=1"))
    assert not (out / ".avfusion.lock").exists()
    best = _best_files(out)

    assert train_main(tiny_args(cache, out, "train.epochs=1", "train.seed=7")) == 2
    err = capsys.readouterr().err
    assert "holds a finished training run of another config (train.seed: 0 -> 7)" in err and "--overwrite" in err
    assert _best_files(out) == best  # kept, byte for byte

    again = train_script.main(tiny_args(cache, out, "train.epochs=1", "train.seed=7", "--overwrite"))
    assert again["global_step"] == first["global_step"]
    assert _best_files(out) != best
    assert load_experiment(out / "experiment.yaml").train.seed == 7
    assert [p.name for p in (out / "checkpoints").iterdir()] == [Path(again["checkpoint"]).name]
