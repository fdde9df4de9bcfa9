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
from typing import Any, Callable, Optional, Sequence

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


def expand_inputs(inputs: Sequence[str]) -> list[Job]:
    """The videos ``inputs`` name, in order, each once, with collision-free output names.

    A folder without videos or a pattern matching nothing is a ValueError (nothing to do is a
    mistake); a file that does not exist stays in the list and fails as one of the batch's videos.
    """
    found: list[tuple[Path, Path]] = []  # (file, the folder its output name is relative to)
    for text in inputs:
        p = Path(text)
        if p.is_dir():
            # Hidden files are skipped: a writer's unfinished temporary file is one (avfusion.files).
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS
                           and not f.name.startswith("."))
            if not files:
                raise ValueError(f"{p}: no video files in this folder (looked for {', '.join(VIDEO_EXTENSIONS)})")
            found += [(f, p) for f in files]
        elif not p.exists() and _is_glob(text):
            files = sorted(Path(f) for f in glob.glob(text, recursive=True) if Path(f).is_file())
            if not files:
                raise ValueError(f"{text}: no file matches this pattern")
            found += [(f, _glob_root(text)) for f in files]
        else:
            found.append((p, p.parent))
    seen: set[Path] = set()
    unique = []
    for f, base in found:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append((f, base))
    if not unique:
        raise ValueError("no input videos")
    common = Path(os.path.commonpath([str(b.resolve()) for _, b in unique]))
    names = [(f.resolve().parent.relative_to(common) / f.stem).as_posix() for f, _ in unique]
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    jobs = []
    for (f, _), n in zip(unique, names):
        if counts[n] > 1:  # same folder, same stem, other extension
            n = f"{n}_{f.suffix.lstrip('.').lower()}"
        jobs.append(Job(f, n))
    return jobs


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
    """An error as one line that names the file."""
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
           "one_line", "describe", "VIDEO_EXTENSIONS", "COMBINED_NAME"]
