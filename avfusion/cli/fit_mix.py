"""``avfusion fit-mix``: fit the per-dimension weights of a model of experts (``av_experts``: the face
and the voice expert, no temporal part) on any labelled split the loaders read, and save a new model
folder with them.

    avfusion fit-mix --model av_experts --config affwild2_av_experts --part val --out runs/av_experts_affwild2
    avfusion fit-mix --model av_experts --data-kind manifest --root my_clips.csv --part all --out runs/mine

Each expert runs once over every clip of the part (face frame by frame, voice over sliding windows
where Silero VAD hears speech, as ``avfusion predict`` runs them); the weights of [face, voice] are
then chosen per dimension on a grid of the simplex to maximise CCC over the labelled frames, with
the weights renormalised per frame over the experts present there (as the model mixes them).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from ._common import accepts_overrides, entry_points

NAME = "fit-mix"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(NAME, help="fit a model of experts' per-dimension face/voice weights on a labelled split",
                              description=__doc__.split("\n\n")[0], epilog=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="av_experts", help="a model of experts: a name (av_experts) or an exported folder")
    p.add_argument("--config", help="experiment (name or YAML): its data section and split are used")
    p.add_argument("--data-kind", help="dataset kind (synthetic, afew_va, affwild2, manifest)")
    p.add_argument("--root", help="dataset folder (manifest: the CSV)")
    p.add_argument("--split-file", help="JSON split file")
    p.add_argument("--part", default="val", choices=("train", "val", "test", "all"),
                   help="the labelled part the weights are fitted on (default val; never the part you report)")
    p.add_argument("--out", required=True, help="the new model folder (save_pretrained layout)")
    p.add_argument("--speech", default="auto", choices=("auto", "off"),
                   help="auto: the voice counts where Silero VAD hears speech (as predict); off: the whole track")
    p.add_argument("--step", type=float, default=0.05, help="grid step of the weights")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument("--cpu", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="experiment-config overrides")
    p.set_defaults(func=run)
    return accepts_overrides(p)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ..data.build import select_records
    from ..evaluation.run import fit_experts_mix, predict_records
    from ..factory import load_model, save_pretrained
    from ..train.experiment import load_experiment

    if not 0 < args.step <= 0.5:
        raise ValueError(f"--step must be in (0, 0.5], got {args.step}")
    model = load_model(args.model)
    if getattr(model, "fusion", None) is not None or not (model.use_video and model.use_audio):
        raise ValueError(f"{args.model}: fit-mix needs a model of a face and a voice expert without a temporal part "
                         "(av_experts)")
    cfg = load_experiment(args.config, args.overrides, check_model=False)
    changes = {k: v for k, v in (("kind", args.data_kind), ("root", args.root), ("split_file", args.split_file))
               if v is not None}
    data = dataclasses.replace(cfg.data, **changes)
    records, part = select_records(data, args.part)
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=args.cpu)
    videos, _ = predict_records(model, data, records, accelerator, args.precision, speech=args.speech)
    fit = fit_experts_mix(videos, model.experts_mix, args.step)
    model.cfg.mix = {"valence": [float(w) for w in fit["mix"][0]], "arousal": [float(w) for w in fit["mix"][1]]}
    out = save_pretrained(model, args.out, extra={"fit_mix": {
        "data": {"kind": data.kind, "root": data.root, "part": part, "videos": len(records)},
        "frames": fit["frames"], "ccc_before": fit["before"], "ccc_after": fit["after"]}})
    print(f"{args.model} on {data.kind} ({data.root}), part '{part}': {len(records)} clips, {fit['frames']} labelled frames")
    for d, dim in enumerate(("valence", "arousal")):
        w = fit["mix"][d]
        print(f"  {dim}: face {w[0]:.2f}, voice {w[1]:.2f}   CCC {fit['before'][dim]:.3f} -> {fit['after'][dim]:.3f}")
    print(f"saved {out}")
    return fit


# parse_args(argv) -> Namespace and main(argv=None) -> exit code, as every command has them.
parse_args, main = entry_points(add_parser, run, NAME)


if __name__ == "__main__":
    sys.exit(main())
