"""One run per output folder: a lock while a run writes there, and a record of the run it holds.

- ``.avfusion.lock`` exists while a run writes into the folder: JSON with the command, pid, host,
  start time and the process's start tick (so a reused pid is not taken for the owner). It is
  created with ``O_EXCL``, so of two runs started at once exactly one gets it; the other stops with
  one line naming the owner. A lock whose process is gone (same host) is stale: removed with a
  warning. A lock from another host cannot be checked and counts as live (the message names the
  file to delete when that run is known to be gone).
- ``.avfusion-run.json`` records what the folder holds (command and identity: the settings that
  make its files what they are). Each command refuses a folder holding another identity's
  finished outputs before any work unless ``--overwrite`` (:func:`identity_changes` says what
  differs): ``avfusion.train.loop.check_run_folder``, ``avfusion.evaluation.run.claim_eval_dir``,
  ``avfusion.predict.batch.claim_output``; a cache's manifest refuses other encoders itself.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Union

from .files import write_text_atomic

PathLike = Union[str, Path]

LOCK_NAME = ".avfusion.lock"
OWNER_NAME = ".avfusion-run.json"
# A lock file without readable content this old is a crash between create and write, not a writer.
_UNREADABLE_GRACE_S = 10.0


class RunFolderError(ValueError):
    """An output folder that this run may not write into (busy, another run's, not a folder)."""


def check_output_folder(folder: PathLike, option: str = "--out") -> Path:
    """A one-line error naming ``option`` when ``folder`` is a file, sits below a file, or cannot
    be written or created (checked before any work). Nothing is created here: a run that stops on a
    setting leaves no folder behind (the lock, :func:`run_lock`, creates it)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"{option} {folder}: is a file, not a folder; give a folder for the outputs")
    existing = folder
    for parent in [folder, *folder.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise RunFolderError(f"{option} {folder}: {parent} is a file, so no folder can be made below it")
            existing = parent
            break
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "this folder is" if existing == folder else f"{existing} is"
        raise RunFolderError(f"{option} {folder}: {what} not writable (permission denied or a "
                             "read-only place); choose another output folder")
    return folder


def _start_tick(pid: int) -> Optional[int]:
    """The process's start time in clock ticks since boot (Linux), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(info: Mapping[str, Any]) -> bool:
    """Whether the process a lock names still runs (True when it cannot be told)."""
    if info.get("host") != socket.gethostname():
        return True
    try:
        pid = int(info["pid"])
    except (KeyError, TypeError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    tick = info.get("start_tick")
    now = _start_tick(pid)
    return tick is None or now is None or int(tick) == now


def _read(path: Path) -> Optional[dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe_lock(info: Mapping[str, Any]) -> str:
    return (f"avfusion {info.get('command', '?')} (pid {info.get('pid', '?')} on {info.get('host', '?')}, "
            f"started {info.get('started', '?')})")


@contextlib.contextmanager
def run_lock(folder: PathLike, command: str) -> Iterator[Path]:
    """Hold ``folder``'s lock for the block: a RunFolderError when another live run holds it; a
    stale lock (its process gone) is replaced with one warning. The lock is removed at the end."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    mine = {"command": command, "pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "start_tick": _start_tick(os.getpid()),
            "token": f"{os.getpid()}-{time.time_ns()}"}
    for _ in range(3):
        try:
            fd = os.open(str(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            other = _read(path)
            if other is None:
                try:
                    age = time.time() - path.stat().st_mtime
                except FileNotFoundError:
                    continue
                if age < _UNREADABLE_GRACE_S:
                    raise RunFolderError(f"{folder}: another avfusion run is starting in this folder ({path}); "
                                         "wait for it, or choose another output folder") from None
            elif _alive(other):
                raise RunFolderError(
                    f"{folder}: {describe_lock(other)} is writing into this folder; wait for it to finish or "
                    f"choose another output folder (if that run is gone, delete {path})") from None
            warnings.warn(f"{path}: removed a stale lock of "
                          f"{describe_lock(other) if other else 'an unknown run'}, whose process is gone",
                          RuntimeWarning, stacklevel=3)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(mine, f)
        break
    else:
        raise RunFolderError(f"{folder}: could not take the folder's lock {path}; try again")
    try:
        yield path
    finally:
        held = _read(path)
        if held is not None and held.get("token") == mine["token"]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def read_owner(folder: PathLike) -> Optional[dict]:
    """The record of the run ``folder`` holds (``command``, ``identity``), or None."""
    return _read(Path(folder) / OWNER_NAME)


def write_owner(folder: PathLike, command: str, identity: Mapping[str, Any]) -> Path:
    """Record that ``folder`` holds a ``command`` run of ``identity`` (JSON-ready values)."""
    from .version import __version__

    record = {"command": command, "identity": dict(identity), "avfusion_version": __version__,
              "written": time.strftime("%Y-%m-%d %H:%M:%S")}
    return write_text_atomic(Path(folder) / OWNER_NAME, json.dumps(record, indent=1, default=str) + "\n")


def identity_changes(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``key: old -> new`` for every (nested) value that differs (the model first: it says most)."""
    out = []
    for k in sorted(set(old) | set(new), key=lambda k: (k != "model", k)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += identity_changes(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def changes_text(changes: list[str], limit: int = 3) -> str:
    shown = "; ".join(changes[:limit])
    return shown + (f"; and {len(changes) - limit} more" if len(changes) > limit else "")


__all__ = ["run_lock", "check_output_folder", "read_owner", "write_owner", "identity_changes",
           "changes_text", "describe_lock", "RunFolderError", "LOCK_NAME", "OWNER_NAME"]
