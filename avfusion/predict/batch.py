"""Many videos in one run: which files the inputs name, where each one's outputs go, a batch that
survives bad files, resumes, and shares its videos among processes.

- Inputs are files, folders (searched recursively for :data:`VIDEO_EXTENSIONS`) and glob patterns.
- Outputs mirror the inputs' folders below their common folder, so ``a/clip.mp4`` and
  ``b/clip.mp4`` give ``a/clip_va.csv`` and ``b/clip_va.csv``; two files of one folder that differ
  only in their extension get it in their names (``clip_mp4_va.csv``, ``clip_avi_va.csv``).
- A video that fails is reported in one line and the batch goes on; the run ends with
  "N written, M failed" and a non-zero exit when any failed. ``skip_existing`` keeps videos whose
  table is already there (a table is written last, so its presence means the video is done).
- Under ``accelerate launch`` each process takes every n-th video; the main process writes the
  combined table (``predictions.<fmt>``, a ``video`` column first) once all are done.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import pandas as pd

from .predictor import Predictor, read_table, write_table

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv",
                    ".3gp", ".ts", ".mts", ".m2ts", ".ogv")
COMBINED_NAME = "predictions"


@dataclass(frozen=True)
class Job:
    """One input video and the output name (relative, without suffix) its files get."""

    path: Path
    name: str

    def table_path(self, out: Path, fmt: str) -> Path:
        return out / f"{self.name}_va.{fmt}"


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _glob_root(pattern: str) -> Path:
    """The folder part of a pattern before its first wildcard."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if _is_glob(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _own_output(f: Path) -> bool:
    """Whether ``f`` is a file avfusion predict wrote (an overlay video beside its summary)."""
    return f.name.endswith("_overlay.mp4") and f.with_name(f.name[: -len("_overlay.mp4")] + "_summary.json").is_file()


def _inside(p: Path, folder: Optional[Path]) -> bool:
    if folder is None:
        return False
    try:
        p.resolve().relative_to(folder)
        return True
    except (ValueError, OSError, RuntimeError):
        return False


def _scan(folder: Path, unreadable: list[tuple[str, str]], skip: Optional[Path],
          own: Optional[list[Path]] = None) -> list[Path]:
    """The video files below ``folder``: symbolic links followed, each real folder once (a link
    cycle ends there), hidden entries left out, and what avfusion wrote (``skip``, the output
    folder, and overlay videos beside their summary) added to ``own`` instead; folders that cannot
    be read are added to ``unreadable`` as ``(path, reason)``."""
    own = [] if own is None else own
    files: list[Path] = []
    seen: set[Path] = set()
    if _inside(folder, skip):  # the folder itself lies in the output folder: its files were asked for
        skip = None
    stack = [folder]
    while stack:
        d = stack.pop()
        try:
            real = d.resolve(strict=True)
        except (OSError, RuntimeError) as e:
            unreadable.append((str(d), f"{d}: folder cannot be read ({_reason(e)}); its videos were not predicted"))
            continue
        if real in seen:
            continue
        if _inside(real, skip):  # the output folder: said only when it holds videos (overlays)
            if any(f.suffix.lower() in VIDEO_EXTENSIONS for f in d.rglob("*")):
                own.append(d)
            continue
        seen.add(real)
        try:
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            unreadable.append((str(d), f"{d}: folder cannot be read ({_reason(e)}); its videos were not predicted"))
            continue
        subdirs = []
        for entry in entries:
            if entry.name.startswith("."):  # a writer's unfinished temporary file is one (avfusion.files)
                continue
            p = Path(entry.path)
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                subdirs.append(p)
            elif p.suffix.lower() in VIDEO_EXTENSIONS:
                if _own_output(p):
                    own.append(p)
                else:
                    files.append(p)  # FIFOs, broken links etc. fail as videos of the batch, by name
        stack.extend(reversed(subdirs))
    return sorted(files)


def _reason(e: BaseException) -> str:
    import errno

    if isinstance(e, RuntimeError) or getattr(e, "errno", None) == errno.ELOOP:
        return "symbolic link loop"
    return getattr(e, "strerror", None) or str(e)


def expand_inputs(inputs: Sequence[str], out: Optional[Path] = None,
                  unreadable: Optional[list[tuple[str, str]]] = None) -> list[Job]:
    """The videos ``inputs`` name, in order, each once, with collision-free output names.

    A folder without videos or a pattern matching nothing is a ValueError (nothing to do is a
    mistake); a file that does not exist stays in the list and fails as one of the batch's videos.
    Folders are searched recursively, links followed (each real folder once); what avfusion wrote
    there is never an input: the folder ``out`` and overlay videos beside their summary are left
    out. Sub-folders that cannot be read go to ``unreadable`` (``(path, reason)``: the batch
    reports them as failed) or, without that list, are a ValueError.
    """
    bad: list[tuple[str, str]] = [] if unreadable is None else unreadable
    skip = None
    if out is not None:
        try:
            skip = Path(out).resolve()
        except (OSError, RuntimeError):
            skip = None
    found: list[tuple[Path, Path]] = []  # (file, the folder its output name is relative to)
    for text in inputs:
        p = Path(text)
        if p.is_dir():
            before, own = len(bad), []
            files = _scan(p, bad, skip, own)
            if own:
                import warnings

                warnings.warn(f"{p}: left out what avfusion predict wrote there ({', '.join(str(o) for o in own[:3])}"
                              f"{', ...' if len(own) > 3 else ''}): outputs are never inputs", RuntimeWarning,
                              stacklevel=2)
            if not files:
                problem = f"; {bad[before][1]}" if len(bad) > before else ""
                raise ValueError(f"{p}: no video files in this folder (looked for {', '.join(VIDEO_EXTENSIONS)})"
                                 f"{problem}")
            found += [(f, p) for f in files]
        elif not p.exists() and not p.is_symlink() and _is_glob(text):
            here = None if _inside(_glob_root(text), skip) else skip
            files = sorted(Path(f) for f in glob.glob(text, recursive=True)
                           if Path(f).is_file() and not _inside(Path(f), here) and not _own_output(Path(f)))
            if not files:
                raise ValueError(f"{text}: no file matches this pattern")
            found += [(f, _glob_root(text)) for f in files]
        else:
            found.append((p, p.parent))
    if unreadable is None and bad:
        raise ValueError(bad[0][1])
    seen: set[Path] = set()
    unique = []
    for f, base in found:
        key = _key(f)
        if key not in seen:
            seen.add(key)
            unique.append((f, base))
    if not unique:
        raise ValueError("no input videos")
    # Names follow the paths as given (a linked folder's videos under the link's name).
    common = Path(os.path.commonpath([os.path.abspath(b) for _, b in unique]))
    names = [(Path(os.path.abspath(f.parent)).relative_to(common) / f.stem).as_posix() for f, _ in unique]
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    jobs = []
    for (f, _), n in zip(unique, names):
        if counts[n] > 1:  # same folder, same stem, other extension
            n = f"{n}_{f.suffix.lstrip('.').lower()}"
        jobs.append(Job(f, n))
    return jobs


def _key(p: Path) -> Path:
    """``p`` resolved; a path that cannot be (a link loop) made absolute as it is."""
    try:
        return p.resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(p))


@dataclass
class BatchResult:
    """What a batch (or one process's share of it) did."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (input, one-line reason)

    def merge(self, other: "BatchResult") -> "BatchResult":
        return BatchResult(self.written + other.written, self.skipped + other.skipped, self.failed + other.failed)

    def summary(self) -> str:
        text = f"{len(self.written)} written, {len(self.failed)} failed"
        return text + (f", {len(self.skipped)} skipped (already done)" if self.skipped else "")


def one_line(err: BaseException, path: Path) -> str:
    """An error as one line that names the file (and, for a full disk, the folder)."""
    from ..files import is_disk_full

    name = getattr(err, "filename", None)
    if is_disk_full(err) and name:
        where = Path(name)
        return f"{path}: {where.parent}: {err.strerror or 'no space left on device'} (writing {where.name})"
    text = " ".join(str(err).split()) or type(err).__name__
    return text if str(path) in text or path.name in text else f"{path}: {text}"


def run_batch(
    predictor: Predictor,
    jobs: Sequence[Job],
    out: Path,
    fmt: str = "csv",
    plot: bool = True,
    overlay: bool = False,
    skip_existing: bool = False,
    progress: bool = False,
    report: Optional[Callable[[str], None]] = print,
    rank: int = 0,
    world: int = 1,
) -> BatchResult:
    """Predict this process's share of ``jobs`` (every ``world``-th from ``rank``)."""
    result = BatchResult()
    mine = list(jobs)[rank::world]
    for k, job in enumerate(mine, 1):
        where = f"[{k}/{len(mine)}]" + (f" (process {rank})" if world > 1 else "")
        table_path = job.table_path(out, fmt)
        if skip_existing and table_path.is_file():
            result.skipped.append(str(job.path))
            if report:
                report(f"{where} {job.path}: already done ({table_path})")
            continue
        try:
            table = predictor.predict_video(job.path, out, plot=plot, overlay=overlay, fmt=fmt, name=job.name,
                                            progress=progress)
        except Exception as e:  # one bad video must not stop the batch; KeyboardInterrupt does
            result.failed.append((str(job.path), one_line(e, job.path)))
            if report:
                report(f"{where} FAILED {one_line(e, job.path)}")
            continue
        result.written.append(str(job.path))
        if report:
            report(f"{where} {job.path}: {describe(table, predictor)} -> {table_path}")
    return result


# The settings that make a table what it is (a folder holds the tables of one model and settings;
# precision and compile change the last digits only).
IDENTITY_KEYS = ("model", "flip", "stride", "clip_len", "hop", "colour", "face_backend", "smooth", "faces", "speech")
# Names of what predict writes (``overwrite`` removes these below the folder, nothing else).
OUTPUT_SUFFIXES = tuple(f"_va.{f}" for f in ("csv", "parquet", "json")) + ("_va.png", "_summary.json", "_overlay.mp4")


def predict_identity(predictor: Predictor) -> dict[str, Any]:
    return {k: predictor.settings.get(k) for k in IDENTITY_KEYS}


def _outputs(out: Path) -> Iterator[Path]:
    for here, _, files in os.walk(out):
        for name in files:
            if name.endswith(OUTPUT_SUFFIXES) or (here == str(out) and name.startswith(f"{COMBINED_NAME}.")):
                yield Path(here) / name


def claim_output(out: Path, identity: dict[str, Any], overwrite: bool = False) -> None:
    """Refuse ``out`` when it holds tables of another model or other settings (its record, or
    the ``model`` of an older folder's summaries) unless ``overwrite``, which removes every file
    predict wrote there (tables, summaries, plots, overlays, the combined table)."""
    import json

    from ..runlock import OWNER_NAME, RunFolderError, changes_text, identity_changes, read_owner

    existing = next(iter(_outputs(out)), None)
    if existing is None:
        return
    if overwrite:
        for f in list(_outputs(out)):
            f.unlink(missing_ok=True)
        (out / OWNER_NAME).unlink(missing_ok=True)
        return
    owner = read_owner(out)
    if owner is not None and owner.get("command") != "predict":
        raise RunFolderError(f"--out {out}: holds the outputs of avfusion {owner.get('command')}; choose another "
                             "output folder")
    old = (owner or {}).get("identity")
    new = dict(identity)
    if old is None:  # a folder written before runs recorded themselves: the model of a summary
        summary = next((f for f in _outputs(out) if f.name.endswith("_summary.json")), None)
        try:
            model = json.loads(summary.read_text()).get("model") if summary is not None else None
        except (OSError, ValueError):
            model = None
        old, new = {"model": model}, {"model": identity.get("model")}
        if model is None:
            return
    changes = identity_changes(old, new)
    if changes:
        raise RunFolderError(f"--out {out}: holds predictions of another model or settings ({changes_text(changes)}, "
                             f"e.g. {existing.relative_to(out)}); pass --overwrite to replace them, or choose "
                             "another output folder")


def describe(table: pd.DataFrame, predictor: Predictor) -> str:
    """One line about a predicted video: frames, faces, speech, valid frames and the means over them."""
    summ = table.attrs.get("summary") or {}
    n = summ.get("frames", len(table))
    parts = [f"{n} frames"]
    if predictor.model.use_video:
        pct = 100 * summ.get("frames_with_face", 0) / max(1, n)
        parts.append(f"face found in {pct:.0f} %")
        tracked = summ.get("faces_tracked")
        if tracked and tracked > 1:
            parts.append(f"{tracked} face tracks")
    if summ.get("frames_with_speech") is not None:
        parts.append(f"speech in {100 * summ['frames_with_speech'] / max(1, n):.0f} %")
    text = ", ".join(parts)
    valid = summ.get("valid_frames", 0)
    if summ.get("valence_mean") is None:
        return text + "; no valid frame: no mean values"
    return (text + f"; {valid} valid frames: mean valence {summ['valence_mean']:+.2f}, "
            f"arousal {summ['arousal_mean']:+.2f}")


def combine_tables(jobs: Sequence[Job], out: Path, fmt: str) -> Optional[Path]:
    """Write ``predictions.<fmt>``: every finished video's table with a ``video`` column first."""
    tables = []
    for job in jobs:
        p = job.table_path(out, fmt)
        if p.is_file():
            t = read_table(p)
            if "video" in t.columns:  # tables from before the column existed get it here
                t["video"] = str(job.path)
            else:
                t.insert(0, "video", str(job.path))
            tables.append(t)
    if not tables:
        return None
    return write_table(pd.concat(tables, ignore_index=True), out / f"{COMBINED_NAME}.{fmt}", fmt)


def distributed_state() -> Any:
    """Accelerate's process state under ``accelerate launch`` (or torchrun) with several processes,
    else None. Without a GPU the processes share the CPU (gloo): ``accelerate launch --multi_gpu
    --num_processes N`` starts them on a CPU-only machine too."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


__all__ = ["Job", "BatchResult", "expand_inputs", "run_batch", "combine_tables", "distributed_state",
           "claim_output", "predict_identity",
           "one_line", "describe", "VIDEO_EXTENSIONS", "COMBINED_NAME"]
