"""Data policy: which loader, which split, which cropper and which dataset a :class:`DataConfig` means.

The experiment config's ``data:`` section is a :class:`DataConfig`; :func:`build_datasets` turns it
into train / val / test datasets (raw clips decoded from video, or cached per-frame features).
Training, evaluation and caching all ask this module, so they read the same records and splits.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from torch.utils.data import Dataset

from ..config import ServingSpec
from .splits import PARTS

DATA_KINDS = ("synthetic", "afew_va", "affwild2", "manifest")


@dataclass
class DataConfig:
    # Which loader reads the records: "synthetic" (a folder written by `avfusion synth`,
    # read through its manifest.csv), "afew_va", "affwild2" or "manifest" (a CSV, see the README).
    kind: str = "synthetic"
    # The dataset folder (manifest: the CSV file itself).
    root: Optional[str] = None
    # A JSON split (avfusion.data.splits format: train/val/test ids, or folds). Wins over the
    # settings below; the split actually used is always written to <output_dir>/split.json.
    split_file: Optional[str] = None
    # k-fold cross-validation: the number of folds (0 = no folds) and the one this run tests on;
    # `avfusion train --folds K` runs every fold.
    folds: int = 0
    fold: int = 0
    # Clips of one actor can look alike: "actor" keeps every clip of a person on one side.
    split_by: str = "clip"
    split_seed: int = 0
    # Fractions of the clips (groups taken whole) held out when no split file is given. With folds,
    # `val_fraction` of the training folds is held out to pick the best epoch (0: keep the last).
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    # Whole groups rarely meet the fractions exactly: a part off by more than 5 points of the clips
    # gives a warning, or with strict_split (`--strict-split`) an error.
    strict_split: bool = False
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
    # None: the model's serving spec (an architecture's default, or what an exported model was
    # trained with); a value here is what training records in the model it exports.
    face_margin: Optional[float] = None
    face_smoothing: Optional[int] = None
    # YuNet ONNX file (else AVFUSION_HOME / pretrained/ are searched).
    yunet_model: Optional[str] = None
    # The manifest loader's face mode for rows that do not name one (synthetic faces fill the frame).
    face_mode: str = "detect"
    # Training augmentation (flip, small affine, colour jitter; one draw per clip) and its overrides.
    augment: bool = True
    augment_params: dict = field(default_factory=dict)
    # Convert face crops to HSV before normalisation (one of the seed experiments does); None:
    # the model's serving spec, as for face_margin.
    hsv: Optional[bool] = None
    # Speech detection for models that listen: "vad" (the audio of frames without speech is masked,
    # Silero VAD's probabilities through the rule of the serving spec), "off" (the whole track
    # counts); None: the model's serving spec ("vad" for an architecture). Training records it in
    # the model it exports, so predict masks the same frames.
    speech: Optional[str] = None
    # Folder written by `avfusion cache`: train on cached per-frame features instead of
    # decoding video (same model code: AVModel reads video_feats/audio_feats directly).
    features: Optional[str] = None
    batch_size: int = 8
    eval_batch_size: Optional[int] = None
    num_workers: int = 0


def used_settings(d: DataConfig, training: bool = False) -> dict[str, Any]:
    """The data settings a run with ``d`` actually uses, for the records it writes (metrics.json,
    a cache manifest): fields that do not apply to the dataset kind, to the way the split is made
    or to the face backend are left out, so an Aff-Wild2 run does not claim a synthetic-data
    ``face_mode`` or an ``actor`` split it never made."""
    import dataclasses

    out = dataclasses.asdict(d)
    drop: set[str] = {"strict_split"}  # it refuses a split, it never changes one
    if d.kind != "affwild2":
        drop |= {"affwild2_split", "affwild2_frames"}
    if d.kind not in ("synthetic", "manifest"):
        drop.add("face_mode")  # the manifest loader's default for rows that name none
    official = d.kind == "affwild2" and d.affwild2_split == "official"
    if d.split_file is not None or official:
        drop |= {"split_by", "split_seed", "test_fraction"}  # the file (or the official sets) decide
        if not d.folds:
            drop |= {"val_fraction", "folds", "fold"}
    elif not d.folds:
        drop |= {"folds", "fold"}
    if d.split_file is None:
        drop.add("split_file")
    if d.features is not None:  # cached features: no decoding, cropping or augmentation here
        drop |= {"face_backend", "face_margin", "face_smoothing", "yunet_model", "augment", "augment_params",
                 "hsv", "num_workers"}
    else:
        drop.add("features")
        if d.face_backend not in ("yunet", "auto"):
            drop.add("yunet_model")
    if not training:
        drop |= {"stride", "augment", "augment_params", "drop_unlabelled", "batch_size"}
    if d.target_fps is None:
        drop.add("target_fps")
    return {k: v for k, v in out.items() if k not in drop}


def check_data_config(d: DataConfig) -> list[str]:
    """Problems of a data config that would otherwise fail late, as phrases naming the key."""
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
    if d.eval_batch_size is not None and d.eval_batch_size < 1:
        problems.append(f"data.eval_batch_size must be >= 1, got {d.eval_batch_size}")
    if d.num_workers < 0:
        problems.append(f"data.num_workers must be >= 0, got {d.num_workers}")
    if not (0 <= d.val_fraction < 1 and 0 <= d.test_fraction < 1 and d.val_fraction + d.test_fraction < 1):
        problems.append(f"data.val_fraction ({d.val_fraction}) and data.test_fraction ({d.test_fraction}) must be "
                        "fractions in [0, 1) summing to less than 1")
    if d.eval_stride is not None and not 1 <= d.eval_stride <= d.clip_len:
        problems.append(f"data.eval_stride must be between 1 and data.clip_len ({d.clip_len}), got {d.eval_stride}")
    if d.target_fps is not None and not d.target_fps > 0:
        problems.append(f"data.target_fps must be > 0, got {d.target_fps}")
    if d.face_backend not in ("auto", "yunet", "landmarks", "precropped", "full"):
        problems.append(f"data.face_backend must be one of auto, yunet, landmarks, precropped, full, "
                        f"got {d.face_backend!r}")
    if d.yunet_model is not None and not Path(d.yunet_model).is_file():
        problems.append(f"data.yunet_model {d.yunet_model}: file not found")
    return problems


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
        from .afew_va import load_afew_va

        return load_afew_va(root)
    if cfg.kind == "affwild2":
        from .affwild2 import load_affwild2

        return load_affwild2(root, subset=subset, frames=cfg.affwild2_frames)
    from .manifest import load_manifest

    if cfg.kind == "synthetic":
        manifest = root / "manifest.csv"
        if not manifest.is_file():
            raise FileNotFoundError(
                f"{manifest} not found: data.root must be a folder written by `avfusion synth`")
        return load_manifest(manifest, face_mode=cfg.face_mode)
    return load_manifest(root, face_mode=cfg.face_mode)


def make_split(cfg: DataConfig, records: Sequence, val_records: Sequence = ()):
    """The train/val/test split the config asks for (see :class:`DataConfig`)."""
    from .splits import Split, check_split, kfold_split, load_split, split_records

    if cfg.split_file is not None:
        split = load_split(cfg.split_file)
        if split.by == "clip" and cfg.split_by == "actor":
            raise ValueError(
                f"{cfg.split_file} was made by clip (\"by\": \"clip\") but the config says "
                "data.split_by=actor: an actor may be on both sides. Make the split by actor, or set "
                "data.split_by=clip to accept it")
        everything = list(records) + list(val_records)
        if split.folds is not None:
            if not cfg.folds:
                raise ValueError(f"{cfg.split_file} holds folds: set data.folds={len(split.folds)} and data.fold")
            if cfg.folds != len(split.folds):
                raise ValueError(f"{cfg.split_file} has {len(split.folds)} folds but data.folds={cfg.folds}")
            check_split(split, everything, by_actor="actor" in (split.by, cfg.split_by))
            return split.fold(cfg.fold, val=cfg.val_fraction, records=everything)
        check_split(split, everything, by_actor="actor" in (split.by, cfg.split_by))
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
                         seed=cfg.split_seed, strict=cfg.strict_split)


def serving_for(d: DataConfig, model: Optional[Any], training: bool = False) -> ServingSpec:
    """The serving spec data is prepared with for ``model``: an exported model's own (it is served
    what it was trained on, whatever the data config says); for an architecture (a name or a YAML
    file), its spec with the data config's window, crop and colour settings applied, which training
    then records in the model it exports. With ``data.features`` the cache's own crop and colour
    settings apply (they made the features). ``training``: the data config decides for any model
    (a fine-tuned exported model is then served what it was fine-tuned on)."""
    base = model.serving if model is not None else ServingSpec()
    if getattr(model, "serving_locked", False) and not training:
        return base
    s = dataclasses.replace(base, clip_len=int(d.clip_len))
    prep: dict[str, Any] = {}
    if d.features is not None:
        from .features import read_manifest

        prep = dict(read_manifest(d.features).get("preprocessing") or {})
    margin = prep.get("face_margin", d.face_margin)
    smoothing = prep.get("face_smoothing", d.face_smoothing)
    hsv = prep.get("hsv", d.hsv)
    if margin is not None:
        s.face_margin = float(margin)
    if smoothing is not None:
        s.face_smoothing = int(smoothing)
    if hsv is not None:
        s.colour = "hsv" if hsv else "rgb"
    if d.speech is not None:
        from ..config import speech_mode

        try:
            s.speech = speech_mode(d.speech)
        except ValueError:
            raise ValueError(f"data.speech must be vad or off, got {d.speech!r}") from None
    return s


def _croppers(cfg: DataConfig, spec: ServingSpec) -> Any:
    """FaceCropper(s) for ClipDataset, one per face mode (``auto``) or one for every record."""
    from .faces import build_cropper

    kw = dict(margin=spec.face_margin, smoothing=spec.face_smoothing, output_size=spec.crop_size or 256)
    if cfg.face_backend == "auto":
        out = {m: build_cropper(m, **kw) for m in ("landmarks", "precropped", "full")}
        out["detect"] = _LazyYuNet(cfg.yunet_model, kw)
        return out
    return build_cropper(cfg.face_backend, yunet_model=cfg.yunet_model, **kw)


def record_cropper(cfg: DataConfig, face_mode: str, spec: ServingSpec) -> Any:
    """The :class:`~avfusion.data.faces.FaceCropper` the data config gives records of ``face_mode``
    (what :class:`~avfusion.data.clips.ClipDataset` uses for them), cropping as ``spec`` says."""
    croppers = _croppers(cfg, spec)
    if isinstance(croppers, dict):
        if face_mode not in croppers:
            raise ValueError(f"no face cropper for face_mode {face_mode!r} with data.face_backend={cfg.face_backend!r}")
        c = croppers[face_mode]
        return c.get() if isinstance(c, _LazyYuNet) else c
    return croppers


class _LazyYuNet:
    """A yunet FaceCropper built on first use, so datasets without ``detect`` records never need
    the model file (and workers build their own detector instead of inheriting one)."""

    def __init__(self, model_path: Optional[str], kwargs: dict[str, Any]) -> None:
        self.model_path, self.kwargs, self._cropper = model_path, kwargs, None

    def __getstate__(self) -> dict:
        return {"model_path": self.model_path, "kwargs": self.kwargs, "_cropper": None}

    def get(self) -> Any:
        if self._cropper is None:
            from .faces import build_cropper

            self._cropper = build_cropper("yunet", yunet_model=self.model_path, **self.kwargs)
        return self._cropper

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.get()(*args, **kwargs)


def build_datasets(d: DataConfig, model: Optional[Any] = None) -> Datasets:
    """Train / val / test datasets of the experiment.

    Raw clips go through :class:`~avfusion.data.clips.ClipDataset` with the crop size and
    normalisation the model's video encoder asks for (``model.pretrained_cfg``). With
    ``data.features`` the windows come from :class:`~avfusion.data.features.FeatureDataset`
    instead; the split is then made from the raw dataset's records when ``data.root`` is set, else
    from the records the cache carries (ids, labels, actors, source videos), which give the same
    split for the same settings.
    """
    records, val_records = dataset_records(d)
    split = make_split(d, records, val_records)
    by_id = {r.video_id: r for r in list(records) + list(val_records)}
    parts = {p: [by_id[i] for i in split.ids(p)] for p in PARTS}
    if not parts["train"]:
        raise ValueError(f"{d.root or d.features}: the split leaves no training clip")
    n_labelled = {p: int(sum(int(r.label_mask.sum()) for r in recs)) for p, recs in parts.items()}
    if d.features is not None:
        datasets, collate_fn = feature_datasets(d, parts, model)
    else:
        datasets, collate_fn = clip_datasets(d, parts, model)
    return Datasets(train=datasets["train"], val=datasets.get("val"), test=datasets.get("test"),
                    split=split, n_labelled=n_labelled, collate_fn=collate_fn)


def clip_datasets(d: DataConfig, parts: dict[str, list], model: Optional[Any]):
    """Raw-clip datasets (one per part) with the crop size and normalisation the model's video
    encoder asks for (``model.pretrained_cfg``); the evaluation parts get non-overlapping windows
    unless ``eval_stride`` says otherwise. Returns ``(datasets, collate_fn)``."""
    from .clips import ClipDataset, collate
    from .transforms import serving_transform

    pcfg = model.pretrained_cfg if model is not None else None
    if pcfg is None and (model is None or model.use_video):
        raise ValueError("raw clips need the model's video encoder preprocessing (pretrained_cfg); "
                         "pass the model, or train on cached features (data.features)")
    from .speech import serving_rule

    spec = serving_for(d, model)
    with_audio = model is None or model.use_audio
    rule = serving_rule(spec) if with_audio else None
    out = {}
    for part, recs in parts.items():
        if not recs:
            continue
        train = part == "train"
        transform = None
        if pcfg is not None:
            transform = serving_transform(spec, train=train and d.augment, augment=d.augment_params or None)
        out[part] = ClipDataset(
            recs, d.clip_len, stride=d.stride if train else (d.eval_stride or d.clip_len),
            cropper=_croppers(d, spec), transform=transform, with_audio=with_audio,
            target_fps=d.target_fps, drop_unlabelled=train and d.drop_unlabelled, sample_rate=spec.sample_rate,
            speech=rule)
    return out, collate


def feature_datasets(d: DataConfig, parts: dict[str, list], model: Optional[Any] = None):
    """Cached-feature datasets (one per part) and their collate function; models that listen get
    the speech rule of their serving spec applied to the cache's speech probabilities."""
    from .features import FeatureDataset, collate_features
    from .speech import serving_rule

    rule = serving_rule(serving_for(d, model)) if model is None or model.use_audio else None
    out = {}
    for part, recs in parts.items():
        if not recs:
            continue
        train = part == "train"
        out[part] = FeatureDataset(
            d.features, d.clip_len, stride=d.stride if train else (d.eval_stride or d.clip_len),
            video_ids=[r.video_id for r in recs], target_fps=d.target_fps,
            drop_unlabelled=train and d.drop_unlabelled, speech=rule)
    return out, collate_features


def dataset_records(cfg: DataConfig) -> tuple[list, list]:
    """``(records, val_records)``: Aff-Wild2's official split reads Train_Set and Validation_Set
    apart; every other dataset is one list (``val_records`` empty)."""
    if cfg.kind == "affwild2" and cfg.affwild2_split == "official" and cfg.split_file is None:
        return load_records(cfg, "train"), load_records(cfg, "val")
    if cfg.features is not None and cfg.root is None:  # the records a feature cache carries
        from .features import FeatureDataset

        return list(FeatureDataset(cfg.features, cfg.clip_len).records), []
    return load_records(cfg), []


def select_records(cfg: DataConfig, part: Optional[str]) -> tuple[list, str]:
    """The records of one part of the configured split (``all``: every record; None: ``test``, or
    ``val`` when the split has no test part). Returns ``(records, part)``."""
    records, val_records = dataset_records(cfg)
    everything = list(records) + list(val_records)
    if part == "all":
        return everything, part
    made = cfg.split_file is None and not (cfg.kind == "affwild2" and cfg.affwild2_split == "official")
    try:
        split = make_split(cfg, records, val_records)
    except ValueError as e:
        if not made or "nothing left to train on" not in str(e):
            raise
        raise ValueError(f"part {part or 'test'}: no split file given, and {len(everything)} clip(s) cannot be split "
                         f"into train/val/test by data.val_fraction={cfg.val_fraction}, "
                         f"data.test_fraction={cfg.test_fraction}; give --split-file (or --config of the "
                         "experiment), or score every clip with --part all") from None
    if part is None:
        part = "test" if split.ids("test") else "val"
    ids = split.ids(part)
    if not ids:
        why = ""
        if made and not cfg.folds:
            why = (f" (no split file given: the split made by data.val_fraction={cfg.val_fraction}, "
                   f"data.test_fraction={cfg.test_fraction} has no {part} part)")
        raise ValueError(f"part {part}: the split has no {part} clips{why}; give --split-file (or --config of "
                         f"the experiment), or choose a part among {[q for q in PARTS if split.ids(q)] + ['all']}")
    by_id = {r.video_id: r for r in everything}
    return [by_id[i] for i in ids], part


__all__ = ["DataConfig", "DATA_KINDS", "serving_for", "record_cropper", "Datasets", "check_data_config", "load_records", "make_split",
           "build_datasets", "clip_datasets", "feature_datasets", "dataset_records", "select_records"]
