"""Evaluate a model on one part of a dataset split, from decoded video or a feature cache.

This is ``avfusion evaluate``'s library function: the split comes from the data config (the same
:mod:`avfusion.data.build` policy training uses), windows do not overlap (every labelled frame is
scored exactly once), and the predictions go through the one collector (:mod:`.collect`).
"""
from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np
import torch
from torch import nn

from ..runlock import run_lock
from .report import evaluate

PathLike = Union[str, Path]


def default_eval_dir(model: PathLike, part: str) -> Path:
    """``runs/eval/<model>-<part>``, where an exported folder is named with its parent
    (``runs/exp/best`` -> ``exp-best``), so two experiments' ``best`` never share a folder."""
    p = Path(model)
    name = "-".join(p.resolve().parts[-2:]) if p.is_dir() else p.stem
    return Path("runs") / "eval" / f"{name}-{part}"


def evaluate_model(
    model: nn.Module,
    data: Any,
    part: Optional[str] = None,
    out_dir: Optional[PathLike] = None,
    *,
    default_name: Optional[str] = None,
    smooth_window: int = 5,
    threshold: float = 0.5,
    face_only: bool = False,
    plots: bool = True,
    cpu: bool = False,
    extra: Optional[Mapping[str, Any]] = None,
    precision: str = "auto",
    compile: bool = False,
    mask: Optional[str] = None,
    clip_len: Optional[int] = None,
    runtime: Optional[str] = None,
    overwrite: bool = False,
) -> tuple[dict[str, Any], list, str, Optional[Path]]:
    """Score ``model`` on ``part`` ("train", "val", "test", "all"; None: test, else val) of the
    split a :class:`~avfusion.data.build.DataConfig` describes. Runs under ``accelerate launch``
    too (each process predicts part of the windows; rows are gathered before scoring).

    Returns ``(results, records, part, out_dir)``; with ``out_dir`` (or ``default_name``: the
    model string, giving :func:`default_eval_dir`) the main process writes metrics.json,
    per_clip.csv, predictions.csv and plots there.

    Read from video, every model runs through the inference engine that ``avfusion predict`` runs
    (:func:`predict_records`: the model's serving spec, every frame once, bounded memory,
    ``precision`` and ``compile`` as in ``avfusion predict``; temporal models over non-overlapping
    windows of ``clip_len``, the evaluation protocol). Cached features and ``target_fps`` go
    through windows of the feature / clip datasets. ``mask`` ("audio" | "video") scores an
    audio-visual model with that sense hidden (window datasets).

    ``out_dir`` belongs to one evaluation: locked while this one runs, and one that already holds
    the results of another (model, checkpoint, data, part, mask) is refused unless ``overwrite``.
    """
    from accelerate import Accelerator

    from ..data.build import select_records, used_settings

    if smooth_window < 1 or smooth_window % 2 == 0:
        raise ValueError(f"smoothing window must be a positive odd number of frames, got {smooth_window}")
    from ..data.build import serving_for

    # An exported model's window is its own (its serving spec), unless clip_len asks otherwise.
    temporal = getattr(model, "fusion", None) is not None
    spec_len = serving_for(data, model).clip_len if temporal else data.clip_len
    if temporal and clip_len is not None and clip_len != spec_len:
        import warnings

        warnings.warn(f"clip_len {clip_len}: the model's serving spec says {spec_len} (the window it was "
                      "trained with)", RuntimeWarning, stacklevel=2)
    data = dataclasses.replace(data, clip_len=int(clip_len or spec_len))
    # The protocol: non-overlapping windows, every frame scored exactly once.
    data = dataclasses.replace(data, eval_stride=None, stride=data.clip_len)
    records, part = select_records(data, part)
    if out_dir is None and default_name is not None:
        out_dir = default_eval_dir(default_name, part)
    out_dir = Path(out_dir) if out_dir is not None else None
    accelerator = Accelerator(cpu=cpu)
    info = {"data": used_settings(data), "part": part, "videos": [r.video_id for r in records],
            **dict(extra or {})}
    if mask is not None:
        if getattr(getattr(model, "cfg", None), "mode", None) != "av":
            raise ValueError(f"masking the {mask} needs an audio-visual model (mode av)")
        info["masked"] = mask
    with contextlib.ExitStack() as stack:
        if out_dir is not None and accelerator.is_main_process:
            identity = {k: info.get(k) for k in ("model", "checkpoint", "part", "masked")}
            # Settings that change how fast, not what: a rerun with other workers is the same evaluation.
            identity["data"] = {k: v for k, v in info["data"].items()
                                if k not in ("num_workers", "batch_size", "eval_batch_size")}
            from ..runlock import check_output_folder

            check_output_folder(out_dir, "--out")
            stack.enter_context(run_lock(out_dir, "evaluate"))
            claim_eval_dir(out_dir, identity, overwrite)
            stack.callback(_record_owner, out_dir, identity)
        results = _evaluate(model, data, records, out_dir, accelerator, info, smooth_window, threshold, face_only,
                            plots, precision, compile, mask, runtime)
    return results, records, part, out_dir


# What an evaluation writes into its folder (``overwrite`` removes these first).
EVAL_FILES = ("metrics.json", "per_clip.csv", "predictions.csv", "plots")


def claim_eval_dir(out_dir: Path, identity: Mapping[str, Any], overwrite: bool = False) -> None:
    """Refuse ``out_dir`` when it holds the finished results of another evaluation (its record, or
    the model and part of an older folder's metrics.json) unless ``overwrite``, which removes them."""
    import json
    import shutil

    from ..runlock import OWNER_NAME, RunFolderError, changes_text, check_output_folder, identity_changes, read_owner

    check_output_folder(out_dir, "--out")
    if not (out_dir / "metrics.json").is_file():
        return
    if overwrite:
        for name in EVAL_FILES + (OWNER_NAME,):
            p = out_dir / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        return
    owner = read_owner(out_dir)
    if owner is not None and owner.get("command") != "evaluate":
        raise RunFolderError(f"--out {out_dir}: holds the outputs of avfusion {owner.get('command')}; choose "
                             "another output folder")
    old = (owner or {}).get("identity")
    new = json.loads(json.dumps(dict(identity), default=str))
    if old is None:  # a folder written before evaluations recorded themselves
        try:
            metrics = json.loads((out_dir / "metrics.json").read_text())
        except (OSError, ValueError):
            metrics = {}
        old = {k: metrics.get(k) for k in ("model", "part")}
        new = {k: new.get(k) for k in ("model", "part")}
    changes = identity_changes(old, new)
    if changes:
        raise RunFolderError(f"--out {out_dir}: holds the results of another evaluation ({changes_text(changes)}); "
                             "pass --overwrite to replace them, or choose another output folder")


def _record_owner(out_dir: Path, identity: Mapping[str, Any]) -> None:
    if (out_dir / "metrics.json").is_file():
        from ..runlock import write_owner

        write_owner(out_dir, "evaluate", identity)


def _evaluate(model: nn.Module, data: Any, records: list, out_dir: Optional[Path], accelerator: Any,
              info: dict, smooth_window: int, threshold: float, face_only: bool, plots: bool, precision: str,
              compile: bool, mask: Optional[str], runtime: Optional[str] = None) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    from ..data.build import clip_datasets

    frame_by_frame = getattr(model, "fusion", None) is None
    if not data.features and data.target_fps is None and (frame_by_frame or mask is None):
        from .report import compute_metrics, write_results

        videos, used = predict_records(model, data, records, accelerator, precision, compile, runtime=runtime)
        results, per_clip = compute_metrics(videos, smooth_window, threshold, face_only)
        info["engine"] = {**used, "compile": compile}
        if out_dir is not None and accelerator.is_main_process:
            write_results(videos, results, per_clip, out_dir, plots=plots, extra=info)
        return results
    if data.features:
        from ..caching import check_model_matches_cache
        from ..data.features import FeatureDataset, collate_features

        check_model_matches_cache(model, data.features)
        dataset = FeatureDataset(data.features, data.clip_len, video_ids=[r.video_id for r in records])
        collate = collate_features
    else:
        made, collate = clip_datasets(data, {"eval": records}, model)
        dataset = made["eval"]
    loader = DataLoader(dataset, batch_size=data.eval_batch_size or data.batch_size, shuffle=False,
                        collate_fn=collate, num_workers=data.num_workers)
    model.to(accelerator.device)
    if accelerator.num_processes > 1:
        loader = accelerator.prepare(loader)
    with torch.no_grad():
        results, _, _ = evaluate(
            model, loader, n_frames={r.video_id: r.n_frames for r in records}, out_dir=out_dir,
            smooth_window=smooth_window, threshold=threshold, face_only=face_only,
            accelerator=accelerator, plots=plots, progress=accelerator.is_main_process, extra=info, mask=mask)
    return results


def predict_records(model: nn.Module, data: Any, records: list, accelerator: Any = None, precision: str = "auto",
                    compile: bool = False, progress: bool = True, speech: str = "auto",
                    runtime: Optional[str] = None) -> tuple[dict[str, Any], dict[str, str]]:
    """A model's predictions for every record through the inference engine (what ``avfusion
    predict`` runs), and the precision and runtime the per-frame network ran in.

    Each record's frames are read in chunks (its video file or frame folder), its faces cropped as
    the model's serving spec and the data config say for its face mode (dataset landmarks,
    detection, ...), every frame through the per-frame network once; a temporal model then runs
    over non-overlapping windows of ``data.clip_len`` (each frame scored once) with each window's
    audio, masked where the model's speech rule finds no speech on Silero VAD's per-frame
    probabilities (``speech="off"``: the whole track), as in predict and in training. Frames without
    a face get 0 from a frame-by-frame model (what the window path gives them), scored unless
    ``face_only``. A model of experts (a face and / or a voice expert, no temporal part) gets each
    expert's values as its heads (``heads`` (N, 2, 2): face, voice).
    Under several processes each takes every n-th record and all are gathered.
    """
    import warnings

    from ..data.audio import AudioDecodeError, load_audio
    from ..data.build import record_cropper, serving_for
    from ..data.clips import open_reader
    from ..data.transforms import serving_transform
    from ..inference.aggregate import VideoPrediction
    from ..inference.engine import combine_experts, predict_frame_by_frame, predict_temporal, predict_voice
    from ..inference.runner import FrameRunner

    import os

    device = accelerator.device if accelerator is not None else None
    runtime = runtime or os.environ.get("AVFUSION_RUNTIME") or "auto"  # as predict's default
    spec = serving_for(data, model)
    runner = transform = None
    if model.use_video:
        # 8 images per network call: float32 EmoNet activations at 256x256 are ~70 MB per tensor at 16.
        runner = FrameRunner(model, precision, compile, device, flip=None, batch_size=data.eval_batch_size or 8,
                             runtime=runtime)
        transform = serving_transform(spec)
    temporal = getattr(model, "fusion", None) is not None
    experts = not temporal and model.use_audio
    if temporal or experts:
        model.to(device or "cpu").eval()
    detector = voice_runner = None
    if experts:
        from ..inference.runner import UtteranceRunner

        voice_runner = UtteranceRunner(model.audio_encoder, precision, device,  # as predict runs it
                                       runtime=runtime,
                                       window=float(spec.audio_window), sample_rate=int(spec.sample_rate))
    rule = None
    if model.use_audio and speech == "auto":
        from ..data.speech import SpeechDetector, serving_rule

        rule = serving_rule(spec)  # the model's own: the frames it was trained to hear, as predict
        detector = SpeechDetector() if rule is not None else None
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    mine = records[rank::world]
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(r.n_frames for r in mine), desc="evaluating", unit="frame", disable=None)
    videos = {}
    try:
        for rec in mine:
            reader = open_reader(rec)
            tick = bar.update if bar is not None else None
            cropper = record_cropper(data, rec.face_mode, spec) if model.use_video else None
            try:
                audio = None
                if model.use_audio and rec.audio_path is not None:
                    try:
                        audio = load_audio(rec.audio_path, spec.sample_rate)
                    except AudioDecodeError as err:
                        warnings.warn(f"{err}; audio of {rec.video_id!r} treated as missing", RuntimeWarning)
                said = None
                if audio is not None and detector is not None:
                    from ..data.speech import speech_frames

                    times = np.asarray(reader.timestamps, dtype=np.float64)
                    probs = detector.frame_probabilities(audio, times, spec.sample_rate, rec.fps)
                    said = speech_frames(probs, rec.fps, rule)
                    if temporal and not said.any():
                        audio = None  # no speech at all: masked like a video without a track, as predict
                if not temporal:
                    out = None
                    if model.use_video:
                        out = predict_frame_by_frame(runner, reader, cropper, transform, landmarks=rec.landmarks,
                                                     face_valid=rec.face_mask, progress=tick)
                    if experts:
                        times = np.asarray(reader.timestamps, dtype=np.float64)
                        voice = None
                        if audio is not None:
                            voice = predict_voice(voice_runner, audio, times, spec.sample_rate,
                                                  spec.audio_window, spec.audio_hop, said)
                        out = combine_experts(out, voice, times, model.experts_mix)
                else:
                    out = predict_temporal(model, runner, reader, cropper, transform, data.clip_len, audio,
                                           spec.sample_rate, landmarks=rec.landmarks, face_valid=rec.face_mask,
                                           progress=tick, hop=data.clip_len, audio_frames=said)
            finally:
                reader.close()
            target = np.where(rec.label_mask[:, None], rec.labels, np.nan)
            face = out.face_mask if model.use_video else np.zeros(rec.n_frames, dtype=bool)
            heads = present = None
            if experts:
                f = np.stack([out.parts["face_valence"], out.parts["face_arousal"]], -1)
                v = np.stack([out.parts["voice_valence"], out.parts["voice_arousal"]], -1)
                heads = np.stack([f, v], -1)  # (N, 2, 2): dimension, [face, voice]
                present = np.isfinite(heads).all(axis=1)
            videos[rec.video_id] = VideoPrediction(
                rec.video_id, np.nan_to_num(out.va.astype(np.float64)), target, rec.label_mask.copy(),
                face, out.timestamps, np.ones(rec.n_frames, dtype=np.int64), heads, present)
    finally:
        if bar is not None:
            bar.close()
    if world > 1:
        from accelerate.utils import gather_object

        merged: dict[str, Any] = {}
        for part in gather_object([videos]):
            merged.update(part)
        videos = merged
    used = {"precision": runner.precision if runner is not None else "fp32",
            "runtime": runner.runtime if runner is not None else "torch"}
    return dict(sorted(videos.items())), used


def fit_experts_mix(videos: Mapping[str, Any], current: np.ndarray, step: float = 0.05) -> dict[str, Any]:
    """Per-dimension weights of [face, voice] that maximise CCC over the labelled frames of
    ``videos`` (from :func:`predict_records` with a model of experts), weights renormalised per
    frame over the experts present (:func:`avfusion.fusion.fit_mix`). Returns ``mix`` (2, 2), the
    number of ``frames`` and the CCC per dimension ``before`` (``current`` weights) and ``after``."""
    from ..fusion import fit_mix
    from ..metrics import ccc

    rows = [v for v in videos.values() if v.heads is not None]
    if not rows:
        raise ValueError("no expert values: fit-mix needs a model of experts (av_experts)")
    heads = np.concatenate([v.heads[v.label_mask] for v in rows])
    present = np.concatenate([v.heads_present[v.label_mask] for v in rows])
    target = np.concatenate([v.target[v.label_mask] for v in rows])
    seen = present.any(axis=1)
    heads, present, target = heads[seen], present[seen], target[seen]
    if len(target) < 2:
        raise ValueError(f"only {len(target)} labelled frame(s) where an expert has a value: nothing to fit on")
    mix = fit_mix(heads, present, target, step)

    def score(w: np.ndarray) -> dict[str, float]:
        p = np.where(present[:, None, :], w[None], 0.0)
        tot = np.maximum(p.sum(-1), 1e-12)
        pred = (p * np.nan_to_num(heads)).sum(-1) / tot
        return {dim: float(ccc(pred[:, d], target[:, d])) for d, dim in enumerate(("valence", "arousal"))}

    return {"mix": mix, "frames": int(len(target)), "before": score(np.asarray(current)), "after": score(mix)}


__all__ = ["evaluate_model", "default_eval_dir", "predict_records", "fit_experts_mix"]
