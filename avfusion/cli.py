"""The ``avfusion`` command: thin wrappers over the library and the scripts."""
from __future__ import annotations

import argparse
import sys


def _cmd_models(args: argparse.Namespace) -> int:
    from .factory import list_models

    print("\n".join(list_models()))
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from .data.faces import download_yunet

    path = download_yunet(dest=args.dest)
    print(f"saved {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="avfusion",
        description="Per-frame valence and arousal from face video and voice.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    s = sub.add_parser("models", help="list the named model configs")
    s.set_defaults(func=_cmd_models)
    s = sub.add_parser("download", help="fetch a model file that avfusion may redistribute (checks its sha256)")
    s.add_argument("what", choices=["yunet"], help="yunet: OpenCV's YuNet face detector (MIT)")
    s.add_argument("--dest", default=None, help="folder or file (default: $AVFUSION_HOME)")
    s.set_defaults(func=_cmd_download)
    from .predict import add_predict_parser

    add_predict_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
