"""Run a model's frozen encoders over a dataset once and keep the per-frame features.

Encoding faces (EmoNet, ViT) and audio (wav2vec2) dominates the cost of training a fusion model;
the encoders are frozen, so their outputs can be computed once per video and reused for every epoch
and experiment. :func:`cache_dataset` does that:

- Inputs come from an evaluation-mode :class:`~avfusion.data.clips.ClipDataset` (``stride ==
  clip_len``: every frame exactly once, no augmentation), so faces are cropped, normalised and the
  audio cut exactly as in raw-clip training. The window (``clip_len``) bounds memory; audio features
  see the context of their window, as they do in raw-clip training with the same windows.
- One file per video (:mod:`avfusion.data.features`), written atomically: a file that exists is
  complete. A rerun skips existing files, so a killed run resumes where it stopped.
- ``manifest.json`` pins the encoders: their configuration and :func:`encoder_hash`, the sha256 of
  their weights. Adding to a cache made by other weights (or another window, dtype, preprocessing)
  is refused, because the files would silently mix two feature spaces.
- Sharding: process ``i`` of ``n`` takes videos ``i::n`` (``accelerate launch`` sets ``i``, ``n``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .weights import load_strict, read_weights
from .data.features import (
    CACHE_FORMAT,
    CACHE_VERSION,
    ENCODERS_NAME,
    VideoFeatures,
    atomic_write_bytes,
    feature_file_problem,
    manifest_path,
    read_manifest,
    remove_stale_temporaries,
    save_video_features,
    video_filename,
    write_manifest,
)

PathLike = Union[str, Path]

DTYPES = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}


# ------------------------------------------------------------------------------------------------
# What made the features


def encoder_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The model's encoders by attribute name (``video_encoder``, ``audio_encoder``), when present."""
    out = {}
    for name in ("video_encoder", "audio_encoder"):
        enc = getattr(model, name, None)
        if enc is not None:
            out[name] = enc
    return out


def encoder_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every encoder tensor (parameters and buffers), keys prefixed with the encoder's name."""
    state = {}
    for name, enc in encoder_modules(model).items():
        for k, v in enc.state_dict().items():
            state[f"{name}.{k}"] = v
    return state


def encoder_hash(model: nn.Module, names: Optional[Sequence[str]] = None) -> str:
    """sha256 of the encoders' weights: key, dtype, shape and raw bytes of every tensor, keys sorted.

    Two models give the same hash exactly when their encoders hold bit-identical tensors under the
    same names, whatever file or seed they came from. ``names`` restricts the hash to some encoders
    (``["video_encoder"]``).
    """
    h = hashlib.sha256()
    state = encoder_state_dict(model)
    if names is not None:
        state = {k: v for k, v in state.items() if k.split(".", 1)[0] in names}
    for k in sorted(state):
        t = state[k].detach().to("cpu").contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def encoder_description(model: nn.Module) -> dict[str, Any]:
    """The encoder part of the model config (weight sources dropped: the hash identifies weights)."""
    cfg = model.cfg
    out: dict[str, Any] = {"mode": cfg.mode}
    if getattr(model, "use_video", False) and cfg.video is not None:
        v = dataclasses.asdict(cfg.video)
        out["video_checkpoint"] = v.pop("checkpoint")
        out["video"] = v
    if getattr(model, "use_audio", False) and cfg.audio is not None:
        a = dataclasses.asdict(cfg.audio)
        out["audio_path"] = a.pop("path")
        out["audio"] = a
    return out


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def check_cacheable(model: nn.Module) -> None:
    """Refuse encoders that train (their cached outputs would go stale after one step); warn about
    trainable parts that caching freezes (wav2vec2's ``layer: weighted`` sum)."""
    for mod in ("video", "audio"):
        if getattr(model, f"use_{mod}", False) and getattr(model, f"{mod}_encoder", None) is None:
            raise ValueError(f"the model's {mod} encoder is 'features' (it reads cached features): "
                             "caching needs a model with the real encoders")
    for name, enc in encoder_modules(model).items():
        trainable = [k for k, p in enc.named_parameters() if p.requires_grad]
        if not trainable:
            continue
        if trainable == ["layer_weights"]:
            warnings.warn(
                f"{name}: the layer weights of 'layer: weighted' are trainable; the cache stores the "
                "sum with their current values, so training on it cannot learn them (use a fixed "
                "layer, or train on raw clips to learn the weighting)", stacklevel=3)
            continue
        raise ValueError(
            f"{name} is not frozen ({len(trainable)} trainable tensors, e.g. {trainable[:3]}): cached "
            "features are only valid for frozen encoders; set frozen: true in the model config")


def build_manifest(
    model: nn.Module,
    video_ids: Sequence[str],
    window: int,
    dtype: torch.dtype,
    dataset: Optional[Mapping[str, Any]] = None,
    preprocessing: Optional[Mapping[str, Any]] = None,
) -> dict[str, Any]:
    """The manifest of a cache of ``model``'s encoder features for ``video_ids``.

    ``preprocessing`` (face crop settings, colour space, ...) joins the video encoder's
    ``pretrained_cfg``; both must match for new videos to join an existing cache. ``dataset`` is
    informational (a cache may gather videos of several datasets).
    """
    from .version import __version__

    use_video, use_audio = bool(model.use_video), bool(model.use_audio)
    return {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "avfusion_version": __version__,
        "encoder_hash": encoder_hash(model),
        # Per encoder too, so that a model using one of them (video-only on an audio-visual cache)
        # can be checked against the cache.
        "encoder_hashes": {name: encoder_hash(model, [name]) for name in encoder_modules(model)},
        "encoders": encoder_description(model),
        "video_dim": int(model.video_encoder.num_features) if use_video else None,
        "audio_dim": int(model.audio_encoder.num_features) if use_audio else None,
        "dtype": str(dtype).replace("torch.", ""),
        "window": int(window),
        "preprocessing": _jsonable({"transform": getattr(model, "pretrained_cfg", None) if use_video else None,
                                    **dict(preprocessing or {})}),
        "dataset": _jsonable(dict(dataset or {})),
        # Models with audio: per-frame speech probabilities beside the features (the speech rule is
        # applied when the cache is read, so it can change without caching again).
        "speech": _speech_detector() if use_audio else None,
        "videos": {str(v): video_filename(str(v)) for v in video_ids},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# Manifest entries that must agree before new files join an existing cache.
_MUST_MATCH = ("encoders", "video_dim", "audio_dim", "dtype", "window", "preprocessing", "speech")


def _speech_detector() -> dict[str, Any]:
    """What computed the cache's speech probabilities (avfusion.data.speech)."""
    from importlib import metadata

    from .data.speech import CHUNK

    try:
        version = metadata.version("silero-vad")
    except metadata.PackageNotFoundError:
        version = None
    return {"detector": "silero-vad", "version": version, "chunk_samples": CHUNK,
            "per_frame": "mean over the 32 ms chunks the frame overlaps"}


def merge_manifest(old: Mapping[str, Any], new: Mapping[str, Any], where: PathLike) -> dict[str, Any]:
    """The manifest after adding ``new``'s videos to the cache whose manifest is ``old``.

    Raises ValueError, naming what differs, when the features would not be interchangeable.
    """
    if old.get("encoder_hash") != new["encoder_hash"]:
        raise ValueError(
            f"{where}: this cache was made by encoders with weight hash {old.get('encoder_hash')}, but "
            f"the model given now hashes to {new['encoder_hash']}. Features of different weights must "
            "not be mixed: use another output folder, delete this cache, or load the same weights "
            f"(the cache was made with video checkpoint {old.get('encoders', {}).get('video_checkpoint')!r}"
            f", audio {old.get('encoders', {}).get('audio_path')!r}).")
    diffs = [k for k in _MUST_MATCH if old.get(k) != new.get(k)]
    if diffs:
        detail = "; ".join(f"{k}: cache has {old.get(k)!r}, now {new.get(k)!r}" for k in diffs)
        raise ValueError(f"{where}: the cache was made with other settings ({detail}); use another "
                         "output folder or the same settings")
    old_data, new_data = old.get("dataset") or {}, new.get("dataset") or {}
    if old_data and new_data and old_data != new_data:
        keys = sorted(k for k in set(old_data) | set(new_data) if old_data.get(k) != new_data.get(k))
        warnings.warn(f"{where}: adding videos from a different dataset configuration (differs in "
                      f"{keys}); the manifest keeps the first one", stacklevel=3)
    merged = dict(old)
    videos = dict(old.get("videos", {}))
    for vid, name in new["videos"].items():
        if videos.get(vid, name) != name:
            raise ValueError(f"{where}: video {vid!r} is stored as {videos[vid]!r}, expected {name!r}")
        videos[vid] = name
    merged["videos"] = dict(sorted(videos.items()))
    return merged


def save_encoders(model: nn.Module, cache_dir: PathLike, digest: str) -> Path:
    """Write the encoder weights beside the features (so a model trained on the cache can be
    exported with the very encoders that made its inputs)."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in encoder_state_dict(model).items()}
    path = Path(cache_dir) / ENCODERS_NAME
    atomic_write_bytes(path, save(state, metadata={"format": CACHE_FORMAT, "encoder_hash": digest}))
    return path


def load_cache_encoders(model: nn.Module, cache_dir: PathLike, only: Optional[set[str]] = None) -> nn.Module:
    """Load the cache's encoder weights into ``model``'s encoders (strictly) and check the hash.

    Use it when training on cached features, before export: the saved model then turns raw video
    into exactly the features it was trained on. ``only``: load just these encoder modules (a
    video-only model reading an audio-visual cache); the caller then checks the file's own hash,
    since the model's encoders alone cannot reproduce the manifest's.
    """
    cache_dir = Path(cache_dir)
    manifest = read_manifest(cache_dir)
    path = cache_dir / ENCODERS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the cache was written without its encoder weights "
                                "(avfusion cache --no-save-encoders)")
    state = read_weights(path, "cache encoder weight")
    mods = {n: m for n, m in encoder_modules(model).items() if only is None or n in only}
    for name, enc in mods.items():
        part = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
        try:
            load_strict(enc, part, family=f"{path} ({name})")
        except ValueError as e:
            raise ValueError(f"{path}: {name} weights do not fit the model: {e}") from None
    if only is not None:
        return model
    extra = sorted({k.split(".", 1)[0] for k in state} - set(mods))
    if extra:
        raise ValueError(f"{path}: holds weights for {extra}, which the model does not have")
    got = encoder_hash(model)
    if got != manifest["encoder_hash"]:
        raise ValueError(f"{path}: after loading, the encoders hash to {got}, the manifest says "
                         f"{manifest['encoder_hash']}; the model's encoders differ from the cache's")
    return model


def check_model_matches_cache(model: nn.Module, cache_dir: PathLike) -> None:
    """Refuse a model whose encoders (hash) or feature widths differ from those of the cache."""
    manifest = read_manifest(cache_dir)
    where = manifest_path(cache_dir)
    if model.use_video and manifest.get("video_dim") is None:
        raise ValueError(f"{where}: the model needs video features but the cache has none")
    if model.use_audio and manifest.get("audio_dim") is None:
        raise ValueError(f"{where}: the model needs audio features but the cache has none")
    _check_fits_cache(model, manifest, where)
    cached = manifest.get("encoder_hashes") or {}
    for name in encoder_modules(model):
        got, want = encoder_hash(model, [name]), cached.get(name)
        if got != want:
            raise ValueError(
                f"{where}: the model's {name} hashes to {got}, the cache's to {want}; load the "
                "cache's encoders (avfusion.caching.load_cache_encoders) or re-cache with this model")


# ------------------------------------------------------------------------------------------------
# Running the encoders


@dataclasses.dataclass
class CacheResult:
    """What one process did: videos written, skipped (already cached), and the shard it owned."""

    written: list[str]
    skipped: list[str]
    shard: list[str]
    seconds: float
    frames: int

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("nan")


def _video_batches(dataset: Any, records: set[int], batch_size: int) -> dict[int, list[list[int]]]:
    """Window indices of each record, in order, in batches: a batch never spans two videos, so a
    video's features do not depend on which other videos a run skips (bit-identical resumes)."""
    idx: dict[int, list[int]] = {r: [] for r in records}
    for i, w in enumerate(dataset.windows):
        if w.record in idx:
            idx[w.record].append(i)
    return {r: [v[i:i + batch_size] for i in range(0, len(v), batch_size)] for r, v in idx.items()}


@torch.no_grad()
def encode_batch(model: nn.Module, batch: Mapping[str, Any], device: torch.device | str) -> dict[str, torch.Tensor]:
    """Encoder features of one raw-clip batch: ``video`` ``(B, T, Cv)`` and/or ``audio`` ``(B, T, Ca)``.

    Video frames without a face get zeros (as :meth:`AVModel.encode_video` gives them). Audio rows
    are encoded in groups of equal length, so no row is ever zero-padded: padding changes what
    group-normalised wav2vec2 models compute.
    """
    out = {}
    if model.use_video:
        valid = (batch["face_mask"] & (batch["frame_indices"] >= 0)).to(device)
        out["video"] = model.encode_video(batch["video"].to(device), valid).float().cpu()
    if model.use_audio:
        lengths = batch["audio_lengths"]
        feats: list[Optional[torch.Tensor]] = [None] * len(lengths)
        for n in sorted(set(lengths.tolist())):
            rows = (lengths == n).nonzero().squeeze(1)
            f = model.encode_audio(batch["audio"][rows, :n].to(device), batch["frame_times"][rows].to(device))
            for j, r in enumerate(rows.tolist()):
                feats[r] = f[j].float().cpu()
        out["audio"] = torch.stack(feats)  # type: ignore[arg-type]
    return out


def cache_dataset(
    model: nn.Module,
    dataset: Any,
    out_dir: PathLike,
    *,
    dtype: torch.dtype = torch.float16,
    batch_size: int = 4,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    process_index: int = 0,
    num_processes: int = 1,
    barrier: Optional[Callable[[], None]] = None,
    dataset_info: Optional[Mapping[str, Any]] = None,
    preprocessing: Optional[Mapping[str, Any]] = None,
    save_encoder_weights: bool = True,
    progress: bool = True,
) -> CacheResult:
    """Cache ``model``'s encoder features for every video of ``dataset`` under ``out_dir``.

    Args:
        model: an :class:`~avfusion.model.AVModel` whose encoders are frozen.
        dataset: an evaluation :class:`~avfusion.data.clips.ClipDataset` (``stride == clip_len``,
            native frame rate, no augmentation) built with the model's preprocessing.
        dtype: storage dtype of the features (computed in float32).
        process_index, num_processes: this process takes videos ``process_index::num_processes``.
        barrier: called after the main process has prepared the folder and at the end
            (``accelerator.wait_for_everyone``); needed with several processes.
        dataset_info: what the videos are (kind, root, ...), recorded in the manifest.
        preprocessing: face-crop and colour settings that shape the features (must match when
            adding to an existing cache).
        save_encoder_weights: also write ``encoders.safetensors`` (see :func:`load_cache_encoders`).
        progress: show a progress bar (pass ``accelerator.is_main_process``).
    """
    from torch.utils.data import DataLoader

    from .data.clips import collate

    t0 = time.time()
    out = Path(out_dir)
    main = process_index == 0
    check_cacheable(model)
    if getattr(dataset, "target_fps", None) is not None:
        raise ValueError("cache from a ClipDataset at the native frame rate (target_fps=None); "
                         "FeatureDataset resamples afterwards")
    records = dataset.records
    ids = [r.video_id for r in records]
    manifest = build_manifest(model, ids, dataset.clip_len, dtype, dataset_info, preprocessing)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        if manifest_path(out).is_file():
            old = read_manifest(out)
            if any((out / name).is_file() for name in (old.get("videos") or {}).values()):
                manifest = merge_manifest(old, manifest, manifest_path(out))
            else:
                # A run that failed before writing any feature file: nothing to keep consistent
                # with, so a retry with corrected settings starts the cache afresh.
                warnings.warn(f"{manifest_path(out)}: no feature file was written under this manifest "
                              "(an earlier run failed); replacing it", stacklevel=2)
        write_manifest(out, manifest)
        if save_encoder_weights:
            save_encoders(model, out, manifest["encoder_hash"])
    if barrier is not None:
        barrier()
    if not main:
        # Checks again in every process: a worker whose model differs must not write either.
        merge_manifest(read_manifest(out), manifest, manifest_path(out))

    order = sorted(range(len(records)), key=lambda r: ids[r])
    shard = order[process_index::num_processes]
    todo = []
    for r in shard:
        path = out / video_filename(ids[r])
        if path.is_file():
            problem = feature_file_problem(path)
            if problem is None:
                continue
            warnings.warn(f"{problem}; computing it again", stacklevel=2)
        todo.append(r)
    todo_set = set(todo)
    skipped = [ids[r] for r in shard if r not in todo_set]
    per_video = _video_batches(dataset, todo_set, batch_size)
    plan = [(r, b) for r in todo for b in per_video[r]]
    loader = DataLoader(dataset, batch_sampler=[b for _, b in plan], collate_fn=collate,
                        num_workers=num_workers)

    model.eval()
    written: list[str] = []
    frames = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"caching features ({len(skipped)} cached already)", unit="video")
    remaining = {r: len(per_video[r]) for r in todo}
    acc: dict[str, Any] = {}
    for (r, _), batch in zip(plan, loader):
        rec = records[r]
        if batch["video_id"][0] != rec.video_id:  # the sampler order is the plan's
            raise RuntimeError(f"batch of {batch['video_id'][0]!r} where {rec.video_id!r} was planned")
        if remaining[r] == len(per_video[r]):
            acc = _new_accumulator(rec, model)
        _accumulate(acc, batch, encode_batch(model, batch, device))
        remaining[r] -= 1
        if remaining[r] == 0:
            feats = _finish(acc, rec, manifest, dtype)
            if model.use_audio and hasattr(dataset, "speech_probabilities"):
                # Speech is a data step: the per-frame probabilities the speech rule reads later.
                feats.speech = dataset.speech_probabilities(r) if feats.audio_valid else np.zeros(rec.n_frames, np.float32)
            save_video_features(out / video_filename(rec.video_id), feats)
            written.append(rec.video_id)
            frames += rec.n_frames
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    if barrier is not None:
        barrier()
    return CacheResult(written, skipped, [ids[r] for r in shard], time.time() - t0, frames)


def _new_accumulator(rec: Any, model: nn.Module) -> dict[str, Any]:
    n = rec.n_frames
    return {
        "video": torch.zeros(n, model.video_encoder.num_features) if model.use_video else None,
        "audio": torch.zeros(n, model.audio_encoder.num_features) if model.use_audio else None,
        "seen": np.zeros(n, dtype=np.int64),
        "face_mask": np.zeros(n, dtype=bool),
        "timestamps": np.zeros(n, dtype=np.float64),
        "audio_valid": [],
    }


def _accumulate(acc: dict[str, Any], batch: Mapping[str, Any], feats: Mapping[str, torch.Tensor]) -> None:
    idx = batch["frame_indices"].numpy()
    for b in range(idx.shape[0]):
        ok = idx[b] >= 0
        rows = idx[b][ok]
        acc["seen"][rows] += 1
        acc["face_mask"][rows] = batch["face_mask"][b].numpy()[ok]
        acc["timestamps"][rows] = batch["timestamps"][b].numpy()[ok]
        acc["audio_valid"].append(bool(batch["audio_valid"][b]))
        for k in ("video", "audio"):
            if acc[k] is not None:
                acc[k][torch.from_numpy(rows)] = feats[k][b][torch.from_numpy(ok)]


def _finish(acc: dict[str, Any], rec: Any, manifest: Mapping[str, Any], dtype: torch.dtype) -> VideoFeatures:
    seen = acc["seen"]
    if not (seen == 1).all():
        bad = np.flatnonzero(seen != 1)
        raise RuntimeError(f"{rec.video_id}: frames {bad[:5].tolist()} were encoded {seen[bad[:5]].tolist()} "
                           "times; expected every frame exactly once (windows with stride == clip_len)")
    # The record's float64 times (the batches carry float32 copies): FeatureDataset then rebuilds
    # the very timestamps ClipDataset gives, padding included.
    times = rec.frame_times()
    if np.abs(times - acc["timestamps"]).max() > 1e-3:
        k = int(np.argmax(np.abs(times - acc["timestamps"])))
        raise RuntimeError(f"{rec.video_id}: frame {k} is at {acc['timestamps'][k]:.4f} s in the decoded "
                           f"windows but at {times[k]:.4f} s in the record; refusing misaligned features")
    labelled = bool(rec.label_mask.any())
    return VideoFeatures(
        video_id=rec.video_id,
        timestamps=times,
        face_mask=acc["face_mask"],
        fps=rec.fps,
        video=None if acc["video"] is None else acc["video"].to(dtype),
        audio=None if acc["audio"] is None else acc["audio"].to(dtype),
        audio_valid=all(acc["audio_valid"]) if acc["audio_valid"] else False,
        labels=rec.labels if labelled else None,
        label_mask=rec.label_mask if labelled else None,
        meta={
            "actor": rec.actor or "",
            "group": rec.group or "",
            "dataset": rec.dataset,
            "encoder_hash": manifest["encoder_hash"],
            "window": str(manifest["window"]),
        },
    )


def missing_videos(cache_dir: PathLike) -> list[str]:
    """Videos the manifest lists whose feature file does not exist (an unfinished run)."""
    manifest = read_manifest(cache_dir)
    return [v for v, name in manifest.get("videos", {}).items() if not (Path(cache_dir) / name).is_file()]



def _check_fits_cache(model: nn.Module, manifest: Mapping[str, Any], where: Any) -> None:
    """Refuse a model whose feature widths differ from the cache's, or whose weight-free encoders
    (HOG, log-mel: nothing to hash) are configured differently from those that made it."""
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
            raise ValueError(f"{where}: cached {mod} features are {cached} wide, the model expects {width} "
                             "(the cache was made with other encoder settings); re-cache with this model")
    described = encoder_description(model)
    for name, enc in encoder_modules(model).items():
        if enc.state_dict():
            continue
        mod = name.split("_")[0]
        cached = (manifest.get("encoders") or {}).get(mod)
        if cached is not None and cached != described.get(mod):
            keys = sorted(k for k in set(cached) | set(described[mod]) if cached.get(k) != described[mod].get(k))
            raise ValueError(f"{where}: the cache's {mod} encoder was configured differently "
                             f"(differs in {keys}); re-cache with this model or use the cache's settings")


def use_feature_cache(model: nn.Module, cache_dir: str | Path) -> None:
    """Make ``model`` fit a feature cache: the widths must agree, and the model's encoders get the
    very weights that made the features (``encoders.safetensors``), so the exported model turns
    raw video into the inputs it was trained on.

    A model using only some of the cache's encoders (video-only training on an audio-visual cache)
    loads just those, from the file whose hash the manifest records.
    """
    from safetensors import safe_open

    from .data.features import ENCODERS_NAME, manifest_path, read_manifest

    manifest = read_manifest(cache_dir)
    where = manifest_path(cache_dir)
    _check_fits_cache(model, manifest, where)
    mods = {n: enc for n, enc in encoder_modules(model).items() if enc.state_dict()}
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


def cache_features(
    model: nn.Module,
    data: Any,
    out_dir: PathLike,
    *,
    window: Optional[int] = None,
    dtype: str = "float16",
    batch_size: int = 4,
    num_workers: Optional[int] = None,
    save_encoder_weights: bool = True,
    cpu: bool = False,
) -> CacheResult:
    """Cache ``model``'s encoder features for every video of the dataset a
    :class:`~avfusion.data.build.DataConfig` names (all split parts: the split picks ids later),
    sharded over the processes of ``accelerate launch``.

    ``window`` frames are encoded together (default ``data.clip_len``, so cached features equal
    those of raw-clip training for windows that start at multiples of it); native frame rate,
    non-overlapping windows, no augmentation: every frame once.
    """
    from accelerate import Accelerator

    from .data.build import clip_datasets, dataset_records, used_settings

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    window = int(data.clip_len if window is None else window)
    if window < 1:
        raise ValueError(f"window must be >= 1 frame, got {window}")
    data = dataclasses.replace(data, clip_len=window, stride=window, eval_stride=None, target_fps=None,
                               features=None, num_workers=data.num_workers if num_workers is None else num_workers)
    accelerator = Accelerator(cpu=cpu)
    model = model.to(accelerator.device).eval()
    records, val_records = dataset_records(data)
    made, _ = clip_datasets(data, {"cache": list(records) + list(val_records)}, model)
    used = used_settings(data)
    info = {k: used[k] for k in ("kind", "root", "face_mode", "affwild2_frames") if k in used}
    # Decoding, cropping and the colour space are always used when caching (from raw video): the
    # serving spec the crops were made with (the model's, with the data config's settings applied).
    from .data.build import serving_for

    spec = serving_for(data, model)
    prep = {"face_backend": data.face_backend, "face_margin": spec.face_margin,
            "face_smoothing": spec.face_smoothing, "hsv": spec.colour == "hsv"}
    result = cache_dataset(
        model, made["cache"], out_dir, dtype=DTYPES[dtype], batch_size=batch_size,
        num_workers=data.num_workers, device=accelerator.device,
        process_index=accelerator.process_index, num_processes=accelerator.num_processes,
        barrier=accelerator.wait_for_everyone, dataset_info=info, preprocessing=prep,
        save_encoder_weights=save_encoder_weights, progress=accelerator.is_main_process)
    print(f"[process {accelerator.process_index}/{accelerator.num_processes}] {len(result.written)} "
          f"video(s) written, {len(result.skipped)} already cached, {result.frames} frames in "
          f"{result.seconds:.1f} s ({result.frames_per_second:.1f} frames/s) -> {out_dir}")
    return result


__all__ = [
    "cache_dataset", "CacheResult", "encoder_hash", "encoder_state_dict", "encoder_description",
    "build_manifest", "merge_manifest", "check_cacheable", "save_encoders", "load_cache_encoders",
    "check_model_matches_cache", "use_feature_cache", "cache_features", "missing_videos", "encode_batch", "DTYPES",
]
