"""``avfusion models``: the named model architectures (and, with ``--experiments``, the shipped
experiment configs), one line each."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from ._common import entry_points

NAME = "models"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(NAME, help="list the named models (and experiments)", description=__doc__)
    p.add_argument("--experiments", action="store_true", help="list the shipped experiment configs instead")
    p.set_defaults(func=run)
    return p


def describe(name: str) -> str:
    """One line: mode, encoders and temporal model of a named architecture."""
    from ..factory import get_model_config

    cfg = get_model_config(name)
    video = cfg.video.name if cfg.video is not None and cfg.mode != "audio" else "-"
    audio = cfg.audio.name if cfg.audio is not None and cfg.mode != "video" else "-"
    f = cfg.fusion
    if f is None:
        fusion = "frame by frame"
    else:
        kind = f"{f.n_layers}-layer {'Transformer' if f.temporal == 'transformer' else f.temporal.upper()}"
        if cfg.mode != "av":
            fusion = kind
        elif f.design == "gated":
            fusion = f"gated fusion: {kind} per sense + {f.joint_layers} joint"
        else:
            fusion = f"joint fusion: {kind}"
    return f"{name:<24} mode {cfg.mode:<5}  video {video:<8} audio {audio:<9} {fusion}"


def run(args: argparse.Namespace) -> int:
    from ..config import config_dirs, list_configs
    from ..factory import list_models

    if args.experiments:
        names = list_configs("experiments")
        for n in names:
            print(n)
    else:
        names = list_models()
        for n in names:
            print(describe(n))
    if not names:
        looked = ", ".join(str(d) for d in config_dirs("experiments" if args.experiments else "models"))
        raise FileNotFoundError(f"no configs found (looked in {looked}); the installation is incomplete")
    return 0


# parse_args(argv) -> Namespace and main(argv=None) -> exit code, as every command has them.
parse_args, main = entry_points(add_parser, run, NAME)


if __name__ == "__main__":
    sys.exit(main())
