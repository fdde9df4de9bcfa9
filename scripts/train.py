"""Train (and evaluate) an avfusion experiment with Accelerate.

    python scripts/train.py --config configs/tiny_synthetic.yaml data.root=data/synth
    accelerate launch --num_processes 2 scripts/train.py --config configs/tiny_synthetic.yaml ...  # 2 GPUs
    accelerate launch --multi_gpu --num_processes 2 scripts/train.py ... train.cpu=true   # 2 CPU processes
    python scripts/train.py --config configs/afew_emonet_video.yaml --folds 5       # cross-validation
    python scripts/train.py --config configs/tiny_synthetic.yaml --resume latest    # continue a run

Several CPU processes: ``--multi_gpu`` only selects torchrun's launcher, ``train.cpu=true`` keeps
every process on the CPU (gloo). ``accelerate launch --cpu --num_processes 2`` starts a single
process (Accelerate launches several CPU processes only through MPI); the first line printed says
how many processes run.

``key=value`` overrides any config field (``train.lr=1e-3``, ``data.batch_size=4``, ``output_dir=...``).
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Optional, Sequence

from avfusion.engine import cross_validate, fit, format_cv_table, init_logging, make_accelerator
from avfusion.training import load_experiment


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="experiment YAML (configs/<experiment>.yaml)")
    p.add_argument("--resume", default=None, metavar="PATH|latest",
                   help="continue from a checkpoint folder, or the newest one of output_dir")
    p.add_argument("--folds", type=int, default=0, metavar="K",
                   help="K-fold cross-validation: train and test every fold, report mean ± std")
    p.add_argument("--no-tensorboard", action="store_true", help="only the CSV log")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    # Overrides may come before or after the options.
    return p.parse_intermixed_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    cfg = load_experiment(args.config, args.overrides)
    accelerator = make_accelerator(cfg, log=not args.no_tensorboard)
    init_logging(accelerator, cfg)
    # `accelerate launch --cpu --num_processes N` starts ONE process (Accelerate needs MPI for
    # several CPU processes): say how many really run, so a silent single-process run is visible.
    accelerator.print(f"{cfg.name}: {accelerator.num_processes} process(es) on {accelerator.device}, "
                      f"mixed precision {accelerator.mixed_precision}, output {cfg.output_dir}")
    try:
        if args.folds:
            result = cross_validate(accelerator, cfg, args.folds, resume=args.resume)
            accelerator.print(format_cv_table(result))
        else:
            result = fit(accelerator, cfg, resume=args.resume)
            summary = {k: result.get(k) for k in ("best_epoch", "best", "test", "best_model", "checkpoint")}
            accelerator.print(json.dumps(summary, indent=1, default=str))
    finally:
        accelerator.end_training()
    return result


if __name__ == "__main__":
    main()
