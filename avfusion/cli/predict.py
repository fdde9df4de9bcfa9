"""``avfusion predict``: per-frame valence and arousal of video files: a CSV, a plot and optionally
an overlay video per input.

    avfusion predict talk.mp4 --model runs/exp/best --out predictions/
    avfusion predict clip.mp4 --model emonet_8 --checkpoint pretrained/emonet_8.pth --face-backend yunet
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from ._common import entry_points

NAME = "predict"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(NAME, help="per-frame valence/arousal of video files",
                              description=__doc__.split("\n\n")[0], epilog=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("video", nargs="+", help="video file(s)")
    p.add_argument("--model", required=True, help="a save_pretrained folder or a model name (e.g. emonet_8)")
    p.add_argument("--checkpoint", help="video-encoder weights for a named model (e.g. emonet_8.pth)")
    p.add_argument("--out", default=None, help="output folder (default: runs/predict)")
    p.add_argument("--face-backend", default="yunet", choices=("yunet", "full"),
                   help="yunet: detect the face (needs the YuNet model file); full: the face fills the frame")
    p.add_argument("--yunet-model", help="YuNet ONNX file (default: $AVFUSION_HOME or ./pretrained/)")
    p.add_argument("--clip-len", type=int, help="frames per window (default: as in training)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--smooth", type=int, default=1, help="moving average over this many frames (odd)")
    p.add_argument("--overlay", action="store_true", help="also write the video with the values drawn on it")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..predict import Predictor

    if args.smooth < 1 or args.smooth % 2 == 0:
        raise ValueError(f"--smooth must be a positive odd number of frames, got {args.smooth}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    predictor = Predictor(args.model, checkpoint=args.checkpoint, device=args.device, clip_len=args.clip_len)
    out = Path(args.out or "runs/predict")
    for video in args.video:
        table = predictor.predict_video(
            video, face_backend=args.face_backend, yunet_model=args.yunet_model, batch_size=args.batch_size,
            smooth_window=args.smooth, out_dir=out, plot=not args.no_plot, overlay=args.overlay)
        stem = Path(video).stem
        found = table["face_found"].mean() if len(table) else math.nan
        means = ("no frame with a face: no mean values" if not table["face_found"].any() else
                 f"mean valence {np.nanmean(table['valence']):+.2f}, arousal {np.nanmean(table['arousal']):+.2f}")
        print(f"{video}: {len(table)} frames, face found in {100 * found:.0f} %; {means} -> "
              f"{out / (stem + '_va.csv')}")
    return 0


# parse_args(argv) -> Namespace and main(argv=None) -> exit code, as every command has them.
parse_args, main = entry_points(add_parser, run, NAME)


if __name__ == "__main__":
    sys.exit(main())
