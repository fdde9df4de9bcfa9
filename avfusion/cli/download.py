"""``avfusion download NAME``: fetch a registered weight file, check its size and pinned digest,
convert it once to what avfusion loads (safetensors under $AVFUSION_HOME; YuNet stays ONNX).

The licence is printed first; a non-commercial one needs --accept-non-commercial. ``--list`` shows
every source, its licence and whether it is already here. Mirrors: --url (the file, or the folder
holding a source's files) or $AVFUSION_DOWNLOAD_BASE ({base}/{name}/{file}).
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from ..sources import SOURCES
from ._common import entry_points

NAME = "download"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(NAME, help="fetch a pretrained weight file, check its digest, convert it",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", nargs="?", choices=list(SOURCES), metavar="NAME",
                   help="weight source: " + ", ".join(SOURCES))
    p.add_argument("--list", action="store_true", help="list the weight sources, their licences and where they are")
    p.add_argument("--accept-non-commercial", "--accept-licence", dest="accept", action="store_true",
                   help="accept a non-commercial licence (CC BY-NC...): needed for emonet_* and w2v2_msp_dim")
    p.add_argument("--dest", default=None, help="folder to write to (default: $AVFUSION_HOME, ~/.cache/avfusion)")
    p.add_argument("--url", default=None, help="fetch from here instead: the file itself, or the folder of a "
                                               "source's files")
    p.add_argument("--variant", default=None, help="which published form to fetch (see --list); default the first")
    p.add_argument("--hash", "--sha256", dest="hashes", action="append", default=[], metavar="[FILE=]HEX",
                   help="check a file against this digest (sha256, 40-hex git blob id or md5; a prefix "
                        "'sha256:' etc. may say which): needed for files whose digest avfusion does not pin")
    p.add_argument("--force", action="store_true", help="fetch and convert again even if the result is present")
    p.set_defaults(func=run)
    return p


def _digests(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, digest = item.rpartition("=")
        out[name if sep else ""] = digest
    return out


def list_sources() -> None:
    from ..sources import local_path

    for src in SOURCES.values():
        here = local_path(src.name)
        nc = "non-commercial" if src.licence.non_commercial else "commercial use allowed"
        print(f"{src.name}: {src.description}")
        print(f"    licence {src.licence.spdx} ({nc}); used by: {', '.join(src.models) or '-'}")
        for v in src.variants:
            unpinned = [f.name for f in v.files if f.digest is None]
            pin = f"; no pinned digest for {', '.join(unpinned)} (needs --hash)" if unpinned else ""
            print(f"    variant {v.name}: {', '.join(f.name for f in v.files)}{pin}")
        print(f"    -> {here if here is not None else 'not downloaded'}")


def run(args: argparse.Namespace) -> int:
    from ..download import download

    if args.list:
        list_sources()
        return 0
    if args.what is None:
        raise ValueError(f"name a weight source ({', '.join(SOURCES)}) or pass --list")
    download(args.what, args.dest, variant=args.variant, url=args.url, digests=_digests(args.hashes),
             accept_non_commercial=args.accept, force=args.force, log=print)
    return 0


# parse_args(argv) -> Namespace and main(argv=None) -> exit code, as every command has them.
parse_args, main = entry_points(add_parser, run, NAME)


if __name__ == "__main__":
    sys.exit(main())
