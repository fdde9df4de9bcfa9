"""``avfusion cache``: run the frozen encoders of an experiment's model over its dataset once and
keep the per-frame features.

    avfusion cache --config tiny_synthetic --out cache/synth data.root=data/synth
    accelerate launch --multi_gpu --num_processes 4 -m avfusion.cli.cache --config exp.yaml --out cache/exp
    accelerate launch --multi_gpu --num_processes 2 -m avfusion.cli.cache --config ... --out ... --cpu

Writes one safetensors file per video plus manifest.json. Every video of the dataset is cached
(all split parts: the split picks ids later). Rerunning skips finished videos, so an interrupted
run resumes; a cache made by different encoder weights is refused. Train on it with
``data.features=cache/exp``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from ._common import accepts_overrides, entry_points

NAME = "cache"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(NAME, help="cache per-frame encoder features of a dataset",
                              description=__doc__.split("\n\n")[0], epilog=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="experiment (name or YAML: model + data); default: the built-in defaults")
    p.add_argument("--out", required=True, help="cache folder")
    p.add_argument("--model", help="model name, YAML or save_pretrained folder (default: the experiment's)")
    p.add_argument("--window", type=int,
                   help="frames encoded together (bounds memory; audio features see this much context). "
                        "Default: the experiment's data.clip_len")
    p.add_argument("--dtype", default="float16", choices=("float16", "float32", "bfloat16"),
                   help="storage dtype of the features (computed in float32)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per encoder batch")
    p.add_argument("--num-workers", type=int, help="DataLoader workers (default: the config's)")
    p.add_argument("--seed", type=int,
                   help="torch seed before the model is built (randomly initialised encoders, e.g. "
                        "the tiny test model); default: the experiment's train.seed")
    p.add_argument("--no-save-encoders", action="store_true",
                   help="do not copy the encoder weights into the cache (encoders.safetensors)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even where a GPU exists")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="experiment-config overrides")
    p.set_defaults(func=run)
    return accepts_overrides(p)


def run(args: argparse.Namespace) -> Any:
    import contextlib
    import dataclasses
    import os

    import torch

    from ..caching import cache_features
    from ..train.experiment import build_model, load_experiment

    from ..runlock import check_output_folder, run_lock

    if args.window is not None and args.window < 1:
        raise ValueError(f"--window must be >= 1 frame, got {args.window} (leave it out for the experiment's "
                         "data.clip_len)")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.num_workers is not None and args.num_workers < 0:
        raise ValueError(f"--num-workers must be >= 0, got {args.num_workers}")
    cfg = load_experiment(args.config, args.overrides, check_model=args.model is None)
    check_output_folder(args.out, "--out")
    if args.model:
        cfg = dataclasses.replace(cfg, model=args.model)
    torch.manual_seed(cfg.train.seed if args.seed is None else args.seed)
    model = build_model(cfg)
    # The cache's manifest refuses other encoders or settings; the lock keeps two runs apart (the
    # main process holds it: RANK is set by accelerate launch / torchrun).
    main_process = os.environ.get("RANK", "0") == "0"
    with run_lock(args.out, "cache") if main_process else contextlib.nullcontext():
        return cache_features(model, cfg.data, args.out, window=args.window, dtype=args.dtype,
                              batch_size=args.batch_size, num_workers=args.num_workers,
                              save_encoder_weights=not args.no_save_encoders, cpu=args.cpu or cfg.train.cpu)


# parse_args(argv) -> Namespace and main(argv=None) -> exit code, as every command has them.
parse_args, main = entry_points(add_parser, run, NAME)


if __name__ == "__main__":
    sys.exit(main())
