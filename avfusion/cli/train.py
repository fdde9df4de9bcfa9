"""``avfusion train``: train (and evaluate) an experiment with Accelerate.

    avfusion train --config tiny_synthetic data.root=data/synth
    accelerate launch -m avfusion.cli.train --config avfusion/configs/tiny_synthetic.yaml ...      # = scripts/train.py
    accelerate launch --multi_gpu --num_processes 2 -m avfusion.cli.train ... train.cpu=true  # 2 CPU processes
    avfusion train --config afew_emonet_video --folds 5                           # cross-validation
    avfusion train --config tiny_synthetic --resume latest                        # continue a run
    avfusion train --config tiny_synthetic --overwrite                            # replace the run of output_dir

Several CPU processes: ``--multi_gpu`` only selects torchrun's launcher, ``train.cpu=true`` keeps
every process on the CPU (gloo). ``accelerate launch --cpu --num_processes 2`` starts a single
process (Accelerate launches several CPU processes only through MPI); the first line printed says
how many processes run. ``key=value`` overrides any config field (``train.lr=1e-3``).
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from ._common import accepts_overrides, entry_points

NAME = "train"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(NAME, help="train a model on an experiment config (Accelerate)",
                              description=__doc__.split("\n\n")[0], epilog=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True,
                   help="experiment: a shipped name (`avfusion models --experiments`) or a YAML file")
    p.add_argument("--resume", default=None, metavar="PATH|latest",
                   help="continue from a checkpoint folder, or the newest one of output_dir")
    p.add_argument("--resume-unverified", action="store_true",
                   help="resume even when checkpoint files are missing or changed (warns; not exact)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run that output_dir holds (its checkpoints, best/, results); without it a "
                        "folder holding another run is refused")
    p.add_argument("--folds", type=int, default=0, metavar="K",
                   help="K-fold cross-validation: train and test every fold, report mean ± std")
    p.add_argument("--strict-split", action="store_true",
                   help="refuse a split whose parts miss data.val_fraction / data.test_fraction by more than 5 "
                        "points (whole groups); without it a warning gives the sizes reached")
    p.add_argument("--no-tensorboard", action="store_true", help="only the CSV log")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=run)
    return accepts_overrides(p)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ..train.experiment import load_experiment
    from ..train.loop import train

    overrides = list(args.overrides or []) + (["data.strict_split=true"] if args.strict_split else [])
    cfg = load_experiment(args.config, overrides)
    return train(cfg, resume=args.resume, folds=args.folds, log=not args.no_tensorboard,
                 verify_resume=not args.resume_unverified, overwrite=args.overwrite)


# parse_args(argv) -> Namespace and main(argv=None) -> exit code, as every command has them.
parse_args, main = entry_points(add_parser, run, NAME)


if __name__ == "__main__":
    sys.exit(main())
