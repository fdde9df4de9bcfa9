#!/usr/bin/env python
"""Run the frozen encoders of an experiment's model over its dataset and cache per-frame features.

    python scripts/cache_features.py --config configs/exp.yaml --out cache/exp
    accelerate launch --multi_gpu --num_processes 4 scripts/cache_features.py --config configs/exp.yaml --out cache/exp
    # several processes on a CPU-only machine (gloo): add --cpu to the script's arguments
    accelerate launch --multi_gpu --num_processes 2 scripts/cache_features.py --config ... --out ... --cpu

Writes one safetensors file per video plus manifest.json (see avfusion/data/features.py). Every
video of the dataset is cached (all split parts: the split picks ids later). Rerunning with the same
arguments skips finished videos, so an interrupted run resumes; a cache made by different encoder
weights is refused. Train on it with ``data.features=cache/exp``.

Positional ``key=value`` arguments override the experiment config (``data.root=...``).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--config", help="experiment YAML (model + data); default: the built-in defaults")
    p.add_argument("--out", required=True, help="cache folder")
    p.add_argument("--model", help="model name, YAML or save_pretrained folder (default: the experiment's)")
    p.add_argument("--window", type=int,
                   help="frames encoded together (bounds memory; audio features see this much context). "
                        "Default: the experiment's data.clip_len, so cached features equal those of "
                        "raw-clip training for windows that start at multiples of it")
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
    return p


def main(argv: Optional[Sequence[str]] = None):
    args = build_parser().parse_args(argv)
    import torch
    from accelerate import Accelerator

    from avfusion import training
    from avfusion.caching import DTYPES, cache_dataset

    cfg = training.load_experiment(args.config, args.overrides)
    d = cfg.data
    window = int(args.window or d.clip_len)
    # Native frame rate, non-overlapping windows of `window` frames, no augmentation: every frame once.
    data = dataclasses.replace(d, clip_len=window, stride=window, eval_stride=None, target_fps=None,
                               features=None, num_workers=d.num_workers if args.num_workers is None
                               else args.num_workers)
    cfg = dataclasses.replace(cfg, data=data, model=args.model or cfg.model)

    accelerator = Accelerator(cpu=args.cpu or cfg.train.cpu)
    torch.manual_seed(cfg.train.seed if args.seed is None else args.seed)
    model = training.build_model(cfg).to(accelerator.device).eval()

    if data.kind == "affwild2" and data.affwild2_split == "official" and data.split_file is None:
        records = training.load_records(data, "train") + training.load_records(data, "val")
    else:
        records = training.load_records(data)
    made, _ = training._clip_datasets(cfg, {"cache": records}, model)
    info = {"kind": data.kind, "root": data.root, "face_mode": data.face_mode,
            "affwild2_frames": data.affwild2_frames}
    prep = {"face_backend": data.face_backend, "face_margin": data.face_margin,
            "face_smoothing": data.face_smoothing, "hsv": data.hsv}
    result = cache_dataset(
        model, made["cache"], args.out, dtype=DTYPES[args.dtype], batch_size=args.batch_size,
        num_workers=data.num_workers, device=accelerator.device,
        process_index=accelerator.process_index, num_processes=accelerator.num_processes,
        barrier=accelerator.wait_for_everyone, dataset_info=info, preprocessing=prep,
        save_encoder_weights=not args.no_save_encoders, progress=accelerator.is_main_process)
    print(f"[process {accelerator.process_index}/{accelerator.num_processes}] {len(result.written)} "
          f"video(s) written, {len(result.skipped)} already cached, {result.frames} frames in "
          f"{result.seconds:.1f} s ({result.frames_per_second:.1f} frames/s) -> {args.out}")
    return result


if __name__ == "__main__":
    main()
