"""The ``avfusion`` command: thin wrappers over the library and the scripts."""
from __future__ import annotations

import argparse
import os
import sys

from .data.audio import AudioDecodeError
from .data.video import VideoDecodeError


def _cmd_models(args: argparse.Namespace) -> int:
    from .factory import list_models

    print("\n".join(list_models()))
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from .data.faces import download_yunet

    path = download_yunet(dest=args.dest)
    print(f"saved {path}")
    return 0


def _script_command(script: str):
    def run(args: argparse.Namespace) -> int:
        from .scripts import load_script

        load_script(script).main(args.rest)
        return 0

    return run


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
    from .demo import add_demo_parser
    from .predict import add_predict_parser

    add_demo_parser(sub)
    add_predict_parser(sub)
    for name, what in (("train", "train a model (scripts/train.py)"),
                       ("evaluate", "evaluate a model on a split (scripts/evaluate.py)"),
                       ("cache", "cache per-frame encoder features (scripts/cache_features.py)")):
        s = sub.add_parser(name, help=what, add_help=False)
        s.set_defaults(func=_script_command("cache_features" if name == "cache" else name))
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "func", None) is not None and args.command in ("train", "evaluate", "cache"):
        args.rest = rest  # the script parses its own options (and --help)
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, VideoDecodeError, AudioDecodeError) as e:
        # Problems with the user's files or settings: the message names them; a traceback would
        # only bury it. AVFUSION_DEBUG=1 shows the traceback.
        if os.environ.get("AVFUSION_DEBUG"):
            raise
        print(f"avfusion {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
