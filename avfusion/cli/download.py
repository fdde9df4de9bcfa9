"""``avfusion download``: fetch a model file that avfusion may redistribute (checks its sha256)."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from ._common import entry_points

NAME = "download"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(NAME, help="fetch a model file that avfusion may redistribute (checks its sha256)",
                              description=__doc__)
    p.add_argument("what", choices=["yunet"], help="yunet: OpenCV's YuNet face detector (MIT)")
    p.add_argument("--dest", default=None, help="folder or file (default: $AVFUSION_HOME)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..data.faces import download_yunet

    path = download_yunet(dest=args.dest)
    print(f"saved {path}")
    return 0


# parse_args(argv) -> Namespace and main(argv=None) -> exit code, as every command has them.
parse_args, main = entry_points(add_parser, run, NAME)


if __name__ == "__main__":
    sys.exit(main())
