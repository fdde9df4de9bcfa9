"""``avfusion synth``: write a synthetic audio-visual valence/arousal dataset (talking faces with
known labels) in the AFEW-VA, Aff-Wild2 and manifest layouts.

    avfusion synth --out data/synth --clips 8
    avfusion synth --out data/demo --clips 300 --fps mixed --workers 2
    avfusion synth --out data/hard --clips 240 --frames 96 --hard
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ._common import entry_points

NAME = "synth"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from ..synthetic import SyntheticConfig

    d = SyntheticConfig()
    p = subparsers.add_parser(NAME, help="write a synthetic talking-face dataset with known labels",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--clips", type=int, default=d.clips, help="labelled clips (video ids)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--frames", type=int, default=d.frames, help="frames per clip")
    p.add_argument("--fps", default=d.fps, help="25, 30, 29.97 (=30000/1001), num/den, or mixed")
    p.add_argument("--size", type=int, default=d.size, help="frame height and width (even)")
    p.add_argument("--clips-per-actor", type=int, default=d.clips_per_actor)
    p.add_argument("--audio-rate", type=int, default=d.audio_rate, help="AAC sample rate")
    p.add_argument("--afew-layout", choices=("flat", "official"), default=d.afew_layout)
    p.add_argument("--no-pair", action="store_true", help="no _left/_right two-face video")
    p.add_argument("--no-gaps", action="store_true", help="no -5 label gaps / missing crops")
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--hard", action="store_true",
                   help="hard conditions: the lower face covered for stretches, speech pauses over a louder room, "
                        "clips without an audio track; the eyes say more of arousal (labels as without it)")
    p.set_defaults(func=run)
    return p


def config_from_args(a: argparse.Namespace) -> Any:
    from ..synthetic import SyntheticConfig

    return SyntheticConfig(
        clips=a.clips, frames=a.frames, fps=a.fps, size=a.size, seed=a.seed,
        clips_per_actor=a.clips_per_actor, audio_rate=a.audio_rate, afew_layout=a.afew_layout,
        pair=not a.no_pair, gaps=not a.no_gaps, workers=a.workers, hard=a.hard)


def run(args: argparse.Namespace) -> dict:
    from ..synthetic import generate_dataset

    start = time.perf_counter()
    meta = generate_dataset(args.out, config_from_args(args))
    took = time.perf_counter() - start
    n = len(meta["clips"])
    print(f"wrote {n} clips ({len(meta['actors'])} actors) to {args.out} in {took:.1f} s ({took / max(n, 1):.2f} s/clip)")
    return meta


# parse_args(argv) -> Namespace and main(argv=None) -> exit code, as every command has them.
parse_args, main = entry_points(add_parser, run, NAME)


if __name__ == "__main__":
    sys.exit(main())
