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

from ..config import apply_overrides, from_dict, load_yaml, register_nested, resolve_experiment_file, to_dict, yaml_line
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


def load_experiment(name_or_path: str | Path | None = None, overrides: Sequence[str] = (),
                    check_model: bool = True) -> ExperimentConfig:
    """An experiment config from a shipped name or a YAML file (or the defaults) plus ``key=value``
    overrides, checked as a whole before any work (types, ranges, and with ``check_model`` the
    model it names with its ``model_overrides``). An error names where the value came from: the
    file and line, or the command line when an override brought the problem."""
    import copy

    path = resolve_experiment_file(name_or_path) if name_or_path is not None else None
    data = load_yaml(path) if path is not None else {}
    where = str(path or "experiment config")
    if not overrides:
        return _checked(data, where, path, check_model)
    try:
        merged = apply_overrides(copy.deepcopy(data), list(overrides))
    except ValueError as e:
        raise ValueError(f"command-line override: {e}") from None
    try:
        return _build(merged, check_model)
    except _KeyProblem as e:
        try:
            _build(copy.deepcopy(data), check_model)
        except _KeyProblem as file_error:
            if str(file_error) == str(e):  # the file alone has this problem: the file is to blame
                raise _located(file_error, where, path) from None
        # The file alone does not have this problem: an override brought it.
        raise ValueError(f"command-line override: {e}") from None


class _KeyProblem(ValueError):
    """A problem with one key of the experiment (``key``: dotted), for the file's line number."""

    def __init__(self, key: Optional[str], message: str) -> None:
        super().__init__(message)
        self.key = key


def _checked(data: dict, where: str, path: Optional[Path], check_model: bool) -> ExperimentConfig:
    """``data`` as a checked ExperimentConfig; a ValueError starts with ``where`` (and the line of
    the key at fault when the file has it)."""
    try:
        return _build(data, check_model)
    except _KeyProblem as e:
        raise _located(e, where, path) from None


def _located(e: "_KeyProblem", where: str, path: Optional[Path]) -> ValueError:
    line = yaml_line(path, e.key.split(".")) if path is not None and e.key else None
    return ValueError(f"{where}{f', line {line}' if line else ''}: {e}")


def _build(data: dict, check_model: bool) -> ExperimentConfig:
    import re

    try:
        cfg = from_dict(ExperimentConfig, data)
    except (TypeError, ValueError) as e:
        m = re.match(r"(\w+) must be a mapping", str(e))
        raise _KeyProblem(m.group(1) if m else None, str(e)) from None
    for section, prefix in ((cfg, ""), (cfg.data, "data."), (cfg.train, "train.")):
        _coerce_fields(section, prefix)
    try:
        check_experiment(cfg, "")
    except ValueError as e:
        text = str(e).lstrip(": ")
        m = re.search(r"\b((?:data|train)\.\w+)", text)
        raise _KeyProblem(m.group(1) if m else None, text) from None
    if check_model:
        try:
            get_model_config(cfg.model, overrides_from="model_overrides", **cfg.model_overrides)
        except ValueError as e:
            text = str(e)
            if text.startswith("model_overrides of model"):
                raise _KeyProblem("model_overrides", text) from None
            if text.startswith("unknown model"):
                raise _KeyProblem("model", f"model: {text}") from None
            raise  # the model's own file is at fault, and its message names it
    return cfg


def _coerce_fields(obj: Any, prefix: str) -> None:
    """Give scalar fields their declared type. YAML reads ``1e-3`` (no dot) as a string, and a
    learning rate that is a string fails deep inside the optimizer; convert it here or say so.
    Mappings and lists must be mappings and lists."""
    hints = typing.get_type_hints(type(obj))
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping",
             list: "a list"}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        tp = hints[f.name]
        args = typing.get_args(tp)
        if value is None:
            continue
        base = next((a for a in args if a is not type(None)), tp) if args else tp
        if base not in names or dataclasses.is_dataclass(value):
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
            elif base is dict:
                if not isinstance(value, dict):
                    raise ValueError
            elif base is list:
                if not isinstance(value, (list, tuple)):
                    raise ValueError
                value = list(value)
            else:
                if isinstance(value, (dict, list)):
                    raise ValueError
                value = str(value)
        except (TypeError, ValueError, OverflowError):
            raise _KeyProblem(f"{prefix}{f.name}", f"{prefix}{f.name} must be {names[base]}, got {value!r}") from None
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
        raise ValueError(f"{where}: " + "; ".join(problems) if where else "; ".join(problems))


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
