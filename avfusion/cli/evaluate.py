"""``avfusion evaluate``: score a model on a dataset split; metrics.json, per-clip and per-frame CSVs,
tables and plots.

    # an exported model on the test part of its experiment's split
    avfusion evaluate --model runs/exp/best --config tiny_synthetic data.root=data/synth --part test
    # EmoNet-8 frame by frame with no training, on every AFEW-VA clip (the zero-shot setting)
    avfusion evaluate --model emonet_8 --checkpoint pretrained/emonet_8.pth --data-kind afew_va --root data/AFEW-VA
    # from cached features instead of decoding video
    avfusion evaluate --model runs/exp/best --config tiny_synthetic --features cache/

Positional ``key=value`` arguments override the experiment config (``data.clip_len=64``);
``--set key=value`` overrides the model config (``--set video.flip_average=false``). Runs under
``accelerate launch`` too: each process predicts part of the windows, the rows are gathered.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from ..data.splits import PARTS as SPLIT_PARTS
from ._common import accepts_overrides, entry_points

NAME = "evaluate"
PARTS = (*SPLIT_PARTS, "all")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(NAME, help="evaluate a model on a dataset split",
                              description=__doc__.split("\n\n")[0], epilog=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="a save_pretrained folder, a model name (`avfusion models`, e.g. emonet_8) or a YAML file")
    p.add_argument("--checkpoint", help="video-encoder weight file for a named model (e.g. emonet_8.pth)")
    p.add_argument("--set", dest="model_set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model-config field (repeatable)")
    p.add_argument("--config", help="experiment (name or YAML): its data section and split are used")
    p.add_argument("--data-kind", help="dataset kind (synthetic, afew_va, affwild2, manifest)")
    p.add_argument("--root", help="dataset folder (manifest: the CSV)")
    p.add_argument("--split-file", help="JSON split file")
    p.add_argument("--part", choices=PARTS,
                   help="which part to score; default: 'all' without a config or split file, else "
                        "'test' (or 'val' when the split has no test part)")
    p.add_argument("--strict-split", action="store_true",
                   help="refuse a split whose parts miss data.val_fraction / data.test_fraction by more than 5 "
                        "points (whole groups); without it a warning gives the sizes reached")
    p.add_argument("--features", help="a feature cache (`avfusion cache`) to read instead of video")
    p.add_argument("--clip-len", type=int, help="frames per window (default: the model's serving spec; a named "
                   "architecture: the config's data.clip_len)")
    p.add_argument("--batch-size", type=int, help="windows per batch (default: the config's)")
    p.add_argument("--num-workers", type=int, help="DataLoader workers (default: the config's)")
    p.add_argument("--smooth", type=int, default=5, help="moving-average window in frames (odd; 1 = off)")
    p.add_argument("--threshold", type=float, default=0.5, help="per-clip CCC threshold of the table")
    p.add_argument("--face-only", action="store_true", help="score only frames where a face was found")
    p.add_argument("--out", help="output folder (default: runs/eval/<model>-<part>)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results of another evaluation in --out (without it they are kept and the run refused)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even where a GPU exists")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="the per-frame network's precision, as in `avfusion predict` (auto: bf16 + channels_last "
                        "where the hardware computes bf16 natively, else fp32; fp32: the reference numbers); "
                        "metrics.json records the one used")
    p.add_argument("--runtime", default=None, choices=("auto", "torch", "openvino"),
                   help="the per-frame network's runtime, as in `avfusion predict` (default auto, or $AVFUSION_RUNTIME)")
    p.add_argument("--compile", action="store_true", help="torch.compile the per-frame network")
    p.add_argument("--mask", choices=("audio", "video"),
                   help="score an audio-visual model with this sense hidden (missing-modality robustness)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="experiment-config overrides")
    p.set_defaults(func=run)
    return accepts_overrides(p)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ..config import apply_overrides
    from ..evaluation import evaluate_model, format_report
    from ..factory import load_model
    from ..train.experiment import check_experiment, load_experiment

    if args.smooth < 1 or args.smooth % 2 == 0:
        raise ValueError(f"--smooth must be a positive odd number of frames, got {args.smooth}")
    overrides = list(args.overrides or []) + (["data.strict_split=true"] if args.strict_split else [])
    cfg = load_experiment(args.config, overrides, check_model=False)
    changes: dict[str, Any] = {}
    for key, value in (("kind", args.data_kind), ("root", args.root), ("split_file", args.split_file),
                       ("batch_size", args.batch_size),
                       ("num_workers", args.num_workers), ("features", args.features)):
        if value is not None:
            changes[key] = value
    data = dataclasses.replace(cfg.data, **changes)
    data = dataclasses.replace(data, stride=data.clip_len, eval_stride=None)
    cfg = dataclasses.replace(cfg, data=data)
    check_experiment(cfg, args.config or "command line")
    part = args.part or ("all" if args.config is None and args.split_file is None else None)
    for flag, value in (("--batch-size", args.batch_size), ("--clip-len", args.clip_len)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if args.num_workers is not None and args.num_workers < 0:
        raise ValueError(f"--num-workers must be >= 0, got {args.num_workers}")
    if args.out is not None:
        from ..runlock import check_output_folder

        check_output_folder(args.out, "--out")
    model = load_model(args.model, args.checkpoint, overrides_from="--set", **apply_overrides({}, list(args.model_set)))
    results, records, part, out = evaluate_model(
        model, data, part, args.out, default_name=str(args.model), smooth_window=args.smooth,
        threshold=args.threshold, face_only=args.face_only, plots=not args.no_plots,
        cpu=args.cpu or cfg.train.cpu, extra={"model": str(args.model), "checkpoint": args.checkpoint},
        precision=args.precision, compile=args.compile, mask=args.mask, clip_len=args.clip_len, runtime=args.runtime,
        overwrite=args.overwrite)
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(f"\n{args.model} on {data.kind} ({data.root or data.features}), part '{part}': {len(records)} clips\n")
        print(format_report(results))
        print(f"\nwrote {out / 'metrics.json'}, {out / 'per_clip.csv'}, {out / 'predictions.csv'}"
              + ("" if args.no_plots else f", plots in {out / 'plots'}"))
    return results


# parse_args(argv) -> Namespace and main(argv=None) -> exit code, as every command has them.
parse_args, main = entry_points(add_parser, run, NAME)


if __name__ == "__main__":
    sys.exit(main())
