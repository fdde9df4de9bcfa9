"""``avfusion demo``: the whole workflow on a synthetic audio-visual dataset, in one command.

1. write synthetic talking-face clips (H.264 + AAC mp4, labels in three layouts);
2. cache per-frame features with the tiny model's frozen encoders (HOG face, log-mel voice);
3. train the tiny model three times on the same split (audio-visual, video-only, audio-only);
4. evaluate each on held-out actors' clips (test part of an actor-level split), and the
   audio-visual model again with its audio masked and with its video masked, for the whole clip
   and over the middle third of each clip only (the face blanked, the audio silenced for a
   stretch: scored over that stretch beside the model of the sense that remains);
5. predict one held-out video end to end from the mp4;
6. print a table of the CCCs and where every output is.

Every step is resumable: rerunning skips the data and features already written. ``--hard`` writes
the data under the hard conditions of real footage (``avfusion synth --hard``: the lower face
covered for stretches, speech pauses over a louder room, clips without an audio track) into
``runs/demo_hard`` by default.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..files import write_text_atomic
from ._common import entry_points

NAME = "demo"
MODES = (("av", "audio-visual"), ("video", "video only"), ("audio", "audio only"))
EXPERIMENT = "tiny_synthetic"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(NAME, help="generate synthetic data, cache features, train and evaluate the tiny "
                                         "model (audio-visual vs video-only vs audio-only), predict one video",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="output folder (default: runs/demo, with --hard runs/demo_hard)")
    p.add_argument("--clips", type=int, default=240, help="synthetic clips (4 per actor)")
    p.add_argument("--frames", type=int, default=96, help="frames per clip (25 fps)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="processes writing the synthetic clips")
    p.add_argument("--no-plots", action="store_true", help="no plots (the evaluations' and the prediction's): tables and metrics only")
    p.add_argument("--hard", action="store_true",
                   help="hard conditions: the lower face covered for stretches, speech pauses over a louder room, "
                        "clips without an audio track (avfusion synth --hard)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="an override of the tiny_synthetic experiment for every training (repeatable), "
                        "e.g. model_overrides.fusion.reliability=true")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> dict[str, dict]:
    import torch

    from ..caching import cache_features
    from ..evaluation import evaluate_model
    from ..factory import load_model
    from ..predict import Predictor
    from ..synthetic import SyntheticConfig, generate_dataset
    from ..train.experiment import build_model, load_experiment
    from ..train.loop import train

    if args.clips < 8 or args.frames < 8 or args.epochs < 1:
        raise ValueError("the demo needs --clips >= 8, --frames >= 8 and --epochs >= 1")
    out = Path(args.out or ("runs/demo_hard" if args.hard else "runs/demo")).resolve()
    t0 = time.time()
    data, feats = out / "data", out / "features"

    _step(1, f"synthetic data{' (hard conditions)' if args.hard else ''}: {args.clips} clips x {args.frames} frames -> {data}")
    if (data / "metadata.json").is_file():
        print("   already there: kept")
    else:
        generate_dataset(data, SyntheticConfig(clips=args.clips, frames=args.frames, seed=args.seed,
                                               workers=args.workers, hard=args.hard))

    common = [f"data.root={data}", f"train.seed={args.seed}", *args.overrides]
    _step(2, f"feature cache (frozen encoders of the tiny model) -> {feats}")
    cfg = load_experiment(EXPERIMENT, common)
    torch.manual_seed(cfg.train.seed)
    cache_features(build_model(cfg), cfg.data, feats)

    results: dict[str, dict] = {}
    for mode, label in MODES:
        run_dir = out / "runs" / mode
        _step(3, f"train the tiny model, {label} -> {run_dir}")
        train(load_experiment(EXPERIMENT, [*common, f"data.features={feats}", f"output_dir={run_dir}",
                                           f"train.epochs={args.epochs}", f"model_overrides.mode={mode}"]),
              log=False, overwrite=True)  # the demo's own folder: a second demo trains again
        _step(4, f"evaluate {label} on the held-out test clips -> {run_dir / 'eval'}")
        test_data = dataclasses.replace(cfg.data, features=str(feats))
        results[mode], _, _, _ = evaluate_model(load_model(run_dir / "best"), test_data, "test", run_dir / "eval",
                                                extra={"model": str(run_dir / "best")}, plots=not args.no_plots)
        if mode == "av":  # the same model with one sense missing, on the same clips
            for hidden in ("audio", "video"):
                results[f"av_no_{hidden}"], _, _, _ = evaluate_model(
                    load_model(run_dir / "best"), test_data, "test", run_dir / f"eval_no_{hidden}",
                    extra={"model": str(run_dir / "best")}, mask=hidden, plots=False)  # a comparison: metrics only

    stretch = _mid_stretch(out, feats, cfg, [*common, f"data.features={feats}"])
    _step(5, "predict one held-out video from its mp4 (audio-visual model)")
    video = _held_out_video(out / "runs" / "av" / "split.json", data)
    # Speech detection as in training: the model's own rule on Silero VAD's probabilities.
    table = Predictor(out / "runs" / "av" / "best", face_backend="full").predict_video(
        video, out_dir=out / "predict", plot=not args.no_plots)
    print(f"   {len(table)} frames of {video.name} -> {out / 'predict'}")

    summary = _summary(results)
    summary.update(stretch)
    write_text_atomic(out / "demo_results.json", json.dumps(summary, indent=2))
    print("\n" + format_table(summary))
    print(f"\noutputs in {out}:")
    for what, where in (("synthetic data", data), ("feature cache", feats),
                        ("trained models", out / "runs" / "<mode>" / "best"),
                        ("evaluations (metrics.json, per-clip CSV, plots)", out / "runs" / "<mode>" / "eval"),
                        ("prediction (CSV + plot)", out / "predict"), ("this table", out / "demo_results.json")):
        print(f"  {what:<50} {where}")
    print(f"done in {time.time() - t0:.0f} s")
    return summary


def _mid_stretch(out: Path, feats: Path, cfg: Any, overrides: list[str]) -> dict[str, dict]:
    """The audio-visual model with one sense removed over the middle third of every held-out
    clip, scored over that stretch, beside the model of the sense that remains on the same frames."""
    import numpy as np
    from torch.utils.data import DataLoader

    from ..data.build import build_datasets
    from ..evaluation.collect import predict_loader
    from ..factory import load_model
    from ..metrics import ccc
    from ..train.experiment import load_experiment

    runs = out / "runs"
    models = {m: load_model(runs / m / "best") for m, _ in MODES}
    exp = load_experiment(EXPERIMENT, [*overrides, f"data.split_file={runs / 'av' / 'split.json'}"])
    rows: dict[str, dict] = {}
    for hidden, remains in (("video", "audio"), ("audio", "video")):
        test = build_datasets(exp.data, models["av"]).test
        n = {r.video_id: r.n_frames for r in test.records}
        span = {v: (k // 3, 2 * k // 3) for v, k in n.items()}
        loader = DataLoader(test, batch_size=16, collate_fn=collate_features_or_clips(test))
        fused = predict_loader(models["av"], loader, n, mask=hidden, stretch=span)
        single = predict_loader(models[remains], DataLoader(
            build_datasets(exp.data, models[remains]).test, batch_size=16, collate_fn=collate_features_or_clips(test)), n)
        fused_name = "av_face_blanked_mid" if hidden == "video" else "av_audio_silenced_mid"
        for name, preds in ((fused_name, fused), (f"{remains}_only_mid", single)):
            p, t = [], []
            for v, (a, b) in span.items():
                sel = np.zeros(n[v], dtype=bool)
                sel[a:b] = True
                sel &= preds[v].scored
                p.append(preds[v].pred[sel])
                t.append(preds[v].target[sel])
            p, t = np.concatenate(p), np.concatenate(t)
            cv, ca = ccc(p[:, 0], t[:, 0]), ccc(p[:, 1], t[:, 1])
            label = (f"audio-visual, {'face blanked' if hidden == 'video' else 'audio silenced'} mid-clip (over the stretch)"
                     if name.startswith("av_") else f"{remains} only, same stretch")
            rows[name] = {"label": label, "ccc_valence": cv, "ccc_arousal": ca, "ccc_mean": (cv + ca) / 2,
                          "n_frames": int(len(t)), "n_clips": len(span)}
    return rows


def collate_features_or_clips(dataset: Any) -> Any:
    from ..data.clips import collate
    from ..data.features import FeatureDataset, collate_features

    return collate_features if isinstance(dataset, FeatureDataset) else collate


def _step(n: int, text: str) -> None:
    print(f"\n[{n}/5] {text}", flush=True)


def _held_out_video(split_file: Path, data: Path) -> Path:
    split = json.loads(split_file.read_text())
    ids = split.get("test") or split.get("val")
    meta = json.loads((data / "metadata.json").read_text())
    for clip in meta["clips"]:
        if clip["id"] in ids and clip.get("video"):
            return data / clip["video"]
    raise RuntimeError(f"no held-out video found through {split_file}")


# Rows of the table: the three trained models, then the audio-visual one with a sense hidden.
ROWS = MODES + (("av_no_audio", "audio-visual, audio masked"), ("av_no_video", "audio-visual, video masked"))


def _summary(results: dict[str, dict]) -> dict[str, dict]:
    rows = {}
    for mode, label in ROWS:
        m = results[mode]["frames"]
        rows[mode] = {"label": label, "ccc_valence": m["ccc_valence"], "ccc_arousal": m["ccc_arousal"],
                      "ccc_mean": m["ccc_mean"], "n_frames": results[mode]["n_frames_scored"],
                      "n_clips": results[mode]["n_videos"]}
    return rows


def format_table(summary: dict[str, dict]) -> str:
    """Markdown table of the demo's held-out CCCs, one row per mode."""
    lines = ["| model (held-out test clips) | CCC valence | CCC arousal | mean CCC |", "|---|---|---|---|"]
    for row in summary.values():
        lines.append(f"| {row['label']} | {row['ccc_valence']:.3f} | {row['ccc_arousal']:.3f} | {row['ccc_mean']:.3f} |")
    return "\n".join(lines)


# parse_args(argv) -> Namespace and main(argv=None) -> exit code, as every command has them.
parse_args, main = entry_points(add_parser, run, NAME)


if __name__ == "__main__":
    sys.exit(main())
