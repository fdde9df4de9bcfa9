"""The ``avfusion`` command: registers one module per subcommand (each has ``add_parser``, ``run``
and ``main``; ``python -m avfusion.cli.<name>`` runs one alone)."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ..version import __version__
from . import bench, cache, demo, download, evaluate, fit_mix, models, predict, synth, train
from ._common import parse, quiet_third_party, run_safely

COMMANDS = (demo, predict, train, evaluate, cache, synth, models, download, fit_mix, bench)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="avfusion",
                                description="Per-frame valence and arousal from face video and voice.")
    p.add_argument("--version", action="version", version=f"avfusion {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    quiet_third_party()
    parser = build_parser()
    args = parse(parser, list(sys.argv[1:] if argv is None else argv))
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return run_safely(args.func, args, args.command)


if __name__ == "__main__":
    sys.exit(main())
