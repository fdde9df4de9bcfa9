"""What every ``avfusion`` command shares: one parser per command, user errors as one line."""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Any, Callable, Optional, Sequence

AddParser = Callable[[Any], argparse.ArgumentParser]
Run = Callable[[argparse.Namespace], Any]


class UserError(Exception):
    """A problem with the user's files or settings; the message says which and what to do."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from ..data.audio import AudioDecodeError
    from ..data.video import VideoDecodeError

    # FloatingPointError: a diverging training (its message says where and what to change).
    return (UserError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
            ValueError, VideoDecodeError, AudioDecodeError, FloatingPointError)


def accepts_overrides(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Mark a command whose positional ``key=value`` overrides may come before or after its options."""
    parser.set_defaults(_overrides_anywhere=True)
    return parser


def parse(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Parse ``argv``; for commands marked by :func:`accepts_overrides`, ``key=value`` words after
    options are overrides too (argparse alone would call them unrecognised)."""
    args, rest = parser.parse_known_args(argv)
    if rest and getattr(args, "_overrides_anywhere", False):
        bad = [r for r in rest if r.startswith("-") or "=" not in r]
        if not bad:
            args.overrides = list(getattr(args, "overrides", None) or []) + rest
            rest = []
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def standalone_parser(add_parser: AddParser) -> argparse.ArgumentParser:
    """A parser for one command alone (``python -m avfusion.cli.<name>``), shown as ``avfusion``."""
    top = argparse.ArgumentParser(prog="avfusion")
    sub = top.add_subparsers(dest="command")
    add_parser(sub)
    return top


def parse_command(add_parser: AddParser, name: str, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The parsed arguments of one command (``argv`` without the command's name)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return parse(_subparser(standalone_parser(add_parser), name), argv)


def _subparser(top: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise KeyError(name)


def run_safely(run: Run, args: argparse.Namespace, name: str) -> int:
    """Run a command; a user error becomes ``avfusion NAME: error: ...`` on one line and exit code 2
    (``AVFUSION_DEBUG=1`` shows the traceback instead); Ctrl-C exits with 130."""
    def one_line_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                         line: Any = None) -> None:
        # A warning is for the user: one line, no source excerpt.
        text = " ".join(str(message).split())
        print(f"avfusion {name}: warning: {text}", file=sys.stderr if file is None else file)

    previous = warnings.showwarning
    warnings.showwarning = one_line_warning
    previous_hook = sys.unraisablehook

    def interrupt_again(unraisable: Any) -> None:
        # Ctrl-C that lands in a destructor (a decoder's __del__) would be printed as "Exception
        # ignored ... Traceback" and then lost; hand it to the main thread again instead, so the
        # command stops at the next statement and reports it once.
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            import _thread
            import threading

            # From another thread, once this hook has returned (raised here it would be reported
            # from the hook itself).
            threading.Timer(0.01, _thread.interrupt_main).start()
            return
        previous_hook(unraisable)

    sys.unraisablehook = interrupt_again
    try:
        result = run(args)
    except KeyboardInterrupt:
        print(f"avfusion {name}: interrupted", file=sys.stderr)
        return 130
    except _user_errors() as e:
        if os.environ.get("AVFUSION_DEBUG"):
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"avfusion {name}: error: {message}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 -- only a full disk becomes one line; the rest is re-raised
        disk = disk_error(e, name)
        if disk is None or os.environ.get("AVFUSION_DEBUG"):
            raise
        print(f"avfusion {name}: error: {disk}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = previous
        sys.unraisablehook = previous_hook
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


# errno values that mean "the disk cannot take this file", whatever wrote it.
_DISK_ERRNOS = {"ENOSPC", "EDQUOT", "EROFS", "EFBIG"}


def disk_error(e: BaseException, command: str = "") -> Optional[str]:
    """A one-line message naming the folder when ``e`` is a write that failed for lack of space
    (an OSError with ENOSPC and friends, safetensors' or torch.save's write errors), else None."""
    import errno as _errno
    from pathlib import Path

    from ..files import is_disk_full

    code = _errno.errorcode.get(e.errno or -1) if isinstance(e, OSError) else None
    if code not in _DISK_ERRNOS and not is_disk_full(e):
        return None
    after = " (--resume latest continues from the last complete checkpoint)" if command == "train" else ""
    name = getattr(e, "filename", None) if isinstance(e, OSError) else None
    if not name:
        return ("a checkpoint or weight file could not be written (disk full?): free space and run again" + after
                if not isinstance(e, OSError) else f"{e.strerror or e} while writing; free space and run again{after}")
    path = Path(name)
    if code == "EROFS":
        return (f"{path.parent}: read-only file system (writing {path.name}); choose another output folder "
                "and run again")
    return (f"{path.parent}: {e.strerror or 'no space left on device'} (writing {path.name}); free space there "
            "(or choose another output folder) and run again: files already finished are complete and kept, "
            f"the unfinished one was not renamed{after}")


def command_main(add_parser: AddParser, run: Run, name: str, argv: Optional[Sequence[str]] = None) -> int:
    """``main(argv)`` of a command module: parse, run, turn user errors into one line."""
    args = parse_command(add_parser, name, argv)
    quiet_third_party()
    return run_safely(run, args, name)


def quiet_third_party() -> None:
    """Silence warnings of libraries that say nothing a user can act on: OpenCV's DNN notices,
    FFmpeg's messages through decord (a damaged file gets the project's own one-line error)."""
    warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    try:
        import cv2

        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except (ImportError, AttributeError):
        pass
    try:
        import decord

        decord.logging.set_level(decord.logging.QUIET)
    except (ImportError, AttributeError):
        pass


def entry_points(add_parser: AddParser, run: Run, name: str) -> tuple[Callable[..., argparse.Namespace], Callable[..., int]]:
    """A command module's ``parse_args(argv)`` and ``main(argv=None)`` (exit code), made once here."""

    def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
        return parse_command(add_parser, name, argv)

    def main(argv: Optional[Sequence[str]] = None) -> int:
        return command_main(add_parser, run, name, argv)

    return parse_args, main
