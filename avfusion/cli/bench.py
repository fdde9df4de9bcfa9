"""``avfusion bench``: the speed of every stage in one run, measured through the code `avfusion
predict` runs; ``avfusion bench readme`` puts the run's tables in the README (see :mod:`avfusion.bench`)."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from ._common import entry_points

NAME = "bench"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from .. import bench

    p = subparsers.add_parser(NAME, help="measure the speed of every stage (--quick: a few minutes)",
                              description=bench.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_arguments(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> dict:
    from .. import bench

    return bench.run(args)


# parse_args(argv) -> Namespace and main(argv=None) -> exit code, as every command has them.
parse_args, main = entry_points(add_parser, run, NAME)


if __name__ == "__main__":
    sys.exit(main())
