"""Checkpoints of a training run: ``accelerator.save_state`` plus the trainer's own counters, and
the exported best model.

``checkpoints/step_N`` holds what ``accelerator.save_state`` writes (model, optimizer, scheduler,
every process's RNG states) and ``trainer_state.json`` (:class:`TrainState`), written last: a folder
without it is an interrupted save and is ignored. The trainer state records the sha256 of every
other file of the folder; a resume checks them (:func:`verify_checkpoint`), because Accelerate
skips an unreadable RNG file with an info-level log and the run would go on with other randomness.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ..factory import save_pretrained
from ..files import atomic_dir, atomic_path, disk_full_error, is_disk_full, write_text_atomic
from .experiment import ExperimentConfig, experiment_to_dict

STATE_FILE = "trainer_state.json"


@dataclass
class TrainState:
    """Counters a checkpoint needs beyond what ``accelerator.save_state`` stores."""

    global_step: int = 0  # optimizer steps done
    epoch: int = 0  # the epoch in progress (0-based)
    batch_in_epoch: int = 0  # batches of `epoch` already consumed (per process)
    best_metric: float = -math.inf
    best_epoch: int = -1
    # Train-loss sums of the epoch in progress, summed over processes at checkpoint time.
    loss_sum: float = 0.0
    loss_count: float = 0.0
    history: list = field(default_factory=list)  # one dict per finished epoch (the CSV rows)
    config: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)  # sha256 of every other file of the checkpoint folder

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["best_metric"] = None if not math.isfinite(self.best_metric) else self.best_metric
        return json.dumps(d, indent=1)

    @classmethod
    def from_file(cls, path: Path) -> "TrainState":
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: unreadable trainer state ({e}); is the checkpoint complete?") from None
        if d.get("best_metric") is None:
            d["best_metric"] = -math.inf
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown trainer-state key(s) {sorted(unknown)}")
        return cls(**d)


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints (those with a trainer state) under ``<output_dir>/checkpoints``, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        if d.is_dir() and d.name.startswith("step_") and (d / STATE_FILE).is_file():
            try:
                found.append((int(d.name[5:]), d))
            except ValueError:
                continue
    return [d for _, d in sorted(found)]


def resolve_resume(resume: str, output_dir: str | Path) -> Path:
    """``latest`` -> the newest complete checkpoint of ``output_dir``; otherwise a checkpoint folder."""
    if resume == "latest":
        found = checkpoint_dirs(output_dir)
        if not found:
            raise FileNotFoundError(f"--resume latest: no complete checkpoint under {Path(output_dir) / 'checkpoints'}")
        return found[-1]
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume {resume}: not a checkpoint folder (no {STATE_FILE} in it)")
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_hashes(path: Path) -> dict[str, str]:
    """sha256 of every file of a checkpoint folder (relative names), the trainer state aside."""
    return {p.relative_to(path).as_posix(): _sha256(p) for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != STATE_FILE and not p.name.endswith(".tmp")}


def verify_checkpoint(path: Path, state: TrainState, strict: bool = True) -> list[str]:
    """The problems that would make a resume from ``path`` inexact: files the trainer state lists
    that are missing or changed. ``strict``: raise a ValueError naming them (the default);
    otherwise return them (the caller warns). A checkpoint without hashes (an older avfusion) gives
    one problem saying it cannot be verified."""
    if not state.files:
        problems = [f"{path}: written without file hashes (an older avfusion); the resume cannot be verified"]
    else:
        problems = []
        for name, digest in state.files.items():
            f = path / name
            if not f.is_file():
                problems.append(f"{f}: missing")
            elif _sha256(f) != digest:
                problems.append(f"{f}: changed since the checkpoint was saved")
    if problems and strict and state.files:
        raise ValueError(f"--resume {path}: {'; '.join(problems)}. Resuming would not reproduce the run "
                         "(model, optimizer or random state differ); pass --resume-unverified to continue anyway")
    return problems


def save_checkpoint(accelerator: Any, state: TrainState, output_dir: Path, keep: int) -> Path:
    """``accelerator.save_state`` into ``checkpoints/step_N`` plus the trainer state (written last,
    so a folder without it is an interrupted save and is ignored); prunes old checkpoints."""
    path = output_dir / "checkpoints" / f"step_{state.global_step}"
    try:
        accelerator.save_state(str(path))
    except Exception as e:
        if not is_disk_full(e):
            raise
        # A folder without its trainer state is ignored on resume; remove it anyway (it is not a checkpoint).
        shutil.rmtree(path, ignore_errors=True)
        raise disk_full_error(e, path) from None
    sums = torch.tensor([state.loss_sum, state.loss_count], dtype=torch.float64, device=accelerator.device)
    sums = accelerator.reduce(sums, reduction="sum").cpu()
    accelerator.wait_for_everyone()  # every process's RNG file is written before hashing
    if accelerator.is_main_process:
        saved = dataclasses.replace(state, loss_sum=float(sums[0]), loss_count=float(sums[1]),
                                    files=checkpoint_hashes(path))
        write_text_atomic(path / STATE_FILE, saved.to_json())
        if keep > 0:
            for old in checkpoint_dirs(output_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path


def write_csv(history: list[dict], path: Path) -> None:
    """One row per epoch; columns are the union of the keys seen (a baseline row has no train loss)."""
    cols: list[str] = ["epoch", "step", "lr", "train_loss"]
    for row in history:
        cols.extend(k for k in row if k not in cols)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        for row in history:
            w.writerow(row)


def export_model(accelerator: Any, model: nn.Module, cfg: ExperimentConfig, out: Path, info: dict) -> None:
    """``save_pretrained`` of the unwrapped model plus the experiment config beside it (main process)."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        # The whole folder or nothing: a full disk must not leave new weights beside an old config.
        with atomic_dir(out) as tmp:
            save_pretrained(unwrapped, tmp, extra={"training": info})
            write_text_atomic(tmp / "experiment.yaml", yaml.safe_dump(experiment_to_dict(cfg), sort_keys=False))
    accelerator.wait_for_everyone()


__all__ = ["STATE_FILE", "TrainState", "checkpoint_dirs", "resolve_resume", "save_checkpoint", "write_csv",
           "export_model", "checkpoint_hashes", "verify_checkpoint"]
