"""Write a synthetic audio-visual valence/arousal dataset in the AFEW-VA, Aff-Wild2 and manifest layouts.

    python scripts/make_synthetic.py --out data/synth --clips 8
    python scripts/make_synthetic.py --out data/demo --clips 300 --fps mixed --workers 2
"""
from __future__ import annotations

import argparse
import time
from typing import Optional, Sequence

from avfusion.data.synthetic import SyntheticConfig, generate_dataset


def main(argv: Optional[Sequence[str]] = None) -> int:
    d = SyntheticConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    a = p.parse_args(argv)
    cfg = SyntheticConfig(
        clips=a.clips, frames=a.frames, fps=a.fps, size=a.size, seed=a.seed,
        clips_per_actor=a.clips_per_actor, audio_rate=a.audio_rate, afew_layout=a.afew_layout,
        pair=not a.no_pair, gaps=not a.no_gaps, workers=a.workers,
    )
    start = time.perf_counter()
    meta = generate_dataset(a.out, cfg)
    took = time.perf_counter() - start
    n = len(meta["clips"])
    print(f"wrote {n} clips ({len(meta['actors'])} actors) to {a.out} in {took:.1f} s ({took / n:.2f} s/clip)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
