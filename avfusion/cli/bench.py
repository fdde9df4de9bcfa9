"""``avfusion bench``: throughput benchmarks, one section per component (see :mod:`avfusion.bench`)."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Optional, Sequence

from ._common import command_main, parse_command

NAME = "bench"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from .. import bench

    p = subparsers.add_parser(NAME, help="measure throughput (EmoNet variants, data loading)",
                              description=bench.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_arguments(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> dict:
    from .. import bench

    return bench.run(args)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    return parse_command(add_parser, NAME, argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return command_main(add_parser, run, NAME, argv)


if __name__ == "__main__":
    sys.exit(main())
