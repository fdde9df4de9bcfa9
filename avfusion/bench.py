"""Throughput of the code `avfusion predict` runs, every stage in one run.

    avfusion bench [--quick] [--out DIR] [--device cpu|cuda] [--stages STAGE ...] [--readme [README.md]]
    avfusion bench readme [--bench benchmarks/bench.json] [--readme README.md]

Stages (one run: the same machine in the same minutes, so ratios within a run hold even when the
machine is shared):

- ``frames``: the per-frame networks through :class:`avfusion.inference.runner.FrameRunner`, the
  runner `avfusion predict` runs. EmoNet-8 at full size (synthetic weights by the parity test's
  recipe) at batch 1 and 16 under each runtime and precision: torch float32 eager (the official
  graph's arithmetic: the reference), torch bf16 + channels_last, torch.compile (full run only),
  OpenVINO f32 and bf16, and (full run) int8 by NNCF calibrated on the real faces of
  ``face_noface.mov``; tf_efficientnet_b0 and MAE ViT-B/16 (random weights) at batch 16. Variants
  take turns call by call, so a change in the machine's load hits them alike.
  Frames/s, and the deviation from torch float32 on the astronaut face and on a real face
  (``AVFUSION_TEST_MEDIA``: a folder with ``single_face.mp4``, cropped by YuNet).
- ``predict``: ``Predictor(...).predict_video`` on a generated 720p 25 fps talking-face video
  (YuNet faces when a model file is found: ``AVFUSION_TEST_YUNET``, ``$AVFUSION_HOME`` or
  ``./pretrained``; else ``--face-backend full``, and the table says so), under each runtime,
  divided by the bare runner's frames/s at the same runtime, precision and batch (predict/bare).
- ``audio``: wav2vec2-base (random weights), seconds of audio per second, torch and OpenVINO.
- ``decode`` (720p decoding), ``train`` (fusion training epochs on cached features at AFEW-VA
  size, Aff-Wild2 per 1M frames), ``cache`` (``avfusion cache``), ``cuda`` (with ``--device cuda``).

DIR/bench.json and DIR/bench.md (default DIR: benchmarks) are rewritten after every stage; both
start with the machine (CPU model, family/model id, flags, torch and openvino versions, threads).
``avfusion bench readme`` puts bench.md's opening (machine, summary) and its end-to-end table of
the pretrained models between the README's ``<!-- bench:start -->`` and ``<!-- bench:end -->``
markers, with a link to bench.md for the other tables. ``--quick`` runs in a few minutes on 2 cores and lists what it skips.
(``python scripts/benchmark.py ...`` is the same command.)
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from .inference.hardware import machine_info
from .inference.runner import FrameRunner

BENCH_KIND = "avfusion-bench"
BENCH_VERSION = 2
DEFAULT_OUT = Path("benchmarks")  # relative to the working directory: a clone's recorded results
STAGES = ("frames", "predict", "experts", "audio", "decode", "train", "cache", "cuda")
STAGE_TITLES = {
    "frames": "Per-frame networks (FrameRunner: the runner `avfusion predict` uses)",
    "predict": "`avfusion predict` end to end (Predictor.predict_video, 720p 25 fps talking face)",
    "experts": "The pretrained experts end to end (face expert, voice expert, av_experts; 720p 25 fps)",
    "audio": "Audio network (wav2vec2-base)",
    "decode": "Decoding 720p video",
    "train": "Fusion training on cached features",
    "cache": "Feature caching",
    "cuda": "CUDA",
}
ENV_MEDIA, ENV_YUNET = "AVFUSION_TEST_MEDIA", "AVFUSION_TEST_YUNET"
PREDICT_BATCH = 16  # Predictor's default batch_size: the bare figure predict is divided by
INT8_CALIBRATION = 48  # face crops NNCF calibrates int8 EmoNet on (NNCF's default subset is 300)
INT8_MAX_DEV = 0.05  # int8 is worth offering only within this deviation from float32

# AFEW-VA: 600 clips, 30,051 frames; Aff-Wild2 figures are given per 1M frames.
AFEW_CLIPS, AFEW_FRAMES = 600, 30_051

QUICK = {"repeats": 2, "batches": [1, 16], "encoders": ["tf_efficientnet_b0"], "compile": False, "int8": False,
         "video_seconds": 6.0, "predict_variants": ["emonet_8:1", "tiny:1"], "audio_seconds": 5.0,
         "affwild_frames": 10_000, "train_epochs": 1, "train_variants": ["bf16:16"], "cache_clips": 1,
         "cache_frames": 32}
FULL = {"repeats": 5, "batches": [1, 16, 32], "encoders": ["tf_efficientnet_b0", "vit_base_patch16_224"],
        "compile": True, "int8": True, "video_seconds": 20.0,
        "predict_variants": ["emonet_8:1", "emonet_8:4", "tiny:1"],
        "audio_seconds": 10.0, "affwild_frames": 100_000, "train_epochs": 3,
        "train_variants": ["bf16:16", "no:16", "bf16:64", "no:64", "bf16:64:32"], "cache_clips": 4,
        "cache_frames": 64}
QUICK_SKIPS = ("torch.compile (~35 s of compilation per batch size)", "EmoNet-8 at batch 32 and MAE ViT-B/16",
               "EmoNet-8 int8 (NNCF quantization: ~15 s)",
               "2 repeats instead of 5; a 6 s video instead of 20 s; EmoNet-8 predicted at stride 1 only",
               "training: 1 timed epoch of the experiment's setting (1 of 5), Aff-Wild2 rate from 10k frames",
               "feature caching on fewer frames")


# --- timing and tables -----------------------------------------------------------------------------


def time_repeats(fn: Callable[[], Any], repeats: int, sync: Callable[[], None] = lambda: None,
                 warmup: int = 1) -> tuple[list[float], float, Any]:
    """Seconds of each of ``repeats`` timed calls after ``warmup`` untimed ones (the first of which
    is timed apart: compilation, kernel creation), that first time, and the last call's result."""
    t0 = time.perf_counter()
    out = fn()
    sync()
    first = time.perf_counter() - t0
    for _ in range(max(warmup - 1, 0)):
        out = fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times, first, out


def spread(values: list[float]) -> dict:
    """Median, min, max and count of repeated measurements."""
    a = np.asarray(values, dtype=float)
    return {"median": float(np.median(a)), "min": float(a.min()), "max": float(a.max()), "n": int(a.size)}


def rates(times: list[float], units: float) -> dict:
    """:func:`spread` of ``units`` per second over the timed calls."""
    return spread([units / t for t in times])


def fmt_spread(s: Optional[dict], spec: str = ".2f") -> str:
    """``median (min–max)`` of a :func:`spread`; just the median when there was one repeat."""
    if not s:
        return "—"
    if s["n"] < 2 or s["min"] == s["max"]:
        return format(s["median"], spec)
    return f"{s['median']:{spec}} ({s['min']:{spec}}–{s['max']:{spec}})"


def markdown_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """columns: (key, header, format spec)."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for key, _, spec in columns:
            value = row.get(key)
            cells.append("—" if value is None else format(value, spec) if spec else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _log(stage: str, text: str) -> None:
    print(f"[bench {stage}] {text}", file=sys.stderr, flush=True)


# --- inputs: weights, faces, video -----------------------------------------------------------------


def synthetic_emonet_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Deterministic weights by the recipe of reference/emonet_parity.json (seeded by key name), so
    the deviation figures are comparable with the parity test's."""
    sd = {}
    for key, ref in model.state_dict().items():
        g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        s = tuple(ref.shape)
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(0)
        elif key.endswith("running_var"):
            sd[key] = 0.5 + torch.rand(s, generator=g)
        elif key.endswith("running_mean"):
            sd[key] = 0.1 * torch.randn(s, generator=g)
        elif key.endswith("weight") and len(s) == 1:
            sd[key] = 1 + 0.1 * torch.randn(s, generator=g)
        elif key.endswith("bias"):
            sd[key] = 0.01 * torch.randn(s, generator=g)
        else:
            sd[key] = torch.randn(s, generator=g) / math.sqrt(math.prod(s[1:]))
    return sd


def emonet_model() -> torch.nn.Module:
    """EmoNet-8 frame by frame at full size (as the emonet_8 config, without its flip averaging:
    predict's default) with the synthetic parity weights."""
    from .config import ModelConfig, from_dict
    from .factory import create_model

    model = create_model(from_dict(ModelConfig, {"mode": "video", "video": {"name": "emonet", "n_expression": 8},
                                                 "audio": None, "fusion": None}))
    model.video_encoder.net.load_state_dict(synthetic_emonet_weights(model.video_encoder.net))
    return model.eval()


def encoder_model(arch: str) -> torch.nn.Module:
    """A temporal model whose per-frame network is the timm CNN ``arch`` or, for a ViT name, the
    MAE ViT (random weights): what FrameRunner runs of it is the encoder."""
    from .config import ModelConfig, from_dict
    from .factory import create_model

    torch.manual_seed(0)
    video = {"name": "mae_vit" if arch.startswith("vit_") else "timm", "arch": arch}
    return create_model(from_dict(ModelConfig, {"mode": "video", "video": video, "audio": None, "fusion": {}})).eval()


def astronaut_face() -> np.ndarray:
    """The parity test's face: (256, 256, 3) uint8 RGB."""
    import cv2

    try:
        from skimage import data
    except ImportError as e:
        raise SystemExit("the bench needs scikit-image for its test face (pip install -e '.[dev]')") from e
    return cv2.resize(data.astronaut()[20:220, 140:320], (256, 256), interpolation=cv2.INTER_LINEAR)


def find_yunet() -> Optional[Path]:
    """The YuNet file: ``$AVFUSION_TEST_YUNET``, else the package's search ($AVFUSION_HOME,
    ./pretrained); None without one."""
    from .data.faces import resolve_yunet_model

    try:
        return resolve_yunet_model(os.environ.get(ENV_YUNET) or None)
    except FileNotFoundError:
        return None


def media_faces(count: int = 1, name: str = "single_face.mp4") -> tuple[Optional[np.ndarray], str]:
    """``count`` real face crops (N, 256, 256, 3) uint8 from ``$AVFUSION_TEST_MEDIA/name``, evenly
    spaced over the clip and cropped by YuNet as predict crops them, and a line saying where they
    come from; None and the reason when the clip or YuNet is missing."""
    folder, yunet = os.environ.get(ENV_MEDIA), find_yunet()
    if not folder or not (Path(folder) / name).is_file():
        return None, f"no real face (set {ENV_MEDIA} to a folder with {name})"
    if yunet is None:
        return None, f"no real face (YuNet not found: set {ENV_YUNET})"
    from .data.faces import FaceCropper, create_detector
    from .data.video import VideoFile

    reader = VideoFile(Path(folder) / name)
    at = np.linspace(0, len(reader) - 1, count + 2)[1:-1].round().astype(int)
    frames = reader.get_batch(at)
    reader.close()
    crops, found = FaceCropper(create_detector("yunet", model_path=yunet), smoothing=0)(frames)
    if not found.any():
        return None, f"no real face (YuNet found none in {name})"
    return crops[found], f"{name} ({int(found.sum())} frame(s) of {len(at)}, YuNet crop, margin 0.25)"


def _bench_video(o: argparse.Namespace, shared: dict) -> Path:
    """The run's 720p 25 fps talking-face video with audio, written once."""
    from .synthetic.talking import write_talking_video

    video = Path(shared["work"]) / f"talk_{o.video_seconds:g}s_720p.mp4"
    if not video.is_file():
        _log("video", f"writing {video}")
        t0 = time.perf_counter()
        write_talking_video(video, seconds=o.video_seconds, width=1280, height=720, fps=25)
        shared["video_write_s"] = time.perf_counter() - t0
    return video


# --- per-frame networks through FrameRunner -------------------------------------------------------

# (key, runtime, precision, compile, label)
RUNNER_VARIANTS = (
    ("torch_fp32", "torch", "fp32", False, "torch float32 eager (official-equivalent: the reference)"),
    ("torch_bf16", "torch", "bf16", False, "torch bf16 + channels_last"),
    ("torch_bf16_compiled", "torch", "bf16", True, "torch bf16 + channels_last, torch.compile (inductor, freezing)"),
    ("openvino_fp32", "openvino", "fp32", False, "OpenVINO f32"),
    ("openvino_bf16", "openvino", "bf16", False, "OpenVINO bf16"),
)


def _variants(o: argparse.Namespace) -> list[tuple[str, str, str, bool, str]]:
    return [v for v in RUNNER_VARIANTS if v[1] in o.runtimes and (o.compile or not v[3])]


def _deviation(out: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> list[float]:
    """Per input: max |out - ref| / max |ref| over every raw output (valence, arousal and the
    logits, or the feature), so the figure does not depend on the weights' scale (the synthetic
    weights do not keep valence/arousal in [-1, 1])."""
    keys = sorted(ref)
    o = np.concatenate([out[k].reshape(len(out[k]), -1) for k in keys], axis=1)
    r = np.concatenate([ref[k].reshape(len(ref[k]), -1) for k in keys], axis=1)
    return [float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)) for a, b in zip(o, r)]


def _faces_for(model: torch.nn.Module, faces: np.ndarray) -> torch.Tensor:
    """uint8 crops (N, 256, 256, 3) -> the encoder's input (N, 3, H, W), normalised as it says."""
    from .data.transforms import build_transform

    return build_transform(model.video_encoder.pretrained_cfg, train=False)(faces)


def time_interleaved(fns: list[Callable[[], Any]], repeats: int, warmup: int = 1) -> list[tuple[list[float], float]]:
    """:func:`time_repeats` of several calls taking turns (one call of each per round), so that a
    change in the machine's load (other users) hits all of them alike and their ratios hold: each
    call's timed seconds and its first call's."""
    firsts = []
    for fn in fns:
        t0 = time.perf_counter()
        fn()
        firsts.append(time.perf_counter() - t0)
        for _ in range(max(warmup - 1, 0)):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
    return list(zip(times, firsts))


def int8_network(model: torch.nn.Module, calibration: np.ndarray, cache_dir: Path) -> Any:
    """The frame-by-frame network quantized to int8 by NNCF (post-training, calibrated on the uint8
    crops ``calibration`` (N, 256, 256, 3)) and compiled by OpenVINO: an
    :class:`~avfusion.inference.openvino_net.OpenVINONet` (the bare network: no clipping or softmax)."""
    import hashlib

    from .inference.openvino_net import OpenVINONet, int8_quantizer
    from .inference.runner import frame_network

    calib = _faces_for(model, calibration).numpy()
    digest = hashlib.sha256(calib.tobytes()).hexdigest()[:16]
    return OpenVINONet(frame_network(model), tuple(model.video_encoder.pretrained_cfg["input_size"]), "int8",
                       cache_dir=cache_dir, quantize=int8_quantizer(calib),
                       variant=f"frame_by_frame=True flip=False int8 calibration={digest}")


def bench_network(name: str, model: torch.nn.Module, batches: list[int], o: argparse.Namespace,
                  faces: np.ndarray, work: Path, calibration: Optional[tuple[np.ndarray, str]] = None) -> list[dict]:
    """Frames/s of ``model``'s per-frame network through FrameRunner at each batch under each
    runtime and precision (timed in turns: :func:`time_interleaved`), its construction time
    (OpenVINO: converting, then from the cache) and the deviation from torch float32 on ``faces``
    (N, 256, 256, 3); with ``calibration`` (crops, where they come from) and OpenVINO, int8 too."""
    x_faces = _faces_for(model, faces)
    rows, ref = [], None
    cache = work / "openvino_cache"
    int8 = None
    for batch in batches:
        entries, failed = [], []  # (row, callable, raw outputs of x_faces); rows of runners that cannot run
        for key, runtime, precision, compile, label in _variants(o):
            if compile:
                torch._dynamo.reset()  # a fresh graph per batch size
            _log("frames", f"{name} batch {batch}: {label}")
            t0 = time.perf_counter()
            try:
                runner = FrameRunner(model, precision, compile, "cpu", batch_size=batch, runtime=runtime,
                                     cache_dir=cache)
            except ValueError as e:  # this runtime cannot run this network right (the runner says why)
                failed.append({"network": name, "variant": key, "label": f"{label}: not run ({e})", "runtime": runtime,
                             "precision": precision, "batch": batch, "frames_per_s": None, "deviation": None,
                             "construct_s": time.perf_counter() - t0, "converted": None, "first_call_s": None})
                continue
            row = {"network": name, "variant": key, "label": label, "runtime": runner.runtime,
                   "precision": runner.precision, "batch": batch, "construct_s": time.perf_counter() - t0,
                   "converted": bool(runner.openvino.converted) if runner.openvino is not None else None,
                   "description": runner.description}
            entries.append((row, runner, runner.raw))
        if calibration is not None and "openvino" in o.runtimes:
            label = f"OpenVINO int8 (NNCF PTQ on {len(calibration[0])} face crops of {calibration[1]}; bare network)"
            _log("frames", f"{name} batch {batch}: {label}")
            t0 = time.perf_counter()
            if int8 is None:
                int8 = int8_network(model, calibration[0], cache)
            row = {"network": name, "variant": "openvino_int8", "label": label, "runtime": "openvino",
                   "precision": "int8", "batch": batch, "construct_s": time.perf_counter() - t0,
                   "converted": int8.converted if batch == batches[0] else False,
                   "description": f"openvino, int8 ({int8.inference_precision} elsewhere), cpu"}
            entries.append((row, lambda x: int8(x.numpy()), lambda x: int8(x.numpy())))
        x = x_faces[:1].repeat(batch, 1, 1, 1)
        timed = time_interleaved([lambda run=run: run(x) for _, run, _ in entries], o.repeats)
        for (row, _, raw_fn), (times, first) in zip(entries, timed):
            raw = raw_fn(x_faces)
            if ref is None:
                ref = raw  # torch float32, the first variant
            rows.append(dict(row, frames_per_s=rates(times, batch), first_call_s=first,
                             deviation=_deviation(raw, ref)))
        rows += failed
        del entries, timed
    measured = [r for r in rows if r["frames_per_s"] is not None]
    base = {r["batch"]: r["frames_per_s"]["median"] for r in measured if r["variant"] == "torch_fp32"}
    best_torch: dict = {}
    for r in measured:
        if r["runtime"] == "torch":
            k = (r["batch"], r["precision"])
            best_torch[k] = max(best_torch.get(k, 0.0), r["frames_per_s"]["median"])
    for r in measured:
        r["x_torch_fp32"] = r["frames_per_s"]["median"] / base[r["batch"]] if r["batch"] in base else None
        # int8 against torch's best at any precision (torch has no int8 path here).
        at_batch = [v for (b, _), v in best_torch.items() if b == r["batch"]]
        t = best_torch.get((r["batch"], r["precision"]))
        if r["precision"] == "int8" and at_batch:
            t = max(at_batch)
        r["x_torch_same_precision"] = (r["frames_per_s"]["median"] / t) if t and r["runtime"] == "openvino" else None
    return rows


def stage_frames(o: argparse.Namespace, shared: dict) -> dict:
    """EmoNet-8 at each batch and the other encoders at batch 16, through FrameRunner."""
    work = Path(shared["work"])
    real, real_note = media_faces()
    faces = np.concatenate([astronaut_face()[None], real[:1]]) if real is not None else astronaut_face()[None]
    # int8 is calibrated on another clip than the real face its deviation is measured on.
    calib, calib_note = None, "not asked (--quick or --no-int8)"
    if o.int8 and "openvino" in o.runtimes:
        from .inference.hardware import package_version

        calib, calib_note = (media_faces(INT8_CALIBRATION, "face_noface.mov") if package_version("nncf")
                             else (None, "nncf is not installed (pip install nncf)"))
    rows = bench_network("EmoNet-8", emonet_model(), o.batches, o, faces, work,
                         (calib, "face_noface.mov") if calib is not None else None)
    for arch in o.encoders:
        rows += bench_network(arch, encoder_model(arch), [PREDICT_BATCH], o, faces, work)
    shared["frame_rows"] = rows
    on = ["astronaut"] + (["real face"] if real is not None else [])

    def cells(r: dict) -> dict:
        if r["frames_per_s"] is None:
            return {k: r[k] for k in ("network", "batch", "label")}
        dev = " / ".join(f"{d:.1e}" if d else "0" for d in r["deviation"]) if r["variant"] != "torch_fp32" else "ref."
        return dict(r, fps=fmt_spread(r["frames_per_s"]), dev=dev,
                    ctor=f"{r['construct_s']:.1f}" + (" (converted)" if r["converted"] else
                                                      " (cached)" if r["converted"] is False else ""))

    table = markdown_table([cells(r) for r in rows], [
        ("network", "network", ""), ("batch", "batch", ""), ("label", "runtime, precision", ""),
        ("fps", "frames/s median (min–max)", ""), ("x_torch_fp32", "× torch fp32", ".2f"),
        ("x_torch_same_precision", "× best torch, same precision", ".2f"),
        ("dev", f"deviation vs torch fp32 ({' / '.join(on)})", ""), ("ctor", "construction (s)", ""),
        ("first_call_s", "first call (s)", ".1f")])
    notes = ["Every figure is `FrameRunner(model, precision, compile, 'cpu', batch_size, runtime=...)` called on "
             "the normalised crop repeated to the batch (what predict calls per batch of faces, clipping and softmax "
             "included). EmoNet-8: full size, synthetic weights by the parity recipe; tf_efficientnet_b0 and MAE "
             "ViT-B/16: random weights, their pooled feature.",
             "Deviation: max |out - fp32| / max |fp32| over the raw outputs (valence, arousal and the 8 logits, or "
             "the feature) per face, torch float32 of the same network the reference; faces: the astronaut (the "
             f"parity face), {real_note}.",
             "Construction: building the runner; OpenVINO's first converts the network (openvino.convert_model) and "
             "caches it on disk, later ones read the cache and compile.",
             f"int8: {'calibrated on ' + calib_note if calib is not None else 'not run: ' + calib_note}. FrameRunner "
             f"does not offer int8: it would need a deviation within {INT8_MAX_DEV:.0%} of float32 on faces the "
             "calibration did not see, and NNCF's int8 EmoNet with these synthetic weights is far from it (0.92 in the "
             "run of 2026-12-01); the real emonet_8.pth may quantize better."]
    return {"rows": rows, "table": table, "notes": notes, "real_face": real_note,
            "int8_calibration": calib_note}


def bare_rate(shared: dict, runtime: str, precision: str, batch: int, network: str = "EmoNet-8") -> Optional[dict]:
    """The frames stage's frames/s for ``network`` (not compiled) under ``runtime`` at ``precision``
    and ``batch``, None when that stage did not measure it."""
    for r in shared.get("frame_rows", []):
        same = (r["network"], r["runtime"], r["precision"], r["batch"]) == (network, runtime, precision, batch)
        if r["frames_per_s"] and same and not r["variant"].endswith("compiled"):
            return r["frames_per_s"]
    return None


# --- predict end to end ---------------------------------------------------------------------------


def _predictor(model: Any, runtime: str, cache: Path, **kwargs: Any) -> Any:
    """The Predictor ``avfusion predict --runtime RUNTIME`` builds (its converted networks cached
    where every run caches them, ``$AVFUSION_HOME/cache/openvino``)."""
    from .predict.predictor import Predictor

    return Predictor(model, runtime=runtime, **kwargs)


def stage_predict(o: argparse.Namespace, shared: dict, device: str = "cpu") -> dict:
    """``Predictor.predict_video`` on the run's video under each runtime, against the bare runner."""
    video = _bench_video(o, shared)
    n_frames = int(round(o.video_seconds * 25))
    cache = Path(shared["work"]) / "openvino_cache"
    yunet = find_yunet()
    face = {"face_backend": "yunet", "yunet_model": str(yunet)} if yunet else {"face_backend": "full"}
    rows = []
    runs = 1 if o.quick else max(2, o.repeats // 2)  # whole videos: fewer repeats than the networks
    for spec in o.predict_variants if device == "cpu" else ["emonet_8:1"]:
        name, stride = spec.split(":")[0], int(spec.split(":")[1])
        # The tiny model's HOG features have no network to convert: torch only.
        runtimes = [r for r in o.runtimes if (device == "cpu" and name == "emonet_8") or r == "torch"]
        entries = []
        for runtime in runtimes:
            _log("predict", f"{name}, stride {stride}, {runtime} ({device})")
            t0 = time.perf_counter()
            p = _predictor(emonet_model() if name == "emonet_8" else name, runtime, cache, device=device,
                           precision="auto", stride=stride, batch_size=PREDICT_BATCH, **face)
            entries.append((runtime, p, time.perf_counter() - t0))
        tables: dict = {}
        timed = time_interleaved([lambda p=p, r=r: tables.__setitem__(r, p.predict_video(video, plot=False))
                                  for r, p, _ in entries], runs - 1 if runs > 1 else 0)
        for (runtime, p, construct), (times, first) in zip(entries, timed):
            fps = rates(times or [first], n_frames)  # one run: its only (first) call
            precision = p.runner.precision if p.runner is not None else "fp32"
            on_cpu = name == "emonet_8" and device == "cpu"
            bare = bare_rate(shared, runtime, precision, PREDICT_BATCH) if on_cpu else None
            rows.append({"variant": f"{name}, stride {stride}", "model": name, "stride": stride, "runtime": runtime,
                         "description": p.runner.description if p.runner is not None else "audio only",
                         "precision": precision, "frames_per_s": fps, "realtime_factor": fps["median"] / 25.0,
                         "first_run_s": first, "construct_s": construct,
                         "faces_found": int(tables[runtime]["face_found"].sum()),
                         "bare_frames_per_s": bare, "over_bare": fps["median"] / bare["median"] if bare else None})
        del entries
    table = markdown_table([dict(r, fps=fmt_spread(r["frames_per_s"]), bare=fmt_spread(r["bare_frames_per_s"]))
                            for r in rows], [
        ("variant", f"predict_video ({device})", ""), ("description", "runner", ""),
        ("fps", "video frames/s", ""), ("realtime_factor", "× real time (25 fps)", ".2f"),
        ("bare", f"bare runner, batch {PREDICT_BATCH}", ""), ("over_bare", "predict / bare", ".2f"),
        ("construct_s", "Predictor construction (s)", ".1f")])
    backend = (f"YuNet ({yunet.name})" if yunet else
               "full frame (`--face-backend full`: no YuNet file found; set AVFUSION_TEST_YUNET): "
               "no face tracking pass")
    notes = [f"Video: {o.video_seconds:g} s ({n_frames} frames), 1280x720, 25 fps, H.264 + AAC, one synthetic talking "
             f"face; faces: {backend}; precision auto; batch {PREDICT_BATCH}. Timed: `predict_video(path, plot=False)` "
             "in this process (decoding, face detection and tracking, crops, the network, the table), not the "
             "Predictor's construction (model, runner; OpenVINO: conversion or the cache), given apart.",
             "'predict / bare': predict's video frames/s over the frames stage's frames/s of the same FrameRunner "
             f"(runtime, precision, batch {PREDICT_BATCH}) in this run: 1 would mean decoding, faces and writing cost "
             "nothing beside the network; at stride K the network sees every K-th frame, so it can pass 1."]
    return {"rows": rows, "table": table, "notes": notes,
            "video": {"seconds": o.video_seconds, "frames": n_frames, "face_backend": face["face_backend"]}}


# --- the pretrained experts -------------------------------------------------------------------------


def stage_experts(o: argparse.Namespace, shared: dict) -> dict:
    """``Predictor.predict_video`` of ``enet_b0_8_va_mtl`` (the face expert, frame by frame) and
    ``av_experts`` (face + voice expert, mixed) on the run's 720p video, full-size architectures with
    random weights (the speed does not depend on them), and the voice expert alone over the track.
    The synthetic voice is no speech to a VAD, so the voice runs with ``speech="off"``: over the
    whole track, the worst case (a real video's silent stretches are skipped)."""
    from .factory import create_model
    from .predict import Predictor

    video = _bench_video(o, shared)
    n_frames = int(round(o.video_seconds * 25))
    yunet = find_yunet()
    face = {"face_backend": "yunet", "yunet_model": str(yunet)} if yunet else {"face_backend": "full"}
    runs = 1 if o.quick else 2
    torch.manual_seed(0)
    rows = []
    face_model = create_model("enet_b0_8_va_mtl").eval()
    av_model = create_model("av_experts").eval()
    voice_model = create_model("w2v2_msp_dim").eval()
    plans = [("enet_b0_8_va_mtl", face_model, r) for r in o.runtimes]
    plans += [("av_experts", av_model, r) for r in o.runtimes]
    plans += [("w2v2_msp_dim (voice only)", voice_model, r) for r in o.runtimes]
    for name, model, runtime in plans:
        _log("experts", f"{name}, {runtime}")
        t0 = time.perf_counter()
        p = Predictor(model, runtime=runtime, precision="auto", batch_size=PREDICT_BATCH, speech="off", **face)
        construct = time.perf_counter() - t0
        [(times, first)] = time_interleaved([lambda p=p: p.predict_video(video, plot=False)], runs - 1 if runs > 1 else 0)
        fps = rates(times or [first], n_frames)
        desc = ", ".join(x.description for x in (p.runner, p.voice_runner) if x is not None)
        rows.append({"variant": name, "runtime": runtime, "description": desc, "frames_per_s": fps,
                     "realtime_factor": fps["median"] / 25.0, "construct_s": construct})
        if p.voice_runner is not None and model is voice_model:  # the voice over a long track as well
            rows.append(_voice_long_track(o, p, runtime, desc, runs))
    table = markdown_table([dict(r, fps=fmt_spread(r["frames_per_s"])) for r in rows], [
        ("variant", "predict_video (cpu)", ""), ("description", "runners", ""), ("fps", "video frames/s", ""),
        ("realtime_factor", "× real time (25 fps)", ".2f"), ("construct_s", "Predictor construction (s)", ".1f")])
    sv = voice_model.serving
    covered = _voice_coverage(o.video_seconds, sv.audio_window, sv.audio_hop)
    notes = [f"Video: {o.video_seconds:g} s ({n_frames} frames), 1280x720, 25 fps, with audio; faces: "
             f"{'YuNet' if yunet else 'the full frame (no YuNet file found)'}; precision auto; batch {PREDICT_BATCH}; "
             f"speech off (the voice runs over the whole track: windows of {sv.audio_window:g} s every "
             f"{sv.audio_hop:g} s, which cover {covered:.2f}x a {o.video_seconds:g} s track and "
             f"{_voice_coverage(_long_track_s(o), sv.audio_window, sv.audio_hop):.2f}x a {_long_track_s(o):g} s one). "
             "Full-size architectures, random weights. '× real time' of the voice rows: seconds of video (and "
             f"audio) per second; the '{_long_track_s(o):g} s track' row times `predict_voice` alone (the voice "
             "runner over the windows of a synthetic wave), in frames/s of a 25 fps video of that length."]
    return {"rows": rows, "table": table, "notes": notes}


LONG_TRACK_S = 60.0  # seconds: the voice-only row over a long track (the windows' overlap as on real videos)


def _long_track_s(o: argparse.Namespace) -> float:
    return LONG_TRACK_S / 2 if o.quick else LONG_TRACK_S


def _voice_coverage(seconds: float, window: float, hop: float) -> float:
    """How many times the voice's windows cover a track of ``seconds`` (its cost over one pass)."""
    from .inference.engine import voice_windows

    spans = voice_windows(seconds, window, hop)
    return float((spans[:, 1] - spans[:, 0]).sum() / seconds)


def _voice_long_track(o: argparse.Namespace, p: Any, runtime: str, desc: str, runs: int) -> dict:
    """The voice expert's runner over a synthetic :data:`LONG_TRACK_S` s wave (speech off), timed."""
    from .inference.engine import predict_voice

    sv = p.serving
    seconds = _long_track_s(o)
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(int(seconds * sv.sample_rate))).astype(np.float32)
    times = np.arange(int(seconds * 25)) / 25.0
    [(times_s, first)] = time_interleaved(
        [lambda: predict_voice(p.voice_runner, wave, times, sv.sample_rate, sv.audio_window, sv.audio_hop)],
        runs - 1 if runs > 1 else 0)
    fps = rates(times_s or [first], len(times))
    return {"variant": f"w2v2_msp_dim (voice only, {seconds:g} s track)", "runtime": runtime, "description": desc,
            "frames_per_s": fps, "realtime_factor": fps["median"] / 25.0, "construct_s": 0.0}


# --- audio ----------------------------------------------------------------------------------------


class _Hidden(torch.nn.Module):
    """wav2vec2's last hidden states as a dict (what OpenVINONet returns by name)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, wave: torch.Tensor) -> dict[str, torch.Tensor]:  # (B, S) -> (B, S / 320, C)
        return {"hidden": self.model(wave).last_hidden_state}


def stage_audio(o: argparse.Namespace, shared: dict) -> dict:
    """wav2vec2-base (Wav2Vec2Config defaults, random weights) on ``audio_seconds`` of 16 kHz audio:
    torch float32 and bf16, OpenVINO f32 and bf16 (the audio path has no runner yet: the bare
    network either way)."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from .encoders.base import inference_copy

    torch.manual_seed(0)
    net = _Hidden(Wav2Vec2Model(Wav2Vec2Config()).eval()).eval()
    samples = int(16000 * o.audio_seconds)
    wave = torch.randn(1, samples) * 0.1
    entries = []
    for key, runtime, precision, _, _ in _variants(argparse.Namespace(**{**vars(o), "compile": False})):
        label = {"torch": "torch", "openvino": "OpenVINO"}[runtime] + {"fp32": " float32", "bf16": " bf16"}[precision]
        _log("audio", label)
        t0 = time.perf_counter()
        if runtime == "torch":
            _, run = inference_copy(net, torch.bfloat16 if precision == "bf16" else None)
            x = wave.to(torch.bfloat16) if precision == "bf16" else wave

            def call(run: Callable = run, x: torch.Tensor = x) -> dict:
                with torch.inference_mode():
                    return {k: v.float().numpy() for k, v in run(x).items()}
            converted = None
        else:
            from .inference.openvino_net import OpenVINONet

            ov = OpenVINONet(net, (samples,), precision, cache_dir=Path(shared["work"]) / "openvino_cache")
            converted = ov.converted

            def call(ov: Any = ov) -> dict:
                return ov(wave.numpy())
        entries.append(({"variant": key, "label": label, "runtime": runtime, "precision": precision,
                         "construct_s": time.perf_counter() - t0, "converted": converted}, call))
    rows, ref = [], None
    for (row, call), (times, first) in zip(entries, time_interleaved([c for _, c in entries], o.repeats)):
        out = call()
        if ref is None:
            ref = out
        rows.append(dict(row, rate=rates(times, o.audio_seconds), first_call_s=first,
                         deviation=_deviation(out, ref)[0]))
    base = rows[0]["rate"]["median"] if rows else None
    for r in rows:
        r["x_torch_fp32"] = r["rate"]["median"] / base
    table = markdown_table([dict(r, r=fmt_spread(r["rate"])) for r in rows], [
        ("label", f"wav2vec2-base, {o.audio_seconds:g} s at 16 kHz", ""),
        ("r", "s of audio / s median (min–max)", ""),
        ("x_torch_fp32", "× torch fp32", ".2f"), ("deviation", "deviation vs torch fp32", ".1e"),
        ("construct_s", "construction (s)", ".1f")])
    return {"rows": rows, "table": table,
            "notes": ["The bare network (transformers Wav2Vec2Model, random weights) on one utterance; deviation: max "
                      "|out - fp32| / max |fp32| over the last hidden states. OpenVINO: converted for this input "
                      "length. avfusion runs wav2vec2 through torch only so far (no audio runner)."]}


def stage_decode(o: argparse.Namespace, shared: dict) -> dict:
    """Decoding the 720p video to RGB arrays: decord in batches, PyAV and OpenCV frame by frame."""
    import av
    import cv2
    import decord

    video = _bench_video(o, shared)

    def by_decord() -> int:
        vr = decord.VideoReader(str(video), ctx=decord.cpu(0))
        n = len(vr)
        for i in range(0, n, 32):
            vr.get_batch(list(range(i, min(i + 32, n)))).asnumpy()
        return n

    def by_pyav() -> int:
        n = 0
        with av.open(str(video)) as c:
            for frame in c.decode(video=0):
                frame.to_ndarray(format="rgb24")
                n += 1
        return n

    def by_opencv() -> int:
        cap, n = cv2.VideoCapture(str(video)), 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            n += 1
        cap.release()
        return n

    rows = []
    for name, fn in (("decord, batches of 32 (get_batch)", by_decord), ("PyAV, sequential (to_ndarray rgb24)", by_pyav),
                     ("OpenCV, sequential (read + BGR->RGB)", by_opencv)):
        _log("decode", name)
        times, first, n = time_repeats(fn, o.repeats)
        rows.append({"decoder": name, "frames": n, "frames_per_s": rates(times, n), "first_s": first})
    base = rows[0]["frames_per_s"]["median"]
    for r in rows:
        r["vs_decord"] = r["frames_per_s"]["median"] / base
    table = markdown_table([dict(r, fps=fmt_spread(r["frames_per_s"], ".0f")) for r in rows],
                           [("decoder", "decoding 1280x720 H.264 to RGB", ""), ("fps", "frames/s median (min–max)", ""),
                            ("vs_decord", "× decord", ".2f")])
    return {"video": {"path_name": video.name, "seconds": o.video_seconds, "size": "1280x720", "fps": 25},
            "rows": rows, "table": table, "notes": []}



# --- training on cached features, feature caching -------------------------------------------------


def _afew_lengths(clips: int, frames: int, seed: int = 0) -> np.ndarray:
    """Clip lengths like AFEW-VA's (a few to ~150 frames), ``clips`` of them summing to ``frames``."""
    rng = np.random.default_rng(seed)
    lo, hi = max(1, min(10, frames // clips)), max(150, 2 * frames // clips)
    lengths = np.clip(rng.lognormal(np.log(frames / clips), 0.5, clips), lo, hi).astype(int)
    while lengths.sum() != frames:
        i = int(rng.integers(clips))
        step = 1 if lengths.sum() < frames else -1
        if lo <= lengths[i] + step <= hi:
            lengths[i] += step
    return lengths


def write_feature_cache(root: Path, lengths: list[int] | np.ndarray, video_dim: int | None, audio_dim: int | None,
                        seed: int = 0) -> Path:
    """A feature cache of random float16 features and labels, in the format `avfusion cache` writes."""
    from .data.features import (CACHE_FORMAT, CACHE_VERSION, VideoFeatures, save_video_features, video_filename,
                                write_manifest)

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    videos = {}
    for i, n in enumerate(int(n) for n in lengths):
        vid = f"clip{i:05d}"

        def feats(dim: int | None) -> torch.Tensor | None:
            return None if not dim else torch.from_numpy(rng.standard_normal((n, dim), dtype=np.float32).astype(np.float16))

        f = VideoFeatures(video_id=vid, timestamps=np.arange(n) / 25.0, face_mask=np.ones(n, dtype=bool), fps=25.0,
                          video=feats(video_dim), audio=feats(audio_dim), audio_valid=bool(audio_dim),
                          speech=np.ones(n, dtype=np.float32) if audio_dim else None,  # speech throughout
                          labels=rng.uniform(-1, 1, (n, 2)).astype(np.float32), label_mask=np.ones(n, dtype=bool),
                          meta={"actor": f"actor{i // 4}", "group": vid, "dataset": "bench"})
        save_video_features(root / video_filename(vid), f)
        videos[vid] = video_filename(vid)
    write_manifest(root, {"format": CACHE_FORMAT, "version": CACHE_VERSION, "encoder_hash": "none", "encoders": {},
                          "video_dim": video_dim, "audio_dim": audio_dim, "dtype": "float16", "window": 32,
                          "dataset": {"kind": "bench"}, "videos": videos})
    return root


def _train_epochs(experiment: str, cache: Path, overrides: list[str], epochs: int, warmup_steps: int,
                  out: Path) -> dict:
    """Epochs of the package's training step (train_one_epoch: Accelerate, AdamW, CCC loss, the
    experiment's fusion model) over every window of a feature cache; seconds of each timed epoch."""
    from .train.experiment import load_experiment

    cfg = load_experiment(experiment, [f"data.features={cache}", "data.root=null", "data.folds=0",
                                       "data.val_fraction=0", "data.test_fraction=0", "data.split_file=null",
                                       "data.num_workers=0", "train.cpu=true", "train.log_every=0",
                                       f"output_dir={out}", *overrides])
    torch.manual_seed(0)
    # Accelerate keeps one process-wide state, fixed at its first mixed-precision setting: the
    # settings compared here need it reset (one process, nothing distributed to tear down).
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()
    try:
        return _timed_epochs(cfg, epochs, warmup_steps)
    finally:  # and leave none behind for the caller's next Accelerator (another precision)
        AcceleratorState._reset_state()
        GradientState._reset_state()


def _timed_epochs(cfg: Any, epochs: int, warmup_steps: int) -> dict:
    import contextlib
    import io

    from .data.build import build_datasets
    from .train.checkpoint import TrainState
    from .train.experiment import build_model
    from .train.loop import make_accelerator, make_loader, train_one_epoch
    from .train.optim import build_loss_fn, build_optimizer, build_scheduler

    accelerator = make_accelerator(cfg, log=False)
    model = build_model(cfg)
    datasets = build_datasets(cfg.data, model)
    loader, sampler = make_loader(datasets.train, cfg.data.batch_size, datasets.collate_fn, True, 0, 0)
    optimizer, loss_fn = build_optimizer(model, cfg.train), build_loss_fn(cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, len(loader) * (epochs + 1))
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    state = TrainState()
    cfg.train.stop_after_steps = None
    times = []
    with contextlib.redirect_stderr(io.StringIO()):  # the loop's progress bar
        if warmup_steps:  # one-time costs (allocator, oneDNN primitives) outside the timed epochs
            n = [0]

            def stop() -> bool:
                n[0] += 1
                return n[0] >= warmup_steps

            sampler.set_epoch(0)
            train_one_epoch(accelerator, model, loader, optimizer, scheduler, loss_fn, state, cfg, on_step=stop)
        for e in range(epochs):
            sampler.set_epoch(e + 1)
            state.batch_in_epoch = 0
            t0 = time.perf_counter()
            train_one_epoch(accelerator, model, loader, optimizer, scheduler, loss_fn, state, cfg)
            times.append(time.perf_counter() - t0)
    frames = sum(int((w.indices >= 0).sum()) for w in datasets.train.windows)
    fusion = model.cfg.fusion if hasattr(model, "cfg") else accelerator.unwrap_model(model).cfg.fusion
    return {"epoch_s": spread(times), "windows": len(datasets.train), "steps_per_epoch": len(loader),
            "frames_per_epoch": frames, "clip_len": cfg.data.clip_len, "stride": cfg.data.stride,
            "fusion": {"d_model": fusion.d_model, "n_layers": fusion.n_layers, "n_heads": fusion.n_heads}}


def _train_variant(spec: str) -> tuple[str, int, int | None]:
    """``PRECISION:BATCH[:STRIDE]`` (precision: bf16 or no) -> (precision, batch, stride or None)."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[0] not in ("bf16", "no") or not all(p.isdigit() for p in parts[1:]):
        raise ValueError(f"training variant {spec!r}: expected PRECISION:BATCH[:STRIDE], precision bf16 or no")
    return parts[0], int(parts[1]), int(parts[2]) if len(parts) == 3 else None


def stage_train(o: argparse.Namespace, shared: dict) -> dict:
    """Fusion training seconds per epoch on cached features: AFEW-VA size (the afew_emonet_video
    experiment: EmoNet features 256 wide, 6-layer fusion) and Aff-Wild2 per 1M frames
    (affwild2_av_emonet_wav2vec2: 256 + 768 wide, extrapolated from the frames measured)."""
    work = Path(shared["work"])
    afew = work / f"cache_afew_{o.train_clips}x{o.train_frames}"
    if not (afew / "manifest.json").is_file():
        _log("train", f"writing an AFEW-VA-sized feature cache ({o.train_clips} clips, {o.train_frames} frames)")
        write_feature_cache(afew, _afew_lengths(o.train_clips, o.train_frames), 256, None)
    rows = []
    for spec in o.train_variants:
        precision, batch, stride = _train_variant(spec)
        _log("train", f"AFEW-VA size, mixed precision {precision}, batch {batch}, stride {stride or 16}")
        r = _train_epochs("afew_emonet_video", afew,
                          ["model_overrides={video: {name: features, dim: 256}}",
                           f"train.mixed_precision='{precision}'", f"data.batch_size={batch}"]
                          + ([f"data.stride={stride}"] if stride else []),
                          o.train_epochs, 5, work / "train_runs")
        rows.append({"dataset": f"AFEW-VA size ({o.train_clips} clips, {o.train_frames:,} frames)",
                     "experiment": "afew_emonet_video", "precision": precision, "batch": batch, **r,
                     "frames_per_s": r["frames_per_epoch"] / r["epoch_s"]["median"]})
    # Aff-Wild2: long videos (~5,000 frames each), audio-visual features.
    n_videos = max(1, o.affwild_frames // 5000)
    aff = work / f"cache_affwild2_{o.affwild_frames}"
    if not (aff / "manifest.json").is_file():
        _log("train", f"writing an Aff-Wild2-like feature cache ({o.affwild_frames} frames, 256 + 768 wide)")
        sizes = [o.affwild_frames // n_videos] * n_videos
        sizes[-1] += o.affwild_frames - sum(sizes)
        write_feature_cache(aff, sizes, 256, 768)
    _log("train", "Aff-Wild2 rate (bf16, batch 8, as the experiment)")
    r = _train_epochs("affwild2_av_emonet_wav2vec2", aff,
                      ["model_overrides={video: {name: features, dim: 256}, audio: {name: features, dim: 768}}",
                       "data.affwild2_split=random"],  # the official split needs the dataset's folders
                      1 if o.quick else 2, 5, work / "train_runs")
    per_frame = r["epoch_s"]["median"] / o.affwild_frames
    affwild = {"measured_frames": o.affwild_frames, **r, "seconds_per_1M_frames": per_frame * 1e6,
               "note": "extrapolated: seconds per epoch over the measured frames x 1M / frames measured"}
    config_row = next((x for x in rows if (x["precision"], x["batch"], x["stride"]) == ("bf16", 16, 16)),
                      rows[0] if rows else None)
    best = min(rows, key=lambda x: x["epoch_s"]["median"]) if rows else None
    table = markdown_table(
        [dict(x, e=fmt_spread(x["epoch_s"], ".1f"),
              setting=f"{'bf16 autocast' if x['precision'] == 'bf16' else 'float32'}, batch {x['batch']}, "
              f"stride {x['stride']}" + (" (the experiment's)" if x is config_row else ""),
              steps=x["steps_per_epoch"]) for x in rows]
        + [{"dataset": "Aff-Wild2 (per 1M frames, extrapolated)", "setting": "bf16 autocast, batch 8 (the experiment's)",
            "e": f"{affwild['seconds_per_1M_frames']:.0f} s per 1M frames", "frames_per_s": o.affwild_frames / r["epoch_s"]["median"],
            "steps": r["steps_per_epoch"]}],
        [("dataset", "fusion training on cached features", ""), ("setting", "setting", ""),
         ("e", "s/epoch median (min–max)", ""), ("steps", "steps/epoch", ""),
         ("frames_per_s", "window frames/s", ".0f")])
    notes = [f"The package's training step (avfusion.train.loop.train_one_epoch with Accelerate, AdamW, CCC loss) "
             f"on random cached features; default 6-layer fusion (d_model 256, 4 heads), windows of "
             f"{rows[0]['clip_len'] if rows else 32} frames at stride {rows[0]['stride'] if rows else 16} (each frame "
             "seen about twice per epoch), every clip in the training part, no validation pass; 5 untimed warm-up steps first.",
             f"Aff-Wild2: {o.affwild_frames:,} frames in {n_videos} videos of 256 + 768-wide features, windows of 64 at "
             "stride 32; the per-1M-frames figure is extrapolated from that epoch."]
    return {"rows": rows, "affwild2": affwild, "table": table, "notes": notes,
            "afew_epoch_s_config": config_row["epoch_s"]["median"] if config_row else None,
            "afew_epoch_s_best": best["epoch_s"]["median"] if best else None,
            "afew_best_setting": f"{best['precision']}:{best['batch']}:{best['stride']}" if best else None}


def stage_cache(o: argparse.Namespace, shared: dict) -> dict:
    """`avfusion cache` frames/s: the tiny model's encoders (HOG + log-mel) and EmoNet-8 (random weights)."""
    import contextlib
    import io

    from .caching import cache_features
    from .data.build import DataConfig
    from .factory import create_model
    from .synthetic import SyntheticConfig, generate_dataset

    work = Path(shared["work"])
    rows = []
    for name, model_name, clips, frames in (("tiny (HOG 64 px + log-mel)", "tiny", 4 * o.cache_clips, o.cache_frames * 2),
                                            ("EmoNet-8 (256 px, random weights) video features", "afew_emonet_video",
                                             o.cache_clips, o.cache_frames)):
        root = work / f"synth_{clips}x{frames}"
        if not (root / "manifest.csv").is_file():
            _log("cache", f"writing {clips} synthetic clips x {frames} frames")
            generate_dataset(root, SyntheticConfig(clips=clips, frames=frames, size=128, seed=0, pair=False))
        data = DataConfig(kind="synthetic", root=str(root), face_mode="full", clip_len=32, num_workers=0)
        model = create_model(model_name)
        out = work / f"featcache_{model_name}_{clips}x{frames}"
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        _log("cache", name)
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            res = cache_features(model, data, out, batch_size=4, cpu=True)
        rows.append({"encoders": name, "frames": res.frames, "seconds": res.seconds,
                     "frames_per_s": res.frames_per_second})
    table = markdown_table(rows, [("encoders", "feature caching (avfusion cache)", ""), ("frames", "frames", ""),
                                  ("frames_per_s", "frames/s", ".1f")])
    return {"rows": rows, "table": table,
            "notes": ["Synthetic 128x128 clips (decoding, full-frame crop, encoders, writing float16 files); one run each."]}



def stage_cuda(o: argparse.Namespace, shared: dict) -> dict:
    """EmoNet-8 bf16 through FrameRunner at batch 32 and 256, and predict end to end, on the GPU."""
    if o.device != "cuda":
        return {"status": "not run (--device cpu)", "table": "CUDA: not run (--device cpu).", "rows": [], "notes": []}
    if not torch.cuda.is_available():
        return {"status": "not run (no GPU)", "table": "CUDA: not run (no GPU).", "rows": [], "notes": []}
    model, face = emonet_model(), _faces_for(emonet_model(), astronaut_face()[None])
    rows = []
    for batch in (32, 256):
        _log("cuda", f"EmoNet-8 bf16 batch {batch}")
        runner = FrameRunner(model, "bf16", device="cuda", batch_size=batch)
        x = face.repeat(batch, 1, 1, 1)
        times, _, _ = time_repeats(lambda: runner(x), o.repeats, sync=torch.cuda.synchronize)
        rows.append({"what": f"EmoNet-8 {runner.description}, batch {batch}", "frames_per_s": rates(times, batch)})
    pred = stage_predict(o, shared, device="cuda")
    gpu = torch.cuda.get_device_name(0)
    table = markdown_table([dict(r, f=fmt_spread(r["frames_per_s"], ".0f")) for r in rows],
                           [("what", f"CUDA ({gpu})", ""), ("f", "frames/s median (min–max)", "")])
    return {"status": "run", "gpu": gpu, "rows": rows, "predict": pred,
            "table": table + "\n\n" + pred["table"], "notes": pred["notes"]}


STAGE_FUNCS: dict[str, Callable[[argparse.Namespace, dict], dict]] = {
    "frames": stage_frames, "predict": stage_predict, "experts": stage_experts, "audio": stage_audio,
    "decode": stage_decode,
    "train": stage_train, "cache": stage_cache, "cuda": stage_cuda}


# --- the run and its files -------------------------------------------------------------------------


def machine_line(m: dict) -> str:
    """The machine a run's figures hold for, in one line."""
    flags = ", ".join(m.get("cpu_flags") or []) or "none of the reported flags"
    ident = f" ({m['cpu_id']})" if m.get("cpu_id") else ""
    gpu = f"; GPU {m['gpu']}" if m.get("gpu") else ""
    return (f"{m.get('cpu')}{ident}, {m.get('cores')} cores, class {m.get('cpu_class', '?')} ({flags}); "
            f"torch {m.get('torch')}, openvino {m.get('openvino') or 'not installed'}, {m.get('threads')} threads{gpu}")


def _summary(stages: dict) -> dict:
    s: dict = {}
    rows = [r for r in (stages.get("frames") or {}).get("rows", []) if r.get("frames_per_s")]
    at16 = {r["variant"]: r for r in rows if r["network"] == "EmoNet-8" and r["batch"] == PREDICT_BATCH}
    if at16:
        s["emonet_batch16_frames_per_s"] = {k: r["frames_per_s"]["median"] for k, r in at16.items()}
        s["emonet_batch16_x_torch_fp32"] = {k: r["x_torch_fp32"] for k, r in at16.items()}
    ov = {f"{r['network']} {r['precision']} batch {r['batch']}": r["x_torch_same_precision"]
          for r in rows if r.get("x_torch_same_precision")}
    if ov:
        s["openvino_x_torch_same_precision"] = ov
    pred = (stages.get("predict") or {}).get("rows", [])
    ratios = {f"{r['variant']}, {r['runtime']}": r["over_bare"] for r in pred if r.get("over_bare")}
    if ratios:
        s["predict_over_bare"] = ratios
    ex = (stages.get("experts") or {}).get("rows", [])
    if ex:
        s["experts_realtime_factor"] = {f"{r['variant']}, {r['runtime']}": r["realtime_factor"] for r in ex}
    t = stages.get("train") or {}
    if t.get("rows"):
        s["afew_epoch_s"] = t["afew_epoch_s_config"]
        s["afew_epoch_s_best"] = t["afew_epoch_s_best"]
        s["afew_best_setting"] = t["afew_best_setting"]
        s["affwild2_s_per_1M_frames"] = t["affwild2"]["seconds_per_1M_frames"]
    s["cuda"] = (stages.get("cuda") or {}).get("status", "not run")
    return s


def _head(result: dict) -> list[str]:
    """The machine, the run, its summary and (busy machine) the load: what opens bench.md and the
    README's section."""
    lines = [f"_{machine_line(result['machine'])}. `{result.get('command', 'avfusion bench')}`, "
             f"{result['date'][:16].replace('T', ' ')}, {result.get('total_s', 0):.0f} s"
             + (f"; {result['note']}" if result.get("note") else "") + "._", ""]
    s = result.get("summary") or {}
    bits = []
    if s.get("emonet_batch16_x_torch_fp32"):
        labels = {v[0]: v[4].split(" (")[0] for v in RUNNER_VARIANTS} | {"openvino_int8": "OpenVINO int8"}
        bits.append(f"EmoNet-8 at batch {PREDICT_BATCH} over torch float32 eager: " + ", ".join(
            f"{labels.get(k, k)} {v:.2f}×" for k, v in s["emonet_batch16_x_torch_fp32"].items()
            if k != "torch_fp32" and v is not None))  # None: the reference was not run (--runtimes)
    if s.get("openvino_x_torch_same_precision"):
        bits.append("OpenVINO over the best torch at the same precision: " + ", ".join(
            f"{k} {v:.2f}×" for k, v in s["openvino_x_torch_same_precision"].items()))
    if s.get("predict_over_bare"):
        bits.append("predict end to end / bare runner: " + ", ".join(
            f"{v:.2f} ({k})" for k, v in s["predict_over_bare"].items()))
    if s.get("afew_epoch_s") is not None:
        bits.append(f"fusion training, one AFEW-VA-sized epoch: {s['afew_epoch_s']:.1f} s with the experiment's "
                    f"settings, {s['afew_epoch_s_best']:.1f} s at best ({s['afew_best_setting']})")
    if bits:
        lines += ["**Summary.** " + "; ".join(bits) + ".", ""]
    if result.get("quick"):
        lines += ["Quick mode skips: " + "; ".join(result.get("quick_skips", [])) + ".", ""]
    m = result["machine"]
    loads = [x for r in result["stages"].values() for x in (r.get("loadavg_1min_before_after") or []) if x is not None]
    if loads and m.get("cores") and max(loads) > 0.5 * m["cores"]:
        lines += [f"**Busy machine:** the 1-minute load average reached {max(loads):.1f} on {m['cores']} cores during "
                  "this run (other jobs), so its speeds are lower than an idle machine's; ratios measured in the "
                  "same stage suffer less.", ""]
    return lines


def _stage(result: dict, stage: str) -> list[str]:
    """One stage's title, table, notes and load (nothing for a stage the run skipped)."""
    r = result["stages"].get(stage)
    if r is None:
        return []
    lines = [f"### {STAGE_TITLES[stage]}", ""]
    if "error" in r:
        return lines + [f"Not measured: {r['error']}", ""]
    lines += [r["table"], ""]
    for note in r.get("notes", []):
        lines += [note, ""]
    load = r.get("loadavg_1min_before_after")
    if load and load[0] is not None:
        lines += [f"_{r.get('seconds', 0):.0f} s; 1-minute load average {load[0]:.1f} before, {load[1]:.1f} after._", ""]
    return lines


def bench_markdown(result: dict) -> str:
    """bench.md: the machine first, then the summary and each stage's table."""
    lines = _head(result)
    for stage in STAGES:
        lines += _stage(result, stage)
    return "\n".join(lines).rstrip() + "\n"


def _write(out: Path, result: dict) -> None:
    from .files import write_text_atomic

    write_text_atomic(out / "bench.json", json.dumps(result, indent=1, default=str) + "\n")
    write_text_atomic(out / "bench.md", bench_markdown(result))


def run_all(o: argparse.Namespace) -> dict:
    """Every stage of ``o.stages`` in one run; writes OUT/bench.json and OUT/bench.md after each."""
    import tempfile

    for key, value in (QUICK if o.quick else FULL).items():
        if getattr(o, key, None) is None:
            setattr(o, key, value)
    if o.no_compile:
        o.compile = False
    if o.runtimes is None:
        from .inference.openvino_net import openvino_available

        o.runtimes = ["torch"] + (["openvino"] if openvino_available() else [])
    out = Path(o.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = None
    if o.workdir:
        Path(o.workdir).mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="avfusion-bench-")
    shared: dict = {"work": o.workdir or tmp.name}
    settings = ("repeats", "batches", "encoders", "compile", "int8", "runtimes", "video_seconds", "predict_variants",
                "audio_seconds", "train_clips", "train_frames", "train_variants", "train_epochs", "affwild_frames",
                "cache_clips", "cache_frames", "device", "stages")
    result = {
        "machine": machine_info("cuda" if o.device == "cuda" else "cpu"),  # first: figures hold for it only
        "kind": BENCH_KIND, "version": BENCH_VERSION,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": "avfusion bench" + (" --quick" if o.quick else ""),
        "quick": bool(o.quick), "quick_skips": list(QUICK_SKIPS) if o.quick else [],
        "settings": {k: getattr(o, k) for k in settings},
        "timing": "each figure: median (min-max) over the repeats after one untimed first call; first calls "
                  "(compilation, kernel creation) and constructions are reported apart",
        "stages": {}, "note": o.note or "",
    }
    t_start = time.perf_counter()
    try:
        for stage in STAGES:
            if stage not in o.stages:
                continue
            load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
            t0 = time.perf_counter()
            try:
                r = STAGE_FUNCS[stage](o, shared)
            except Exception as e:  # one broken stage must not lose the others' figures
                if o.strict:
                    raise
                r = {"error": f"{type(e).__name__}: {e}"}
                _log(stage, f"FAILED: {r['error']}")
            r["seconds"] = time.perf_counter() - t0
            r["loadavg_1min_before_after"] = [load0, os.getloadavg()[0] if load0 is not None else None]
            result["stages"][stage] = r
            result["total_s"] = time.perf_counter() - t_start
            result["summary"] = _summary(result["stages"])
            _write(out, result)
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(bench_markdown(result))
    print(f"wrote {out / 'bench.json'} and {out / 'bench.md'} ({result['total_s']:.0f} s)")
    return result


# --- README section ---------------------------------------------------------------------------------

README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"


# The one table the README shows: the models a user runs, end to end; bench.md has every table.
README_STAGE = "experts"


def readme_section(result: dict) -> str:
    """The README's performance section from a run's bench.json: bench.md's opening (machine,
    summary) and its end-to-end table of the pretrained models, then where the other tables are."""
    lines = _head(result) + _stage(result, README_STAGE)
    lines += ["Every table of this run (the per-frame networks under each runtime and precision, predict / bare, "
              "audio, decoding, training, caching, CUDA): [benchmarks/bench.md](benchmarks/bench.md).", ""]
    return "\n".join(lines).rstrip() + "\n"


def update_readme(readme: Path, bench: Path) -> Path:
    """Rewrite the part of ``readme`` between the bench markers from the run in ``bench``."""
    from .files import write_text_atomic

    bench = Path(bench)
    if not bench.is_file():
        raise FileNotFoundError(f"{bench}: no bench results to write into {readme} (run `avfusion bench` first)")
    result = json.loads(bench.read_text())
    if result.get("kind") != BENCH_KIND or result.get("version") != BENCH_VERSION:
        raise ValueError(f"{bench}: not a version-{BENCH_VERSION} `avfusion bench` result (run `avfusion bench` again)")
    text = Path(readme).read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme}: no {README_START} ... {README_END} markers to write between")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    write_text_atomic(readme, f"{head}{README_START}\n{readme_section(result).rstrip()}\n{README_END}{tail}")
    return Path(readme)


# --- command line ----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The benchmark's options on ``parser`` (``avfusion bench``); ``readme`` is its one sub-command."""
    parser.add_argument("--quick", action="store_true",
                        help="a few minutes on 2 cores: no compile or int8, fewer repeats, smaller sizes "
                             "(listed in the output)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for bench.json and bench.md")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="cuda: also fill the CUDA section (EmoNet-8 bf16 at batch 32 and 256, predict)")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES, metavar="STAGE",
                        help=f"stages to run (default all: {' '.join(STAGES)})")
    parser.add_argument("--runtimes", nargs="+", default=None, choices=("torch", "openvino"),
                        help="runtimes to measure (default: torch, and openvino when installed)")
    parser.add_argument("--readme", nargs="?", type=Path, const=Path("README.md"), default=None, metavar="README",
                        help="then rewrite the README's performance section from this run (default README.md)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    parser.add_argument("--note", default="", help="free text stored with the results (machine state, ...)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per figure (quick 2, full 5)")
    parser.add_argument("--batches", type=int, nargs="+", default=None,
                        help="EmoNet-8 batch sizes (quick 1 16, full 1 16 32)")
    parser.add_argument("--encoders", nargs="*", default=None,
                        help="other per-frame networks at batch 16: timm names; vit_* is the MAE ViT "
                             "(quick tf_efficientnet_b0; full adds vit_base_patch16_224)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    parser.add_argument("--no-int8", dest="int8", action="store_const", const=False, default=None,
                        help="skip EmoNet-8 int8 (full run only; needs nncf, AVFUSION_TEST_MEDIA and YuNet)")
    parser.add_argument("--video-seconds", type=float, default=None, help="length of the 720p video (quick 6, full 20)")
    parser.add_argument("--predict-variants", nargs="+", default=None, metavar="MODEL:STRIDE",
                        help="predict runs: emonet_8 or tiny, and the stride (quick emonet_8:1 tiny:1)")
    parser.add_argument("--audio-seconds", type=float, default=None, help="wav2vec2 input length (quick 5, full 10)")
    parser.add_argument("--train-clips", type=int, default=AFEW_CLIPS, help="clips of the AFEW-VA-sized cache (600)")
    parser.add_argument("--train-frames", type=int, default=AFEW_FRAMES, help="frames of the AFEW-VA-sized cache (30051)")
    parser.add_argument("--train-variants", nargs="+", default=None, metavar="PRECISION:BATCH",
                        help="training settings PRECISION:BATCH[:STRIDE] (bf16|no; stride default 16, the experiment's)")
    parser.add_argument("--train-epochs", type=int, default=None, help="timed epochs per setting (quick 1, full 3)")
    parser.add_argument("--affwild-frames", type=int, default=None,
                        help="frames of the Aff-Wild2-like cache the per-1M-frames rate is measured on")
    parser.add_argument("--cache-clips", type=int, default=None, help="clips for the EmoNet feature-caching figure")
    parser.add_argument("--cache-frames", type=int, default=None, help="frames per clip for the caching figures")
    parser.add_argument("--workdir", default=None, help="keep the generated video, caches and converted networks here")
    parser.add_argument("--strict", action="store_true", help="stop at a failing stage (default: record its error)")
    sub = parser.add_subparsers(dest="section", required=False)
    readme = sub.add_parser("readme", help="rewrite the README's performance section (between markers) from bench.json")
    readme.add_argument("--readme", type=Path, default=Path("README.md"), dest="readme_file")
    readme.add_argument("--bench", type=Path, default=DEFAULT_OUT / "bench.json", help="a run's bench.json")
    return parser


def run(args: argparse.Namespace) -> dict:
    """The whole benchmark (then the README's section with ``--readme``), or ``readme`` alone."""
    if args.section == "readme":
        path = update_readme(args.readme_file, args.bench)
        print(f"rewrote the performance section of {path} from {args.bench}")
        return {}
    torch.set_num_threads(args.threads)
    result = run_all(args)
    if args.readme is not None:
        update_readme(args.readme, Path(args.out) / "bench.json")
        print(f"rewrote the performance section of {args.readme}")
    return result
