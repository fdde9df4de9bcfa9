"""``avfusion demo``: the whole workflow on a synthetic audio-visual dataset, in one command.

1. write synthetic talking-face clips (H.264 + AAC mp4, labels in three layouts);
2. cache per-frame features with the tiny model's frozen encoders (HOG face, log-mel voice);
3. train the tiny model three times on the same split (audio-visual, video-only, audio-only);
4. evaluate each on held-out actors' clips (test part of an actor-level split), and the
   audio-visual model again with its audio masked and with its video masked;
5. predict one held-out video end to end from the mp4;
6. print a table of the CCCs and where every output is.

Every step is resumable: rerunning skips the data and features already written.
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
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--clips", type=int, default=240, help="synthetic clips (4 per actor)")
    p.add_argument("--frames", type=int, default=96, help="frames per clip (25 fps)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="processes writing the synthetic clips")
    p.add_argument("--no-plots", action="store_true", help="no plots (the evaluations' and the prediction's): tables and metrics only")
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
    out = Path(args.out).resolve()
    t0 = time.time()
    data, feats = out / "data", out / "features"

    _step(1, f"synthetic data: {args.clips} clips x {args.frames} frames -> {data}")
    if (data / "metadata.json").is_file():
        print("   already there: kept")
    else:
        generate_dataset(data, SyntheticConfig(clips=args.clips, frames=args.frames, seed=args.seed,
                                               workers=args.workers))

    common = [f"data.root={data}", f"train.seed={args.seed}"]
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

    _step(5, "predict one held-out video from its mp4 (audio-visual model)")
    video = _held_out_video(out / "runs" / "av" / "split.json", data)
    # The synthetic voice is a buzz whose loudness, pitch and rate follow arousal, not human speech:
    # speech detection would (rightly) mask it, so the demo keeps the whole track.
    table = Predictor(out / "runs" / "av" / "best", face_backend="full", speech="off").predict_video(
        video, out_dir=out / "predict", plot=not args.no_plots)
    print(f"   {len(table)} frames of {video.name} -> {out / 'predict'}")

    summary = _summary(results)
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
