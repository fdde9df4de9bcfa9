"""Feature caching: killed runs resume to the same files, foreign encoders are refused, and training
on cached features sees the same first-batch loss as training on raw clips."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from avfusion.data import features as F

from conftest import command  # noqa: E402

REPO = Path(__file__).resolve().parent.parent




cache_features = command("cache")

N_CLIPS, N_FRAMES, CLIP_LEN = 4, 16, 8
from conftest import NEURAL_AV  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory) -> Path:
    from avfusion.synthetic import SyntheticConfig, generate_dataset

    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(root, SyntheticConfig(clips=N_CLIPS, frames=N_FRAMES, size=64, pair=False, gaps=True,
                                           clips_per_actor=2))
    return root


def write_config(path: Path, root: Path, seed: int = 0) -> Path:
    model = path.parent / "neural_av.yaml"
    model.write_text(yaml.safe_dump(NEURAL_AV))
    cfg = {
        "name": "cache_test",
        "model": str(model),
        "data": {"kind": "synthetic", "root": str(root), "clip_len": CLIP_LEN, "stride": CLIP_LEN,
                 "face_backend": "full", "face_mode": "full", "batch_size": 2, "num_workers": 0},
        "train": {"seed": seed, "cpu": True},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def video_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.safetensors") if p.name != F.ENCODERS_NAME and not p.name.startswith("."))


def assert_same_cache(a: Path, b: Path) -> None:
    files_a, files_b = video_files(a), video_files(b)
    assert [p.name for p in files_a] == [p.name for p in files_b]
    assert len(files_a) == N_CLIPS
    from safetensors import safe_open

    for pa, pb in zip(files_a, files_b):
        with safe_open(str(pa), "pt") as fa, safe_open(str(pb), "pt") as fb:
            assert fa.metadata() == fb.metadata(), pa.name
            assert sorted(fa.keys()) == sorted(fb.keys())
            for k in fa.keys():
                ta, tb = fa.get_tensor(k), fb.get_tensor(k)
                assert ta.dtype == tb.dtype, (pa.name, k)
                if ta.is_floating_point():  # labels hold NaN where unlabelled
                    ta, tb = torch.nan_to_num(ta, nan=-9.0), torch.nan_to_num(tb, nan=-9.0)
                assert torch.equal(ta, tb), (pa.name, k)


@pytest.fixture(scope="module")
def clean_cache(dataset_root, tmp_path_factory) -> Path:
    """One uninterrupted float16 run, the reference for the resume tests."""
    tmp = tmp_path_factory.mktemp("clean")
    cfg = write_config(tmp / "exp.yaml", dataset_root)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    result = cache_features.main(["--config", str(cfg), "--out", str(tmp / "cache")])
    torch.set_num_threads(n)
    assert len(result.written) == N_CLIPS and not result.skipped
    return tmp / "cache"


def test_cache_contents(clean_cache, dataset_root):
    from avfusion.data.manifest import load_manifest

    manifest = F.read_manifest(clean_cache)
    assert manifest["window"] == CLIP_LEN and manifest["dtype"] == "float16"
    assert manifest["video_dim"] == 16 and manifest["audio_dim"] == 32
    assert len(manifest["encoder_hash"]) == 64
    records = {r.video_id: r for r in load_manifest(dataset_root / "manifest.csv", face_mode="full")}
    assert sorted(manifest["videos"]) == sorted(records)
    for vid, name in manifest["videos"].items():
        feats = F.load_video_features(clean_cache / name)
        rec = records[vid]
        assert feats.n_frames == rec.n_frames
        assert feats.video.dtype == torch.float16 and feats.video.shape == (rec.n_frames, 16)
        assert feats.audio.shape == (rec.n_frames, 32) and feats.audio_valid
        np.testing.assert_allclose(feats.timestamps, rec.frame_times(), atol=1e-6)
        np.testing.assert_array_equal(feats.label_mask, rec.label_mask)
        np.testing.assert_array_equal(feats.labels[rec.label_mask], rec.labels[rec.label_mask])
        assert feats.face_mask.all()
        assert torch.isfinite(feats.video.float()).all() and feats.video.float().abs().sum() > 0
    # The synthetic data has unlabelled frames (gaps): they must stay unlabelled in the cache.
    assert any(not F.load_video_features(clean_cache / n).label_mask.all() for n in manifest["videos"].values())


@pytest.mark.slow
def test_killed_run_resumes_to_identical_files(clean_cache, dataset_root, tmp_path):
    cfg = write_config(tmp_path / "exp.yaml", dataset_root)
    out = tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "avfusion.cli.cache", "--config", str(cfg),
                             "--out", str(out)], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not video_files(out) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, f"cache_features ended before it could be killed: {proc.stderr.read()[-2000:]}"
        assert video_files(out), "no feature file appeared within 120 s"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    done = [p.name for p in video_files(out)]
    assert 1 <= len(done) < N_CLIPS, done
    for p in video_files(out):  # whatever exists is complete
        F.load_video_features(p)

    result = cache_features.main(["--config", str(cfg), "--out", str(out)])
    assert sorted(F.video_filename(v) for v in result.skipped) == done
    assert len(result.written) == N_CLIPS - len(done)
    assert not list(out.glob(".*.tmp")) and not list(out.glob(".*.partial-*")), "a stale temporary file survived the rerun"
    assert_same_cache(out, clean_cache)


def test_crash_while_writing_leaves_no_file(clean_cache, dataset_root, tmp_path, monkeypatch):
    """A failure between writing the bytes and renaming them leaves no file under the final name;
    the rerun writes the rest, equal to an uninterrupted run."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name the file being written")
    cfg = write_config(tmp_path / "exp.yaml", dataset_root)
    out = tmp_path / "cache"
    import avfusion.files as files

    real_fsync = files._fsync_file
    victim = F.video_filename(sorted(F.read_manifest(clean_cache)["videos"])[1])

    def crash_on_victim(path: Path) -> None:
        if Path(path).name.startswith(f".{Path(victim).stem}{files.PARTIAL_MARK}"):
            raise OSError("simulated crash while writing")
        real_fsync(path)

    monkeypatch.setattr(files, "_fsync_file", crash_on_victim)
    with pytest.raises(OSError, match="simulated crash"):
        cache_features.main(["--config", str(cfg), "--out", str(out)])
    assert not (out / victim).exists()
    assert len(video_files(out)) == 1
    monkeypatch.setattr(files, "_fsync_file", real_fsync)
    result = cache_features.main(["--config", str(cfg), "--out", str(out)])
    assert len(result.skipped) == 1 and len(result.written) == N_CLIPS - 1
    assert_same_cache(out, clean_cache)


def test_other_encoder_weights_are_refused(clean_cache, dataset_root, tmp_path):
    import shutil

    out = tmp_path / "cache"
    shutil.copytree(clean_cache, out)
    victim = video_files(out)[0]
    victim.unlink()  # something left to do, so the run would write if it were allowed
    cfg = write_config(tmp_path / "exp.yaml", dataset_root, seed=1)  # other random encoder weights
    with pytest.raises(ValueError, match="weight hash") as err:
        cache_features.main(["--config", str(cfg), "--out", str(out)])
    assert F.read_manifest(clean_cache)["encoder_hash"] in str(err.value)
    assert not victim.exists()
    # Another storage dtype would mix feature precisions: refused as well.
    cfg0 = write_config(tmp_path / "exp0.yaml", dataset_root, seed=0)
    with pytest.raises(ValueError, match="dtype"):
        cache_features.main(["--config", str(cfg0), "--out", str(out), "--dtype", "float32"])


def test_failed_run_does_not_block_its_retry(clean_cache, dataset_root, tmp_path, monkeypatch):
    """A run that fails before writing any feature file (here: a crash on the first write) leaves a
    manifest; a retry with corrected settings (another storage dtype) replaces it instead of
    refusing, and gives the same files as a clean run with those settings."""
    cfg = write_config(tmp_path / "exp.yaml", dataset_root)
    out = tmp_path / "cache"

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name the file being written")
    import avfusion.files as files

    real_fsync = files._fsync_file

    def crash(path: Path) -> None:  # the first feature file fails; the manifest is written
        name = Path(path).name
        if "manifest" not in name and Path(F.ENCODERS_NAME).stem not in name:
            raise OSError("simulated full disk")
        real_fsync(path)

    monkeypatch.setattr(files, "_fsync_file", crash)
    with pytest.raises(OSError, match="full disk"):
        cache_features.main(["--config", str(cfg), "--out", str(out), "--dtype", "float32"])
    assert F.manifest_path(out).is_file() and not video_files(out)
    monkeypatch.undo()
    with pytest.warns(UserWarning, match="no feature file was written"):
        result = cache_features.main(["--config", str(cfg), "--out", str(out)])
    assert len(result.written) == N_CLIPS
    assert F.read_manifest(out)["dtype"] == F.read_manifest(clean_cache)["dtype"]
    assert_same_cache(out, clean_cache)


def test_damaged_cache_file_is_rewritten_on_rerun(clean_cache, dataset_root, tmp_path):
    """A feature file cut in half (a copy interrupted, a full disk outside avfusion) is not counted
    as cached: the rerun names it, computes it again, and the cache equals a clean one."""
    import shutil

    out = tmp_path / "cache"
    shutil.copytree(clean_cache, out)
    victim = video_files(out)[1]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    assert F.feature_file_problem(victim) is not None
    assert all(F.feature_file_problem(p) is None for p in video_files(clean_cache))
    cfg = write_config(tmp_path / "exp.yaml", dataset_root)
    with pytest.warns(UserWarning, match=victim.name):
        result = cache_features.main(["--config", str(cfg), "--out", str(out)])
    assert len(result.written) == 1 and len(result.skipped) == N_CLIPS - 1
    assert_same_cache(out, clean_cache)


def _first_batch_loss(model, loader) -> tuple[float, dict]:
    from avfusion.train.loop import model_inputs, predictions, targets
    from avfusion.train.experiment import TrainConfig
    from avfusion.train.optim import build_loss_fn

    loss_fn = build_loss_fn(TrainConfig(loss="ccc"))
    batch = next(iter(loader))
    model.train()  # as in training; dropout and modality dropout are 0 in TINY
    out = model(**model_inputs(batch))
    return float(loss_fn(predictions(out), targets(batch), batch["mask"])["loss"].detach()), batch


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_cached_features_give_the_raw_clip_loss(dataset_root, clean_cache, tmp_path, dtype):
    """Same weights, same first batch: the loss from cached features equals the loss from raw clips.

    float32 cache: equal to 1e-6 (the encoders see the same crops and audio; measured: bit-identical).
    float16 cache: features are rounded to 11 significant bits (relative error <= 2**-11 ~ 4.9e-4),
    which moves this loss by ~1e-5 here (bound used: 1e-3).
    """
    from torch.utils.data import DataLoader

    from avfusion.data.build import clip_datasets, load_records
    from avfusion.train.experiment import build_model, load_experiment
    from avfusion.data.features import FeatureDataset, collate_features
    from avfusion.data.build import serving_for
    from avfusion.data.speech import serving_rule

    if dtype == "float16":
        cache = clean_cache
    else:
        cfg_path = write_config(tmp_path / "exp.yaml", dataset_root)
        cache = tmp_path / "cache32"
        cache_features.main(["--config", str(cfg_path), "--out", str(cache), "--dtype", "float32"])
    cfg = load_experiment(write_config(tmp_path / "exp_raw.yaml", dataset_root))
    torch.manual_seed(0)
    model = build_model(cfg)

    records = load_records(cfg.data)
    made, collate = clip_datasets(cfg.data, {"val": records}, model)
    raw = DataLoader(made["val"], batch_size=3, collate_fn=collate)
    # The same speech rule on both paths (the model's serving spec): the cache stores the speech
    # probabilities, the raw path computes them.
    rule = serving_rule(serving_for(cfg.data, model))
    assert rule is not None
    feats = DataLoader(FeatureDataset(cache, CLIP_LEN, speech=rule), batch_size=3, collate_fn=collate_features)

    loss_raw, b_raw = _first_batch_loss(model, raw)
    loss_feat, b_feat = _first_batch_loss(model, feats)
    for k in ("valence", "arousal", "mask", "face_mask", "audio_valid", "frame_indices", "timestamps",
              "audio_frames", "speech"):
        assert torch.equal(b_raw[k], b_feat[k]), k
    assert b_raw["video_id"] == b_feat["video_id"]
    with torch.no_grad():
        v = model.encode_video(b_raw["video"], b_raw["face_mask"])
        a = model.encode_audio(b_raw["audio"], b_raw["frame_times"], b_raw["audio_lengths"])
    rel = 2.0 ** -11 if dtype == "float16" else 1e-5
    torch.testing.assert_close(b_feat["video_feats"], v, rtol=rel, atol=1e-6)
    torch.testing.assert_close(b_feat["audio_feats"], a, rtol=rel, atol=1e-6)
    assert abs(loss_raw - loss_feat) < (1e-3 if dtype == "float16" else 1e-6), (loss_raw, loss_feat)


def test_feature_dataset_windows_match_clip_dataset(clean_cache, dataset_root):
    """Same windows (stride < clip_len, padding at the end) and masks as ClipDataset."""
    from avfusion.data.clips import make_windows
    from avfusion.data.features import FeatureDataset
    from avfusion.data.manifest import load_manifest

    ds = FeatureDataset(clean_cache, 12, stride=5)
    records = sorted(load_manifest(dataset_root / "manifest.csv", face_mode="full"), key=lambda r: r.video_id)
    expected = make_windows(records, 12, 5)
    assert len(ds) == len(expected) and any((w.indices < 0).any() for w in expected)
    for i, w in enumerate(expected):
        item, rec = ds[i], records[w.record]
        assert item["video_id"] == rec.video_id
        np.testing.assert_array_equal(item["frame_indices"].numpy(), w.indices)
        real = w.indices >= 0
        assert item["video_feats"].shape == (12, 16) and item["audio_feats"].shape == (12, 32)
        assert (item["video_feats"][~real] == 0).all() and not item["mask"][~real].any()
        assert not item["face_mask"][~real].any()
        np.testing.assert_array_equal(item["mask"].numpy()[real], rec.label_mask[w.indices[real]])
        full = F.load_video_features(clean_cache / F.video_filename(rec.video_id))
        assert torch.equal(item["video_feats"][real], full.video[w.indices[real]].float())
    with pytest.raises(KeyError, match="not in the cache"):
        FeatureDataset(clean_cache, 8, video_ids=["nope"])


def test_model_checks_against_the_cache(clean_cache, dataset_root, tmp_path):
    """A video-only model may read an audio-visual cache when its video encoder is the cache's;
    load_cache_encoders gives a fresh model exactly those weights."""
    import avfusion
    from avfusion.caching import check_model_matches_cache, encoder_hash, load_cache_encoders

    from avfusion.config import ModelConfig, from_dict

    torch.manual_seed(123)  # other random weights than the cache's
    video_only = avfusion.create_model(from_dict(ModelConfig, {**NEURAL_AV, "mode": "video", "audio": None}))
    with pytest.raises(ValueError, match="video_encoder hashes to"):
        check_model_matches_cache(video_only, clean_cache)
    av = avfusion.create_model(from_dict(ModelConfig, NEURAL_AV))
    load_cache_encoders(av, clean_cache)
    assert encoder_hash(av) == F.read_manifest(clean_cache)["encoder_hash"]
    video_only.video_encoder.load_state_dict(av.video_encoder.state_dict())
    check_model_matches_cache(video_only, clean_cache)
    check_model_matches_cache(av, clean_cache)


def test_feature_batches_equal_clip_batches_with_padding(clean_cache, dataset_root):
    """Every non-feature key of every batch, padded last windows included, equals ClipDataset's."""
    from torch.utils.data import DataLoader

    from avfusion.data.clips import ClipDataset, collate
    from avfusion.data.faces import FaceCropper
    from avfusion.data.features import FeatureDataset, collate_features
    from avfusion.data.manifest import load_manifest

    records = sorted(load_manifest(dataset_root / "manifest.csv", face_mode="full"), key=lambda r: r.video_id)
    clips = ClipDataset(records, 12, stride=6, cropper=FaceCropper("full"), with_audio=False)
    feats = FeatureDataset(clean_cache, 12, stride=6)
    n = 0
    for a, b in zip(DataLoader(clips, batch_size=4, collate_fn=collate),
                    DataLoader(feats, batch_size=4, collate_fn=collate_features)):
        for k in ("valence", "arousal", "mask", "face_mask", "frame_indices", "timestamps"):
            assert torch.equal(a[k], b[k]), k
        assert a["video_id"] == b["video_id"]
        n += len(a["video_id"])
    assert n == len(clips) == len(feats)


def test_cached_and_raw_predictions_agree_per_frame_with_mixed_frame_rates(tmp_path):
    """25, 29.97 and 30 fps clips batched together (their windows' audio differ in length, so the
    shorter ones are padded): the same model's per-frame predictions from a float32 cache and from
    the raw clips agree to 1e-5, for the log-mel + HOG model and for wav2vec2 (group norm) + EmoNet."""
    from torch.utils.data import DataLoader

    import avfusion
    from avfusion.caching import cache_dataset
    from avfusion.config import ModelConfig, from_dict
    from avfusion.data.clips import ClipDataset, collate
    from avfusion.data.faces import FaceCropper
    from avfusion.data.features import FeatureDataset, collate_features
    from avfusion.data.manifest import load_manifest
    from avfusion.data.transforms import build_transform
    from avfusion.evaluation.collect import predict_loader
    from avfusion.synthetic import SyntheticConfig, generate_dataset

    root = tmp_path / "mixed"
    generate_dataset(root, SyntheticConfig(clips=3, frames=20, size=64, fps="mixed", pair=False, gaps=False))
    records = sorted(load_manifest(root / "manifest.csv", face_mode="full"), key=lambda r: r.video_id)
    assert len({round(r.fps, 2) for r in records}) == 3
    for name, cfg in (("tiny", None), ("neural", NEURAL_AV)):
        torch.manual_seed(0)
        model = (avfusion.create_model("tiny") if cfg is None else avfusion.create_model(from_dict(ModelConfig, cfg))).eval()
        clips = ClipDataset(records, 8, cropper=FaceCropper("full"), transform=build_transform(model.pretrained_cfg, False))
        # Cached one window at a time; the raw path batches three clips of different lengths.
        cache_dataset(model, clips, tmp_path / f"cache_{name}", dtype=torch.float32, batch_size=1, progress=False)
        n = {r.video_id: r.n_frames for r in records}
        raw = predict_loader(model, DataLoader(clips, batch_size=3, collate_fn=collate), n)
        cached = predict_loader(model, DataLoader(FeatureDataset(tmp_path / f"cache_{name}", 8), batch_size=3,
                                                  collate_fn=collate_features), n)
        for vid in n:
            np.testing.assert_allclose(cached[vid].pred, raw[vid].pred, atol=1e-5, err_msg=f"{name} {vid}")
