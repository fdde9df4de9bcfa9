"""Files written whole or not at all.

:func:`atomic_path` hands out a temporary name in the destination folder (hidden, marked
``.partial``, same suffix so writers that infer the format from it still work) and renames it over
the final name only when the block finishes without an error. Ctrl-C, a full disk or a crash leave
no file under the final name that could be mistaken for a complete one; the temporary file is
removed on errors (a killed process may leave a ``.partial`` file, never a short final file).
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, Path]

PARTIAL_MARK = ".partial"
# errno values of a disk that cannot take the file (full, over quota, file too large).
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


# How writers that are not Python's own say "disk full" (safetensors' Rust IoError, torch.save).
_DISK_FULL_TEXT = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122",
                   "File too large", "os error 27")


def is_disk_full(e: BaseException) -> bool:
    """Whether ``e`` is a write that failed for lack of space, whichever library raised it (an
    OSError with ENOSPC and friends, safetensors' SafetensorError, torch.save's "file write failed")."""
    if isinstance(e, OSError):
        return e.errno in _DISK_FULL or (e.errno is None and any(t in str(e) for t in _DISK_FULL_TEXT))
    text = str(e)
    # torch.save's zip writer: "file write failed", or "unexpected pos" when a write came up short.
    return any(t in text for t in _DISK_FULL_TEXT) or (
        isinstance(e, RuntimeError) and "inline_container" in text
        and ("file write failed" in text or "unexpected pos" in text))


def disk_full_error(e: BaseException, path: PathLike) -> OSError:
    """``e`` (see :func:`is_disk_full`) as an OSError whose filename is ``path``, the name the user
    asked for (not a temporary one)."""
    code = e.errno if isinstance(e, OSError) and e.errno in _DISK_FULL else errno.ENOSPC
    return OSError(code, os.strerror(code), str(path))


def partial_name(path: PathLike) -> Path:
    """The temporary name :func:`atomic_path` uses for ``path``."""
    p = Path(path)
    return p.with_name(f".{p.stem}{PARTIAL_MARK}-{os.getpid()}{p.suffix}")


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """``with atomic_path(final) as tmp: write(tmp)``: ``final`` appears, complete, on success."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(final)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{final}: the writer produced no file")
        _fsync_file(tmp)  # the bytes reach the disk before the name does
        os.replace(tmp, final)
    except Exception as e:
        if is_disk_full(e):  # name the file the user asked for, not the temporary one
            raise disk_full_error(e, final) from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(final.parent)


def _fsync_file(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (POSIX: the directory entry needs its own fsync)."""
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories; os.replace is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` whole or not at all."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """``with atomic_dir(final) as tmp: fill(tmp)``: the folder ``final`` appears, complete, on success.

    The temporary folder sits beside ``final`` (hidden, marked ``.partial``) and is removed on errors.
    An existing ``final`` is replaced only once the new folder is complete (moved aside, then deleted).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(final)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        try:
            yield tmp
        except Exception as e:
            if is_disk_full(e):  # name the folder the user asked for, not the temporary one
                raise disk_full_error(e, final) from None
            raise
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink()
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _fsync_dir(final.parent)


def write_text_atomic(path: PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` whole or not at all."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


__all__ = ["atomic_path", "atomic_dir", "partial_name", "write_text_atomic", "write_bytes_atomic", "PARTIAL_MARK",
           "is_disk_full", "disk_full_error"]
