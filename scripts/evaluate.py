#!/usr/bin/env python
"""Evaluate a model on a dataset split: metrics.json, per-clip CSV, per-frame CSV, tables, plots.

    # an exported model (save_pretrained folder) on the test part of an experiment's split
    python scripts/evaluate.py --model runs/exp/best --config configs/exp.yaml --part test

    # EmoNet-8 frame by frame with no training, on every AFEW-VA clip (the zero-shot setting)
    python scripts/evaluate.py --model emonet_8 --checkpoint pretrained/emonet_8.pth \
        --data-kind afew_va --root data/AFEW-VA --out runs/emonet8_afew

    # from cached features (scripts/cache_features.py) instead of decoding video
    python scripts/evaluate.py --model runs/exp/best --config configs/exp.yaml --features cache/

Positional ``key=value`` arguments override the experiment config (``data.clip_len=64``);
``--set key=value`` overrides the model config (``--set video.flip_average=false``).
Runs under ``accelerate launch`` too: each process predicts part of the windows and the rows are
gathered (``gather_for_metrics``) before scoring.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from avfusion.config import apply_overrides  # noqa: E402

PARTS = ("train", "val", "test", "all")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", required=True,
                   help="a save_pretrained folder, a model name (configs/models/, e.g. emonet_8) or a YAML file")
    p.add_argument("--checkpoint", help="video-encoder weight file for a named model (e.g. emonet_8.pth)")
    p.add_argument("--set", dest="model_set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model-config field (repeatable)")
    p.add_argument("--config", help="experiment YAML: its data section and split are used")
    p.add_argument("--data-kind", help="dataset kind (synthetic, afew_va, affwild2, manifest)")
    p.add_argument("--root", help="dataset folder (manifest: the CSV)")
    p.add_argument("--split-file", help="JSON split file (avfusion.data.splits format)")
    p.add_argument("--part", choices=PARTS,
                   help="which part to score; default: 'all' without a config or split file, else "
                        "'test' (or 'val' when the split has no test part)")
    p.add_argument("--features", help="a feature cache (scripts/cache_features.py) to read instead of video")
    p.add_argument("--clip-len", type=int, help="frames per window (default: the config's data.clip_len)")
    p.add_argument("--batch-size", type=int, help="windows per batch (default: the config's)")
    p.add_argument("--num-workers", type=int, help="DataLoader workers (default: the config's)")
    p.add_argument("--smooth", type=int, default=5, help="moving-average window in frames (odd; 1 = off)")
    p.add_argument("--threshold", type=float, default=0.5, help="per-clip CCC threshold of the table")
    p.add_argument("--face-only", action="store_true", help="score only frames where a face was found")
    p.add_argument("--out", help="output folder (default: runs/eval/<model>-<part>)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even where a GPU exists")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="experiment-config overrides")
    return p


def select_records(cfg: Any, part: Optional[str]) -> tuple[list, str]:
    """The records of one part of the experiment's split (``all``: every record; None: ``test``,
    or ``val`` when the split has no test part)."""
    from avfusion import training

    d = cfg.data
    if d.kind == "affwild2" and d.affwild2_split == "official" and d.split_file is None:
        records, val_records = training.load_records(d, "train"), training.load_records(d, "val")
    else:
        records, val_records = training.load_records(d), []
    everything = list(records) + list(val_records)
    if part == "all":
        return everything, part
    split = training.make_split(d, records, val_records)
    if part is None:
        part = "test" if split.ids("test") else "val"
    ids = split.ids(part)
    if not ids:
        raise SystemExit(f"the split has no '{part}' clips; choose --part among "
                         f"{[q for q in PARTS[:3] if split.ids(q)] + ['all']}")
    by_id = {r.video_id: r for r in everything}
    return [by_id[i] for i in ids], part


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    import torch
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from avfusion import training
    from avfusion.evaluation import evaluate, format_report, load_model

    cfg = training.load_experiment(args.config, args.overrides)
    data = cfg.data
    changes: dict[str, Any] = {"eval_stride": None}  # the protocol: every frame scored exactly once
    for key, value in (("kind", args.data_kind), ("root", args.root), ("split_file", args.split_file),
                       ("clip_len", args.clip_len), ("batch_size", args.batch_size),
                       ("num_workers", args.num_workers), ("features", args.features)):
        if value is not None:
            changes[key] = value
    changes["stride"] = min(data.stride, changes.get("clip_len", data.clip_len))
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(data, **changes))
    training.check_experiment(cfg, args.config or "command line")
    part = args.part or ("all" if args.config is None and args.split_file is None else None)

    accelerator = Accelerator(cpu=args.cpu or cfg.train.cpu)
    if args.checkpoint and Path(args.model).is_dir():
        raise SystemExit(f"--checkpoint is for named models; {args.model} is an exported folder with its weights")
    model = load_model(args.model, args.checkpoint, **apply_overrides({}, list(args.model_set)))
    records, part = select_records(cfg, part)

    d = cfg.data
    if d.features:
        from avfusion.caching import check_model_matches_cache
        from avfusion.data.features import FeatureDataset, collate_features

        check_model_matches_cache(model, d.features)
        dataset = FeatureDataset(d.features, d.clip_len, video_ids=[r.video_id for r in records])
        collate = collate_features
    else:
        made, collate = training._clip_datasets(cfg, {"eval": records}, model)
        dataset = made["eval"]
    loader = DataLoader(dataset, batch_size=d.eval_batch_size or d.batch_size, shuffle=False,
                        collate_fn=collate, num_workers=d.num_workers)
    model.to(accelerator.device)
    if accelerator.num_processes > 1:
        loader = accelerator.prepare(loader)

    name = Path(args.model).name if Path(args.model).is_dir() else Path(args.model).stem
    out = Path(args.out or Path("runs") / "eval" / f"{name}-{part}")
    extra = {"model": args.model, "checkpoint": args.checkpoint, "data": dataclasses.asdict(cfg.data),
             "part": part, "videos": [r.video_id for r in records]}
    with torch.no_grad():
        results, _, _ = evaluate(
            model, loader, n_frames={r.video_id: r.n_frames for r in records}, out_dir=out,
            smooth_window=args.smooth, threshold=args.threshold, face_only=args.face_only,
            accelerator=accelerator, plots=not args.no_plots, progress=accelerator.is_main_process,
            extra=extra)
    if accelerator.is_main_process:
        print(f"\n{name} on {d.kind} ({d.root}), part '{part}': {len(records)} clips\n")
        print(format_report(results))
        print(f"\nwrote {out / 'metrics.json'}, {out / 'per_clip.csv'}, {out / 'predictions.csv'}"
              + ("" if args.no_plots else f", plots in {out / 'plots'}"))
    return results


if __name__ == "__main__":
    main()
