"""scripts/evaluate.py: EmoNet-8 zero-shot on an AFEW-VA tree, checked against an independent run of
the network and metrics written out in numpy here; exported models on raw clips and on cached
features give the same metrics."""
from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import command  # noqa: E402





evaluate_script = command("evaluate")

# A tiny EmoNet (the official one is width 256, 2 hourglasses, 4 head blocks): same code paths.
TINY_EMONET = {"width": 16, "num_modules": 1, "n_blocks": 1, "n_expression": 8}
CLIP_LEN = 4  # 8 frames per clip: two windows, so stitching is exercised
N_CLIPS, N_FRAMES = 4, 8
SMOOTH = 3
THRESHOLD = 0.2  # per-clip CCC threshold of the table (published tables use 0.5; these 8-frame clips
                 # score lower, and a threshold between them exercises both counts)

from conftest import NEURAL_AV  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    from avfusion.synthetic import SyntheticConfig, generate_dataset

    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(root, SyntheticConfig(clips=N_CLIPS, frames=N_FRAMES, size=64, pair=False, gaps=False,
                                           clips_per_actor=2))
    return root


# ---- an independent reading of the AFEW-VA tree and run of the network ---------------------------


def read_clip(clip_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """frames (N, H, W, 3) RGB, labels (N, 2) in [-1, 1], landmarks (N, 68, 2), from the files."""
    data = json.loads((clip_dir / f"{clip_dir.name}.json").read_text())
    keys = sorted(data["frames"])
    frames = np.stack([cv2.imread(str(clip_dir / f"{k}.png"))[..., ::-1] for k in keys])
    labels = np.array([[data["frames"][k]["valence"], data["frames"][k]["arousal"]] for k in keys]) / 10.0
    lms = np.array([data["frames"][k]["landmarks"] for k in keys], dtype=np.float32)
    return frames, labels, lms


def emonet_va(net: torch.nn.Module, crops: np.ndarray) -> np.ndarray:
    """(N, 2) valence/arousal of face crops (N, 256, 256, 3), averaged with the mirrored image."""
    x = torch.from_numpy(crops.transpose(0, 3, 1, 2).copy()).float() / 255.0
    with torch.no_grad():
        a, b = net(x), net(x.flip(-1))
    return torch.stack([(a["valence"] + b["valence"]) / 2, (a["arousal"] + b["arousal"]) / 2], 1).numpy()


def crop_windows(frames: np.ndarray, lms: np.ndarray) -> np.ndarray:
    """Landmark face crops as zero-shot evaluation cuts them: boxes smoothed over the whole clip
    (the inference engine streams a video in chunks but smooths across their borders)."""
    from avfusion.data.faces import FaceCropper

    cropper = FaceCropper("landmarks", margin=0.25, output_size=256, smoothing=5)
    return cropper(frames, lms)[0]


@pytest.fixture(scope="module")
def zero_shot_case(synthetic_root, tmp_path_factory) -> tuple[Path, dict]:
    """Tiny EmoNet weights saved like the official files (a plain state dict, keys prefixed
    ``module.``), and what they predict on every clip, computed here.

    Random, except the valence/arousal rows of the last layer, fitted by least squares on these
    clips (a random head gives near-constant outputs and every clip would score CCC ~ 0). The head
    is linear in its input, so the predictions of the fitted weights follow from the hidden
    activations without another run of the network.
    """
    from avfusion.encoders.emonet import EmoNet

    torch.manual_seed(0)
    net = EmoNet(**TINY_EMONET).eval()
    hidden: list[torch.Tensor] = []
    hook = net.emo_fc_2[2].register_forward_hook(lambda m, i, o: hidden.append(o.detach()))
    clips = {}
    for clip in sorted((synthetic_root / "AFEW-VA").iterdir()):
        frames, labels, lms = read_clip(clip)
        n = len(hidden)
        emonet_va(net, crop_windows(frames, lms))
        # emonet_va runs the crops, then the mirrored crops: the head sees the mean of the two.
        a, b = hidden[n:]
        clips[clip.name] = [((a + b) / 2).double().numpy(), labels]
    hook.remove()
    design = np.concatenate([np.hstack([h, np.ones((len(h), 1))]) for h, _ in clips.values()])
    coef = np.linalg.lstsq(design, np.concatenate([y for _, y in clips.values()]), rcond=None)[0]
    with torch.no_grad():
        last = net.emo_fc_2[3]
        last.weight[-2:] = torch.from_numpy(coef[:-1].T).float()
        last.bias[-2:] = torch.from_numpy(coef[-1]).float()
    path = tmp_path_factory.mktemp("weights") / "emonet_8_tiny.pth"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)
    expected = {cid: (np.clip(np.hstack([h, np.ones((len(h), 1))]) @ coef, -1, 1), y)
                for cid, (h, y) in clips.items()}
    return path, expected


def ccc_np(p: np.ndarray, t: np.ndarray) -> float:
    p = np.clip(p, -1, 1)
    if np.all(p == p[0]) or np.all(t == t[0]):
        return 0.0
    cov = np.mean((p - p.mean()) * (t - t.mean()))
    return float(2 * cov / (p.var() + t.var() + (p.mean() - t.mean()) ** 2))


def quadrant_np(v: np.ndarray, a: np.ndarray) -> np.ndarray:
    return np.select([(v >= 0) & (a >= 0), (v < 0) & (a >= 0), (v < 0) & (a < 0)], [1, 2, 3], 4)


def moving_average_np(x: np.ndarray, w: int) -> np.ndarray:
    h = w // 2
    return np.stack([x[max(0, t - h):t + h + 1].mean(0) for t in range(len(x))])


def expected_metrics(clips: dict, smooth: int) -> dict:
    """The per-clip table, combined CCC and quadrant accuracies, in plain numpy."""
    per_clip = {cid: (pred, labels, moving_average_np(pred, smooth)) for cid, (pred, labels) in clips.items()}
    t = np.concatenate([v[1] for v in per_clip.values()])
    out: dict = {"raw": {}, "smoothed": {}}
    for name, idx in (("raw", 0), ("smoothed", 2)):
        res = out[name]
        allp = np.concatenate([v[idx] for v in per_clip.values()])
        for i, dim in enumerate(("valence", "arousal")):
            c = np.array([ccc_np(v[idx][:, i], v[1][:, i]) for v in per_clip.values()])
            res[f"ccc_{dim}_min"], res[f"ccc_{dim}_max"], res[f"ccc_{dim}_mean"] = c.min(), c.max(), c.mean()
            res[f"n_clips_{dim}_ge"] = int((c >= THRESHOLD).sum())
            res[f"n_clips_{dim}_lt"] = int((c < THRESHOLD).sum())
            res[f"ccc_{dim}_combined"] = ccc_np(allp[:, i], t[:, i])
        res["quadrant_acc_frame"] = float(np.mean(quadrant_np(allp[:, 0], allp[:, 1]) == quadrant_np(t[:, 0], t[:, 1])))
        hits = [quadrant_np(*v[idx].mean(0)) == quadrant_np(*v[1].mean(0)) for v in per_clip.values()]
        res["quadrant_acc_clip"] = float(np.mean(hits))
        res["per_clip"] = {cid: (ccc_np(v[idx][:, 0], v[1][:, 0]), ccc_np(v[idx][:, 1], v[1][:, 1]))
                           for cid, v in per_clip.items()}
    return out


def parse_table(text: str, title: str) -> dict[str, list[float]]:
    """The valence/arousal rows of the markdown table printed under ``title``."""
    block = text.split(title, 1)[1]
    rows = {}
    for dim in ("valence", "arousal"):
        line = re.search(rf"^\| {dim} \|(.*)\|$", block, re.M).group(1)
        rows[dim] = [float(c) for c in line.split("|")]
    return rows


def test_emonet8_zero_shot_on_afew_va(synthetic_root, zero_shot_case, tmp_path, capsys):
    checkpoint, clips = zero_shot_case
    out = tmp_path / "eval"
    argv = ["--model", "emonet_8", "--checkpoint", str(checkpoint), "--data-kind", "afew_va",
            "--root", str(synthetic_root / "AFEW-VA"), "--clip-len", str(CLIP_LEN), "--batch-size", "2",
            "--smooth", str(SMOOTH), "--threshold", str(THRESHOLD), "--out", str(out), "--cpu",
            "--precision", "fp32"]
    for k, v in TINY_EMONET.items():
        argv += ["--set", f"video.{k}={v}"]
    results = evaluate_script.main(argv)
    printed = capsys.readouterr().out
    expected = expected_metrics(clips, SMOOTH)

    saved = json.loads((out / "metrics.json").read_text())
    assert saved["n_videos"] == N_CLIPS and saved["n_frames_scored"] == N_CLIPS * N_FRAMES
    assert saved["part"] == "all"
    for name, res in (("raw", saved["per_clip"]), ("smoothed", saved["smoothed"]["per_clip"])):
        exp = expected[name]
        for key in [k for k in exp if k != "per_clip"]:
            # A prediction within ~1e-6 of 0 could land in another quadrant here than in the float32
            # network: quadrant accuracies may differ by one frame at most.
            tol = 1.01 / (N_CLIPS * N_FRAMES) if key == "quadrant_acc_frame" else 2e-4
            assert res[key] == pytest.approx(exp[key], abs=tol), (name, key)
    # The example must not be degenerate: clips on both sides of the threshold, none constant.
    assert "clips CCC >= 0.2" in printed
    assert saved["per_clip"]["n_clips_valence_ge"] + saved["per_clip"]["n_clips_arousal_ge"] > 0
    assert saved["per_clip"]["n_clips_valence_lt"] + saved["per_clip"]["n_clips_arousal_lt"] > 0
    assert saved["quadrant_accuracy"]["frame"] == saved["per_clip"]["quadrant_acc_frame"]
    # Whole-split CCC (va_metrics over all frames) is the combined per-clip CCC.
    assert saved["frames"]["ccc_valence"] == pytest.approx(expected["raw"]["ccc_valence_combined"], abs=2e-4)
    assert saved["frames"]["ccc_arousal"] == pytest.approx(expected["raw"]["ccc_arousal_combined"], abs=2e-4)

    # The printed tables carry the same numbers (3 decimals) and the quadrant accuracy.
    for title, name in (("Per-clip CCC (no smoothing)", "raw"), (f"moving average over {SMOOTH} frames", "smoothed")):
        rows = parse_table(printed, title)
        exp = expected[name]
        for dim in ("valence", "arousal"):
            want = [exp[f"ccc_{dim}_min"], exp[f"ccc_{dim}_max"], exp[f"ccc_{dim}_mean"],
                    exp[f"n_clips_{dim}_ge"], exp[f"n_clips_{dim}_lt"], exp[f"ccc_{dim}_combined"]]
            assert rows[dim] == pytest.approx(want, abs=1.5e-3), (title, dim)
    q, qc = 100 * saved["per_clip"]["quadrant_acc_frame"], 100 * expected["raw"]["quadrant_acc_clip"]
    assert f"quadrant accuracy {q:.1f} % of frames, {qc:.1f} % of clips" in printed

    # Per-clip CSV and per-frame predictions.
    import pandas as pd

    table = pd.read_csv(out / "per_clip.csv", dtype={"clip_id": str}).set_index("clip_id")
    assert not table["degenerate_valence"].any() and not table["degenerate_arousal"].any()
    for cid, (cv, ca) in expected["raw"]["per_clip"].items():
        assert table.loc[cid, "ccc_valence"] == pytest.approx(cv, abs=2e-4)
        assert table.loc[cid, "ccc_arousal"] == pytest.approx(ca, abs=2e-4)
        sv, sa = expected["smoothed"]["per_clip"][cid]
        assert table.loc[cid, "smoothed_ccc_valence"] == pytest.approx(sv, abs=2e-4)
    frames_csv = pd.read_csv(out / "predictions.csv", dtype={"video_id": str})
    assert len(frames_csv) == N_CLIPS * N_FRAMES
    assert frames_csv.groupby("video_id")["frame"].apply(lambda f: sorted(f) == list(range(N_FRAMES))).all()
    for name in ("scatter.png", "per_clip_ccc_hist.png", "clips_over_time.png"):
        assert (out / "plots" / name).stat().st_size > 1000
    assert results["per_clip"]["n_clips"] == N_CLIPS


@pytest.mark.slow
def test_exported_model_on_raw_clips_and_cached_features(synthetic_root, tmp_path):
    """An exported audio-visual model scores the same on raw clips and on a float32 feature cache.

    Windows of 4 frames tile the 8-frame clips, so no audio row of a raw batch is zero-padded:
    padding changes what group-normalised wav2vec2 models (this tiny one, wav2vec2-base) compute,
    whereas the cache encodes every window unpadded.
    """
    import yaml

    from avfusion import save_pretrained

    cache_features = command("cache")

    model_yaml = tmp_path / "neural_av.yaml"
    model_yaml.write_text(yaml.safe_dump(NEURAL_AV))
    cfg = {"model": str(model_yaml),
           "data": {"kind": "synthetic", "root": str(synthetic_root), "clip_len": CLIP_LEN, "stride": CLIP_LEN,
                    "face_backend": "full", "face_mode": "full", "test_fraction": 0.4, "val_fraction": 0.2},
           "train": {"seed": 0, "cpu": True}}
    cfg_path = tmp_path / "exp.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    torch.manual_seed(0)
    from avfusion.train.experiment import build_model, load_experiment

    exp = load_experiment(cfg_path)
    model = build_model(exp)
    from avfusion.data.build import serving_for

    model.cfg.serving = serving_for(exp.data, model, training=True)  # as training records it
    save_pretrained(model, tmp_path / "model")
    cache_features.main(["--config", str(cfg_path), "--out", str(tmp_path / "cache"), "--dtype", "float32"])

    common = ["--model", str(tmp_path / "model"), "--config", str(cfg_path), "--no-plots", "--cpu"]
    raw = evaluate_script.main(common + ["--out", str(tmp_path / "raw"), "--precision", "fp32"])
    cached = evaluate_script.main(common + ["--out", str(tmp_path / "cached"), "--features", str(tmp_path / "cache")])
    assert json.loads((tmp_path / "raw" / "metrics.json").read_text())["part"] == "test"
    assert raw["n_frames_scored"] == cached["n_frames_scored"] > 0
    for key, value in raw["frames"].items():
        assert cached["frames"][key] == pytest.approx(value, abs=1e-6), key
    for key in ("ccc_valence_mean", "ccc_arousal_mean", "quadrant_acc_clip"):
        assert cached["per_clip"][key] == pytest.approx(raw["per_clip"][key], abs=1e-6), key


@pytest.mark.slow
def test_full_size_emonet8_with_parity_weights_zero_shot(synthetic_root, tmp_path, capsys):
    """The official architecture at full size, filled with the parity reference's synthetic
    weights and saved like emonet_8.pth (``module.`` prefix), zero-shot on a 2-clip AFEW-VA tree:
    the script's table and metrics equal numpy on a direct run of the network. The recipe's
    outputs are of order 1e4 (all clipped to -1), so the valence and arousal rows of the last layer
    are rescaled and recentred on these frames (outputs within [-0.5, 0.5], none clipped): a wrong
    full-size forward or a wrongly loaded file gives other values, not the same saturated ones.
    A full-size network: both cores (the module's other tests are tiny and single-threaded)."""
    from conftest import EMONET_REFERENCE, synthetic_state_dict

    torch.set_num_threads(2)  # the one_thread fixture restores its own count afterwards

    from avfusion.encoders.emonet import EmoNet

    layout = EMONET_REFERENCE["models"]["emonet_8"]["state_dict"]
    state = synthetic_state_dict(layout)
    net = EmoNet(n_expression=8).eval()
    net.load_state_dict(state, strict=True)

    tree = tmp_path / "AFEW-VA"
    clips = {}
    full_len = 2  # frames per clip: each costs two full-size forwards (the image and its mirror)
    for clip in sorted((synthetic_root / "AFEW-VA").iterdir())[:2]:  # 2 clips, their first 2 frames
        dst = tree / clip.name
        dst.mkdir(parents=True)
        doc = json.loads((clip / f"{clip.name}.json").read_text())
        doc["frames"] = {k: v for k, v in sorted(doc["frames"].items())[:full_len]}
        for k in doc["frames"]:
            (dst / f"{k}.png").write_bytes((clip / f"{k}.png").read_bytes())
        (dst / f"{clip.name}.json").write_text(json.dumps(doc))
        frames, labels, lms = read_clip(dst)
        clips[clip.name] = (crop_windows(frames, lms), labels)
    raw = np.concatenate([emonet_va(net, crops) for crops, _ in clips.values()])  # (N, 2), unclipped
    centre = raw.mean(axis=0)
    scale = 0.5 / np.maximum(np.abs(raw - centre).max(axis=0), 1e-12)
    for d, row in enumerate((8, 9)):  # the head's valence and arousal outputs (after 8 expressions)
        state["emo_fc_2.3.weight"][row] *= float(scale[d])
        state["emo_fc_2.3.bias"][row] = float(scale[d]) * (state["emo_fc_2.3.bias"][row] - float(centre[d]))
    net.load_state_dict(state, strict=True)
    weights = tmp_path / "emonet_8.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, weights)
    clips = {name: (emonet_va(net, crops), labels) for name, (crops, labels) in clips.items()}
    pred = np.concatenate([p for p, _ in clips.values()])
    assert np.abs(pred).max() < 0.51 and np.ptp(pred, axis=0).min() > 0.5  # spread out, none clipped

    out = tmp_path / "eval"
    evaluate_script.main(["--model", "emonet_8", "--checkpoint", str(weights), "--data-kind", "afew_va",
                          "--root", str(tree), "--clip-len", str(full_len), "--smooth", str(SMOOTH),
                          "--threshold", str(THRESHOLD), "--out", str(out), "--cpu", "--no-plots",
                          "--precision", "fp32"])
    printed = capsys.readouterr().out
    saved = json.loads((out / "metrics.json").read_text())
    expected = expected_metrics(clips, SMOOTH)["raw"]
    for key in [k for k in expected if k != "per_clip"]:
        assert saved["per_clip"][key] == pytest.approx(expected[key], abs=2e-4), key
    rows = parse_table(printed, "Per-clip CCC (no smoothing)")
    assert rows["valence"][-1] == pytest.approx(expected["ccc_valence_combined"], abs=1.5e-3)
    assert "quadrant accuracy" in printed
    import pandas as pd

    frames_csv = pd.read_csv(out / "predictions.csv", dtype={"video_id": str})
    got = frames_csv.sort_values(["video_id", "frame"])[["valence_pred", "arousal_pred"]].to_numpy()
    want = np.concatenate([p for p, _ in clips.values()])
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)


def test_masking_a_modality_hides_it_from_the_model_only():
    """mask_modality: the model no longer sees the masked sense (its features can be anything),
    while the batch's own masks, which decide what is scored, stay as they were."""
    import avfusion
    from avfusion.config import ModelConfig, from_dict
    from avfusion.evaluation.collect import mask_modality

    torch.manual_seed(0)
    model = avfusion.create_model(from_dict(ModelConfig, {
        "mode": "av", "video": {"name": "features", "dim": 6}, "audio": {"name": "features", "dim": 5},
        "fusion": {"d_model": 16, "n_layers": 1, "n_heads": 2, "dropout": 0.0, "modality_dropout": 0.0}})).eval()
    B, T = 2, 7
    batch = {"video_feats": torch.randn(B, T, 6), "audio_feats": torch.randn(B, T, 5),
             "face_mask": torch.ones(B, T, dtype=torch.bool), "audio_valid": torch.ones(B, dtype=torch.bool),
             "mask": torch.ones(B, T, dtype=torch.bool)}
    with torch.no_grad():
        for hidden, key in (("audio", "audio_feats"), ("video", "video_feats")):
            a = model.forward_batch(mask_modality(batch, hidden))
            other = dict(batch, **{key: torch.randn_like(batch[key])})
            b = model.forward_batch(mask_modality(other, hidden))
            torch.testing.assert_close(a["valence"], b["valence"])
            full = model.forward_batch(batch)
            assert not torch.allclose(full["valence"], a["valence"])
    assert batch["audio_valid"].all() and batch["face_mask"].all()  # the original is untouched
    with pytest.raises(ValueError, match="mask must be one of"):
        mask_modality(batch, "text")
