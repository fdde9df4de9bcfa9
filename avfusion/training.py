"""Experiments: typed data + training configs, and the builders that turn them into objects.

An experiment YAML (``configs/<experiment>.yaml``) names a model (``configs/models/``), the data
and the training recipe; ``key=value`` overrides on the command line change single fields::

    name: afew_emonet_video
    model: afew_emonet_video          # a name, a YAML file or a folder written by save_pretrained
    model_overrides: {video: {checkpoint: pretrained/emonet_8.pth}}
    data: {kind: afew_va, root: data/AFEW-VA, folds: 5, split_by: actor}
    train: {epochs: 30, lr: 3.0e-4}

The loop itself lives in :mod:`avfusion.engine`; ``scripts/train.py`` only parses arguments.
"""
from __future__ import annotations

import dataclasses
import math
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from .config import apply_overrides, from_dict, load_yaml, register_nested, to_dict
from .factory import create_model
from .model import AVModel

DATA_KINDS = ("synthetic", "afew_va", "affwild2", "manifest")
PARTS = ("train", "val", "test")


@dataclass
class DataConfig:
    # Which loader reads the records: "synthetic" (a folder written by scripts/make_synthetic.py,
    # read through its manifest.csv), "afew_va", "affwild2" or "manifest" (a CSV, see the README).
    kind: str = "synthetic"
    # The dataset folder (manifest: the CSV file itself).
    root: Optional[str] = None
    # A JSON split (avfusion.data.splits format: train/val/test ids, or folds). Wins over the
    # settings below; the split actually used is always written to <output_dir>/split.json.
    split_file: Optional[str] = None
    # k-fold cross-validation: the number of folds (0 = no folds) and the one this run tests on;
    # `scripts/train.py --folds K` runs every fold.
    folds: int = 0
    fold: int = 0
    # Clips of one actor can look alike: "actor" keeps every clip of a person on one side.
    split_by: str = "clip"
    split_seed: int = 0
    # Fractions of the clips (groups taken whole) held out when no split file is given. With folds,
    # `val_fraction` of the training folds is held out to pick the best epoch (0: keep the last).
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    # Aff-Wild2's public validation set is the usual benchmark: "official" trains on Train_Set
    # and validates on Validation_Set; "random"/"folds" split the Train_Set clips instead.
    affwild2_split: str = "official"
    # Aff-Wild2 frames: "cropped" (the released aligned crops) or "video" (raw video + detector).
    affwild2_frames: str = "cropped"
    # Frames per window (T) and window steps; evaluation covers every frame exactly once when
    # eval_stride == clip_len (None), overlapping predictions are averaged otherwise.
    clip_len: int = 32
    stride: int = 16
    eval_stride: Optional[int] = None
    # Resample every video to this frame rate first (None: native frames).
    target_fps: Optional[float] = None
    # Training windows without any labelled frame teach nothing (Aff-Wild2's long -5 runs).
    drop_unlabelled: bool = True
    # "auto": per record (AFEW-VA landmarks, Aff-Wild2 precropped, "detect" records use yunet);
    # or one backend for every record: "yunet", "landmarks", "precropped", "full".
    face_backend: str = "auto"
    # Fraction of the face size added on each side of the square crop; box smoothing in frames.
    face_margin: float = 0.25
    face_smoothing: int = 5
    # YuNet ONNX file (else AVFUSION_HOME / pretrained/ are searched).
    yunet_model: Optional[str] = None
    # The manifest loader's face mode for rows that do not name one (synthetic faces fill the frame).
    face_mode: str = "detect"
    # Training augmentation (flip, small affine, colour jitter; one draw per clip) and its overrides.
    augment: bool = True
    augment_params: dict = field(default_factory=dict)
    # Convert face crops to HSV before normalisation (one of the seed experiments does).
    hsv: bool = False
    # Folder written by scripts/cache_features.py: train on cached per-frame features instead of
    # decoding video (same model code: AVModel reads video_feats/audio_feats directly).
    features: Optional[str] = None
    batch_size: int = 8
    eval_batch_size: Optional[int] = None
    num_workers: int = 0


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
    # A model name (configs/models/), a model YAML file, or a save_pretrained folder to start from.
    model: str = "tiny"
    # Nested overrides of the model config, e.g. {mode: video} or {fusion: {n_layers: 2}}.
    model_overrides: dict = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # Everything a run writes: checkpoints/, best/, metrics.csv, tensorboard/, split.json.
    output_dir: str = "runs/experiment"


register_nested("ExperimentConfig", "data", DataConfig)
register_nested("ExperimentConfig", "train", TrainConfig)


def load_experiment(path: str | Path | None = None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """An experiment config from a YAML file (or the defaults) plus ``key=value`` overrides."""
    data = load_yaml(path) if path is not None else {}
    apply_overrides(data, list(overrides))
    where = str(path or "experiment config")
    try:
        cfg = from_dict(ExperimentConfig, data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None
    for section in (cfg, cfg.data, cfg.train):
        _coerce_fields(section, where)
    check_experiment(cfg, where)
    return cfg


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
    d, t = cfg.data, cfg.train
    problems = []
    if d.kind not in DATA_KINDS:
        problems.append(f"data.kind {d.kind!r} is not one of {DATA_KINDS}")
    if d.split_by not in ("clip", "actor"):
        problems.append(f"data.split_by must be 'clip' or 'actor', got {d.split_by!r}")
    if d.folds and not 0 <= d.fold < d.folds:
        problems.append(f"data.fold {d.fold} is not in 0..{d.folds - 1}")
    if d.folds == 1 or d.folds < 0:
        problems.append(f"data.folds must be 0 (off) or >= 2, got {d.folds}")
    if d.clip_len < 1 or d.stride < 1 or d.stride > d.clip_len:
        problems.append(f"need 1 <= data.stride <= data.clip_len, got {d.stride} and {d.clip_len}")
    if d.batch_size < 1:
        problems.append(f"data.batch_size must be >= 1, got {d.batch_size}")
    if t.mixed_precision not in ("no", "bf16", "fp16"):
        problems.append(f"train.mixed_precision must be 'no', 'bf16' or 'fp16', got {t.mixed_precision!r}")
    if t.loss not in ("ccc", "emonet"):
        problems.append(f"train.loss must be 'ccc' or 'emonet', got {t.loss!r}")
    if t.grad_accum < 1 or t.epochs < 0:
        problems.append("train.grad_accum must be >= 1 and train.epochs >= 0")
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems))


def experiment_to_dict(cfg: ExperimentConfig) -> dict:
    return to_dict(cfg)


def with_fold(cfg: ExperimentConfig, fold: int, folds: int) -> ExperimentConfig:
    """A copy of ``cfg`` that trains fold ``fold`` of ``folds`` into ``<output_dir>/fold_<i>``."""
    data = dataclasses.replace(cfg.data, folds=folds, fold=fold)
    return dataclasses.replace(cfg, data=data, output_dir=str(Path(cfg.output_dir) / f"fold_{fold}"))


# ------------------------------------------------------------------------------------------------
# Model, optimizer, schedule, loss


def build_model(cfg: ExperimentConfig) -> AVModel:
    """The model the experiment names, with its overrides."""
    return create_model(cfg.model, **cfg.model_overrides)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters in two AdamW groups: decayed and not.

    Decay shrinks weight matrices towards zero, which regularises linear maps; applied to norm
    gains, biases, embeddings or learned tokens it only pulls them towards an arbitrary origin. So
    only the weights of Linear/Conv layers and attention's input projection are decayed;
    everything else (norms, biases, embeddings, modality/time embeddings, placeholder tokens) is not.
    """
    decay_types = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    decay, no_decay = [], []
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            is_matrix = (isinstance(module, decay_types) and name == "weight") or (
                isinstance(module, nn.MultiheadAttention) and name.endswith("proj_weight"))
            (decay if is_matrix else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameter (is every part frozen?)")
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (see :func:`param_groups`)."""
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas))


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> Callable[[int], float]:
    """LR multiplier for step ``s``: linear from ~0 to 1 over ``warmup_steps``, then cosine to ``min_ratio``."""
    total_steps = max(1, int(total_steps))
    warmup_steps = min(max(0, int(warmup_steps)), total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup + cosine decay over ``total_steps`` scheduler steps."""
    warmup = cfg.warmup_steps if cfg.warmup_steps > 0 else int(round(cfg.warmup_ratio * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, warmup, cfg.min_lr_ratio))


def build_loss_fn(cfg: TrainConfig) -> nn.Module:
    """The training loss the config names (see :mod:`avfusion.losses`); returns a dict with ``loss``."""
    from .losses import build_loss

    if cfg.loss == "ccc":
        return build_loss("ccc", weights=tuple(cfg.loss_weights))
    # No private generator: the shake-shake weights come from torch's global RNG, which
    # accelerator.save_state saves and load_state restores, so a resumed run draws the same ones.
    return build_loss("emonet")


# ------------------------------------------------------------------------------------------------
# Data


@dataclass
class Datasets:
    """The datasets of one run and the split they came from."""

    train: Dataset
    val: Optional[Dataset]
    test: Optional[Dataset]
    split: Any  # avfusion.data.splits.Split
    # Number of labelled frames per part: what a whole-split evaluation must score, frame for frame.
    n_labelled: dict[str, int] = field(default_factory=dict)
    collate_fn: Any = None


def load_records(cfg: DataConfig, subset: str = "train") -> list:
    """The :class:`~avfusion.data.records.VideoRecord` list of the configured dataset."""
    if cfg.root is None:
        raise ValueError(f"data.root is not set: give the {cfg.kind} dataset folder (data.root=PATH)")
    root = Path(cfg.root)
    if cfg.kind == "afew_va":
        from .data.afew_va import load_afew_va

        return load_afew_va(root)
    if cfg.kind == "affwild2":
        from .data.affwild2 import load_affwild2

        return load_affwild2(root, subset=subset, frames=cfg.affwild2_frames)
    from .data.manifest import load_manifest

    if cfg.kind == "synthetic":
        manifest = root / "manifest.csv"
        if not manifest.is_file():
            raise FileNotFoundError(
                f"{manifest} not found: data.root must be a folder written by scripts/make_synthetic.py")
        return load_manifest(manifest, face_mode=cfg.face_mode)
    return load_manifest(root, face_mode=cfg.face_mode)


def make_split(cfg: DataConfig, records: Sequence, val_records: Sequence = ()):
    """The train/val/test split the config asks for (see :class:`DataConfig`)."""
    from .data.splits import Split, check_split, kfold_split, load_split, split_records

    if cfg.split_file is not None:
        split = load_split(cfg.split_file)
        everything = list(records) + list(val_records)
        if split.folds is not None:
            if not cfg.folds:
                raise ValueError(f"{cfg.split_file} holds folds: set data.folds={len(split.folds)} and data.fold")
            if cfg.folds != len(split.folds):
                raise ValueError(f"{cfg.split_file} has {len(split.folds)} folds but data.folds={cfg.folds}")
            check_split(split, everything, by_actor=split.by == "actor")
            return split.fold(cfg.fold, val=cfg.val_fraction, records=everything)
        check_split(split, everything, by_actor=split.by == "actor")
        return split
    if cfg.kind == "affwild2" and cfg.affwild2_split == "official":
        if cfg.folds:
            raise ValueError("data.folds with Aff-Wild2 needs data.affwild2_split=folds")
        return Split(train=[r.video_id for r in records], val=[r.video_id for r in val_records],
                     test=[], by="clip", seed=None)
    if cfg.folds:
        return kfold_split(records, cfg.folds, by=cfg.split_by, seed=cfg.split_seed).fold(
            cfg.fold, val=cfg.val_fraction, records=records)
    return split_records(records, val=cfg.val_fraction, test=cfg.test_fraction, by=cfg.split_by,
                         seed=cfg.split_seed)


def _croppers(cfg: DataConfig) -> Any:
    """FaceCropper(s) for ClipDataset: None (per-record defaults) or one per face mode."""
    from .data.faces import FaceCropper, create_detector

    kw = dict(margin=cfg.face_margin, smoothing=cfg.face_smoothing)
    if cfg.face_backend == "auto":
        out = {m: FaceCropper(m, **kw) for m in ("landmarks", "precropped", "full")}
        out["detect"] = _LazyYuNet(cfg.yunet_model, kw)
        return out
    if cfg.face_backend == "yunet":
        return FaceCropper(create_detector("yunet", model_path=cfg.yunet_model), **kw)
    return FaceCropper(cfg.face_backend, **kw)


class _LazyYuNet:
    """A yunet FaceCropper built on first use, so datasets without ``detect`` records never need
    the model file (and workers build their own detector instead of inheriting one)."""

    def __init__(self, model_path: Optional[str], kwargs: dict[str, Any]) -> None:
        self.model_path, self.kwargs, self._cropper = model_path, kwargs, None

    def __getstate__(self) -> dict:
        return {"model_path": self.model_path, "kwargs": self.kwargs, "_cropper": None}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._cropper is None:
            from .data.faces import FaceCropper, create_detector

            self._cropper = FaceCropper(create_detector("yunet", model_path=self.model_path), **self.kwargs)
        return self._cropper(*args, **kwargs)


def build_datasets(cfg: ExperimentConfig, model: Optional[AVModel] = None) -> Datasets:
    """Train / val / test datasets of the experiment.

    Raw clips go through :class:`~avfusion.data.clips.ClipDataset` with the crop size and
    normalisation the model's video encoder asks for (``model.pretrained_cfg``). With
    ``data.features`` the windows come from :class:`~avfusion.data.features.FeatureDataset`
    instead; the split is then made from the raw dataset's records when ``data.root`` is set, else
    from the records the cache carries (ids, labels, actors, source videos), which give the same
    split for the same settings.
    """
    d = cfg.data
    val_records: list = []
    if d.kind == "affwild2" and d.affwild2_split == "official" and d.split_file is None:
        records = load_records(d, "train")
        val_records = load_records(d, "val")
    elif d.features is not None and d.root is None:
        from .data.features import FeatureDataset

        records = FeatureDataset(d.features, d.clip_len).records
    else:
        records = load_records(d)
    split = make_split(d, records, val_records)
    by_id = {r.video_id: r for r in list(records) + list(val_records)}
    parts = {p: [by_id[i] for i in split.ids(p)] for p in PARTS}
    if not parts["train"]:
        raise ValueError(f"{d.root or d.features}: the split leaves no training clip")
    n_labelled = {p: int(sum(int(r.label_mask.sum()) for r in recs)) for p, recs in parts.items()}
    if d.features is not None:
        datasets, collate_fn = _feature_datasets(cfg, parts)
    else:
        datasets, collate_fn = _clip_datasets(cfg, parts, model)
    return Datasets(train=datasets["train"], val=datasets.get("val"), test=datasets.get("test"),
                    split=split, n_labelled=n_labelled, collate_fn=collate_fn)


def _clip_datasets(cfg: ExperimentConfig, parts: dict[str, list], model: Optional[AVModel]):
    from .data.clips import ClipDataset, collate
    from .data.transforms import build_transform

    d = cfg.data
    pcfg = model.pretrained_cfg if model is not None else None
    if pcfg is None and (model is None or model.use_video):
        raise ValueError("raw clips need the model's video encoder preprocessing (pretrained_cfg); "
                         "pass the model, or train on cached features (data.features)")
    with_audio = model is None or model.use_audio
    out = {}
    for part, recs in parts.items():
        if not recs:
            continue
        train = part == "train"
        transform = None
        if pcfg is not None:
            transform = build_transform(pcfg, train=train and d.augment, hsv=d.hsv,
                                        augment=d.augment_params or None)
        out[part] = ClipDataset(
            recs, d.clip_len, stride=d.stride if train else (d.eval_stride or d.clip_len),
            cropper=_croppers(d), transform=transform, with_audio=with_audio,
            target_fps=d.target_fps, drop_unlabelled=train and d.drop_unlabelled)
    return out, collate


def _feature_datasets(cfg: ExperimentConfig, parts: dict[str, list]):
    from .data.features import FeatureDataset, collate_features

    d = cfg.data
    out = {}
    for part, recs in parts.items():
        if not recs:
            continue
        train = part == "train"
        out[part] = FeatureDataset(
            d.features, d.clip_len, stride=d.stride if train else (d.eval_stride or d.clip_len),
            video_ids=[r.video_id for r in recs], target_fps=d.target_fps,
            drop_unlabelled=train and d.drop_unlabelled)
    return out, collate_features


def use_feature_cache(model: AVModel, cache_dir: str | Path) -> None:
    """Make ``model`` fit a feature cache: the widths must agree, and the model's encoders get the
    very weights that made the features (``encoders.safetensors``), so the exported model turns
    raw video into the inputs it was trained on.

    A model using only some of the cache's encoders (video-only training on an audio-visual cache)
    loads just those, from the file whose hash the manifest records.
    """
    from safetensors import safe_open

    from .caching import encoder_description, encoder_modules, load_cache_encoders
    from .data.features import ENCODERS_NAME, manifest_path, read_manifest

    manifest = read_manifest(cache_dir)
    where = manifest_path(cache_dir)
    for mod, used, enc, enc_cfg in (("video", model.use_video, model.video_encoder, model.cfg.video),
                                    ("audio", model.use_audio, model.audio_encoder, model.cfg.audio)):
        if not used:
            continue
        cached = manifest.get(f"{mod}_dim")
        if cached is None:
            raise ValueError(f"{where}: the model (mode {model.cfg.mode!r}) needs {mod} features, "
                             "the cache has none")
        width = int(enc.num_features) if enc is not None else int(enc_cfg.dim)
        if width != int(cached):
            raise ValueError(f"{where}: cached {mod} features are {cached} wide, the model expects {width}")
    mods = encoder_modules(model)
    # Weight-free encoders (HOG, log-mel) have nothing to load and no weights to hash: their
    # configuration is what must match the cache's.
    described = encoder_description(model)
    for name in [n for n, enc in mods.items() if not enc.state_dict()]:
        mod = name.split("_")[0]
        cached = (manifest.get("encoders") or {}).get(mod)
        if cached is not None and cached != described.get(mod):
            keys = sorted(k for k in set(cached) | set(described[mod]) if cached.get(k) != described[mod].get(k))
            raise ValueError(f"{where}: the cache's {mod} encoder was configured differently "
                             f"(differs in {keys}); re-cache with this model or use the cache's settings")
        del mods[name]
    if not mods:
        return  # nothing with weights: "features" or weight-free encoders
    path = Path(cache_dir) / ENCODERS_NAME
    if not path.is_file():
        warnings.warn(f"{path} not found: cannot give the model the encoder weights that made the "
                      "features; the exported model's encoders may not reproduce them", stacklevel=2)
        return
    with safe_open(str(path), framework="pt") as f:
        names = {k.split(".", 1)[0] for k in f.keys()}
        file_hash = (f.metadata() or {}).get("encoder_hash")
    if names == set(mods):
        load_cache_encoders(model, cache_dir)  # loads strictly and checks the hash of the result
        return
    if file_hash != manifest.get("encoder_hash"):
        raise ValueError(f"{path}: its encoder hash {file_hash} is not the manifest's "
                         f"{manifest.get('encoder_hash')}; the cache folder is inconsistent")
    missing = sorted(set(mods) - names)
    if missing:
        raise ValueError(f"{path}: has no weights for {missing}")
    load_cache_encoders(model, cache_dir, only=set(mods))


__all__ = [
    "DataConfig", "TrainConfig", "ExperimentConfig", "Datasets", "load_experiment", "check_experiment",
    "build_model", "build_optimizer", "build_scheduler", "build_loss_fn", "param_groups", "warmup_cosine",
    "build_datasets", "use_feature_cache", "load_records", "make_split", "with_fold",
]
