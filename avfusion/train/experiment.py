"""Experiments: the typed training config and the experiment YAML that names model, data and recipe.

An experiment YAML (shipped ones by name: ``tiny_synthetic``; or any file) names a model (a shipped
architecture, a YAML file or an exported folder), the data and the training recipe; ``key=value``
overrides on the command line change single fields::

    name: afew_emonet_video
    model: afew_emonet_video          # a name, a YAML file or a folder written by save_pretrained
    model_overrides: {video: {checkpoint: pretrained/emonet_8.pth}}
    data: {kind: afew_va, root: data/AFEW-VA, folds: 5, split_by: actor}
    train: {epochs: 30, lr: 3.0e-4}

The loop lives in :mod:`avfusion.train.loop`; the data section is :class:`avfusion.data.build.DataConfig`.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ..config import apply_overrides, from_dict, load_yaml, register_nested, resolve_experiment_file, to_dict
from ..data.build import DataConfig, check_data_config
from ..factory import create_model, get_model_config
from ..model import AVModel

@dataclass
class TrainConfig:
    epochs: int = 10
    # AdamW; weight decay applies only to the weight matrices of linear/conv/attention layers.
    lr: float = 3.0e-4
    weight_decay: float = 0.05
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    # Linear warmup over warmup_steps optimizer steps (or warmup_ratio of all of them when
    # warmup_steps is 0), then cosine decay to min_lr_ratio * lr. Steps count as in a one-process
    # run: Accelerate advances a prepared schedule once per process at every step, so with N
    # processes (N times the batch) it follows the samples seen.
    warmup_steps: int = 0
    warmup_ratio: float = 0.05
    min_lr_ratio: float = 0.0
    grad_accum: int = 1
    # Max global gradient norm (None/0: no clipping).
    clip_grad_norm: Optional[float] = 1.0
    # "no", "bf16" or "fp16" (Accelerate autocast).
    mixed_precision: str = "no"
    # Force the CPU even where a GPU exists (tests, `accelerate launch --cpu` does the same).
    cpu: bool = False
    # "ccc" (1 - CCC per dimension, weighted) or "emonet" (EmoNet's shake-shake loss).
    loss: str = "ccc"
    loss_weights: list = field(default_factory=lambda: [1.0, 1.0])
    seed: int = 0
    # accelerator.save_state every N optimizer steps (0: only at the end of each epoch); older
    # step checkpoints beyond `keep_checkpoints` are deleted.
    save_every: int = 0
    keep_checkpoints: int = 2
    # Stop (with a checkpoint) after this many optimizer steps without shortening the schedule:
    # the "killed run" of the resume test, or a time budget.
    stop_after_steps: Optional[int] = None
    # Train-loss logging interval in optimizer steps.
    log_every: int = 10
    # Evaluate the untrained model first (epoch 0): a baseline, and the exact 1-vs-N-process check
    # of the gathered evaluation (same weights, same frames).
    eval_before_training: bool = False


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    # A model name (`avfusion models`), a model YAML file, or a save_pretrained folder to start from.
    model: str = "tiny"
    # Nested overrides of the model config, e.g. {mode: video} or {fusion: {n_layers: 2}}.
    model_overrides: dict = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # Everything a run writes: checkpoints/, best/, metrics.csv, tensorboard/, split.json.
    output_dir: str = "runs/experiment"


register_nested("ExperimentConfig", "data", DataConfig)
register_nested("ExperimentConfig", "train", TrainConfig)


def load_experiment(name_or_path: str | Path | None = None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """An experiment config from a shipped name or a YAML file (or the defaults) plus ``key=value``
    overrides. Errors name the file, or the command line when an override is at fault."""
    path = resolve_experiment_file(name_or_path) if name_or_path is not None else None
    data = load_yaml(path) if path is not None else {}
    where = str(path or "experiment config")
    try:
        from_dict(ExperimentConfig, data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None
    try:
        apply_overrides(data, list(overrides))
        cfg = from_dict(ExperimentConfig, data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"command-line override: {e}") from None
    for section in (cfg, cfg.data, cfg.train):
        _coerce_fields(section, where)
    try:
        check_experiment(cfg, where)
    except ValueError as e:
        if overrides and _problem_is_the_files(load_yaml(path) if path is not None else {}, where, str(e)):
            raise
        if overrides:  # the file alone does not have this problem: an override brought it
            raise ValueError(str(e).replace(f"{where}:", "command-line override:", 1)) from None
        raise
    return cfg


def _problem_is_the_files(data: dict, where: str, message: str) -> bool:
    """True when the YAML file without overrides already fails ``check_experiment`` the same way."""
    try:
        cfg = from_dict(ExperimentConfig, data)
        for section in (cfg, cfg.data, cfg.train):
            _coerce_fields(section, where)
        check_experiment(cfg, where)
    except (TypeError, ValueError) as e:
        return str(e) == message
    return False


def _coerce_fields(obj: Any, where: str) -> None:
    """Give scalar fields their declared type. YAML reads ``1e-3`` (no dot) as a string, and a
    learning rate that is a string fails deep inside the optimizer; convert it here or say so."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        tp = hints[f.name]
        args = typing.get_args(tp)
        if value is None:
            continue
        base = next((a for a in args if a is not type(None)), tp) if args else tp
        if base not in (int, float, bool, str):
            continue
        try:
            if base is bool:
                if not isinstance(value, bool):
                    raise ValueError
            elif base is int:
                if isinstance(value, bool) or float(value) != int(float(value)):
                    raise ValueError
                value = int(float(value))
            elif base is float:
                if isinstance(value, bool):
                    raise ValueError
                value = float(value)
            else:
                value = str(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: {type(obj).__name__}.{f.name} must be {base.__name__}, "
                             f"got {value!r}") from None
        setattr(obj, f.name, value)


def check_experiment(cfg: ExperimentConfig, where: str = "experiment config") -> None:
    """Refuse values that would fail late (after minutes of data loading) with a clear message."""
    t = cfg.train
    problems = check_data_config(cfg.data)
    if t.mixed_precision not in ("no", "bf16", "fp16"):
        problems.append(f"train.mixed_precision must be 'no', 'bf16' or 'fp16', got {t.mixed_precision!r}")
    if t.loss not in ("ccc", "emonet"):
        problems.append(f"train.loss must be 'ccc' or 'emonet', got {t.loss!r}")
    if t.grad_accum < 1:
        problems.append(f"train.grad_accum must be >= 1, got {t.grad_accum}")
    if t.epochs < 1:
        problems.append(f"train.epochs must be >= 1, got {t.epochs}")
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems))


def experiment_to_dict(cfg: ExperimentConfig) -> dict:
    return to_dict(cfg)


def with_fold(cfg: ExperimentConfig, fold: int, folds: int) -> ExperimentConfig:
    """A copy of ``cfg`` that trains fold ``fold`` of ``folds`` into ``<output_dir>/fold_<i>``."""
    data = dataclasses.replace(cfg.data, folds=folds, fold=fold)
    return dataclasses.replace(cfg, data=data, output_dir=str(Path(cfg.output_dir) / f"fold_{fold}"))


def build_model(cfg: ExperimentConfig) -> AVModel:
    """The model the experiment names, with its overrides. Frozen encoders that name their weight
    source (``weights:``, e.g. the published experts) get the downloaded weights, unless the run
    reads cached features (``data.features``: the encoders never run): a frozen encoder on random
    weights would teach the fusion model nothing."""
    model_cfg = get_model_config(cfg.model, **cfg.model_overrides)
    if cfg.data.features is None:
        used = {"video": model_cfg.mode in ("av", "video"), "audio": model_cfg.mode in ("av", "audio")}
        for enc, key, sense in ((model_cfg.video, "checkpoint", "video"), (model_cfg.audio, "path", "audio")):
            if used[sense] and enc is not None and enc.frozen and enc.weights and not getattr(enc, key):
                from ..sources import require

                setattr(enc, key, str(require(enc.weights, str(cfg.model))))
    return create_model(model_cfg)


__all__ = ["DataConfig", "TrainConfig", "ExperimentConfig", "load_experiment", "check_experiment",
           "experiment_to_dict", "with_fold", "build_model"]
