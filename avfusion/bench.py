"""Throughput benchmarks: every stage in one run, or one section per component.

    avfusion bench [--quick] [--out DIR] [--device cpu|cuda] [--readme [README.md]]
        every stage side by side (EmoNet-8 at batch 1/8/32: fp32 eager, bf16 fast path, compiled;
        MAE ViT-B/16, wav2vec2-base; 720p decoding; predict end to end; fusion training on cached
        features; feature caching; CUDA) -> DIR/bench.json and DIR/bench.md (default DIR:
        benchmarks); --quick finishes in minutes and says what it skips
    avfusion bench emonet [--batch 8 --iters 5 --warmup 2 --no-compile]
    avfusion bench data [--clips 16 --batches 10 --root DIR] [--quick]
    avfusion bench predict [--seconds 12 --variants emonet_8:1 emonet_8:4:compile tiny:1 ...]
    avfusion bench zeroshot [--clips 4 --frames 48 --size 512 --precisions fp32 auto]
    avfusion bench readme   (rewrite the README's performance section from benchmarks/bench.json
                             and the sections' benchmarks/results.json, those present)

(``python scripts/benchmark.py ...`` is the same command.)

Each section times its variants, merges its results into ``benchmarks/results.json`` (other
sections' entries are kept) and prints a markdown table. Timings on a shared machine are noisy:
run a section once, when the machine is otherwise idle, and quote it with its date.
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
from typing import Any, Callable, Iterator

import numpy as np
import torch

from .inference.hardware import cpu_flags, cpu_name

# Relative to the working directory: in a clone, the repository's recorded results.
DEFAULT_OUTPUT = Path("benchmarks") / "results.json"
# A whole run's results (`avfusion bench --out benchmarks`), which `avfusion bench readme` writes first.
DEFAULT_BENCH = Path("benchmarks") / "bench.json"


# --- shared helpers --------------------------------------------------------------------------------


def time_call(
    fn: Callable[[], object], warmup: int, iters: int, sync: Callable[[], None],
    stat: Callable[[list[float]], float] = np.median,
) -> tuple[float, float]:
    """Median (or ``stat``) seconds per call over ``iters`` timed calls after ``warmup`` untimed
    ones, and the seconds of the very first call (compilation happens there)."""
    t0 = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - t0
    for _ in range(max(warmup - 1, 0)):
        fn()
    sync()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return float(stat(times)), first


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


def save_section(path: Path, section: str, result: dict) -> None:
    """Merge one section's result into the JSON file, keeping the other sections."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[section] = result
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


# --- emonet ----------------------------------------------------------------------------------------


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


def astronaut_face() -> torch.Tensor:
    """The parity test's face: (1, 3, 256, 256) float in [0, 1]."""
    import cv2

    try:
        from skimage import data
    except ImportError as e:
        raise SystemExit("the emonet benchmark needs scikit-image (pip install -e '.[dev]')") from e
    img = cv2.resize(data.astronaut()[20:220, 140:320], (256, 256), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(img.astype(np.float32) / 255).permute(2, 0, 1)[None].contiguous()


def bench_emonet(args: argparse.Namespace) -> dict:
    from .encoders.emonet import EmoNet, load_emonet_checkpoint, optimize_for_inference

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model = EmoNet(n_expression=8)
    if args.checkpoint:
        load_emonet_checkpoint(model, args.checkpoint)
    else:
        model.load_state_dict(synthetic_emonet_weights(model))
    model = model.eval().to(device)
    # Timing and deviation both use the face repeated to the batch size, so the compiled graph
    # sees one input shape only (no recompilation between the deviation and timing calls).
    batch = astronaut_face().repeat(args.batch, 1, 1, 1).to(device)

    def plain(x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            return model(x)

    variants: list[tuple[str, Callable]] = [("float32 eager", plain)]
    variants.append(("bf16 + channels_last eager", optimize_for_inference(model, torch.bfloat16, channels_last=True)))
    if not args.no_compile:
        compiled = optimize_for_inference(model, torch.bfloat16, channels_last=True, compile=True)
        freezing = " (inductor freezing)" if device.type == "cpu" else ""
        variants.append((f"bf16 + channels_last + torch.compile{freezing}", compiled))

    rows: list[dict] = []
    reference: dict[str, torch.Tensor] | None = None
    for name, fn in variants:
        print(f"[emonet] {name} ...", file=sys.stderr, flush=True)
        seconds, first = time_call(lambda: fn(batch), args.warmup, args.iters, sync)
        out = fn(batch)
        vec = torch.cat([out["valence"][:1], out["arousal"][:1], out["expression"][0]]).float().cpu()
        row = {
            "variant": name,
            "frames_per_s": args.batch / seconds,
            "ms_per_frame": 1000 * seconds / args.batch,
            "first_call_s": first,
        }
        if reference is None:
            reference = {"vec": vec, "argmax": out["heatmap"][:1].flatten(2).argmax(-1).cpu()}
            row["speedup"] = 1.0
        else:
            row["speedup"] = row["frames_per_s"] / rows[0]["frames_per_s"]
            # Deviation on the face, relative to the largest of valence / arousal / logits.
            row["max_rel_dev"] = ((vec - reference["vec"]).abs().max() / reference["vec"].abs().max()).item()
            argmax = out["heatmap"][:1].flatten(2).argmax(-1).cpu()
            row["landmarks_agree"] = (argmax == reference["argmax"]).float().mean().item()
        rows.append(row)

    table = markdown_table(
        rows,
        [
            ("variant", "variant", ""),
            ("frames_per_s", "frames/s", ".2f"),
            ("ms_per_frame", "ms/frame", ".1f"),
            ("speedup", "speed-up", ".2f"),
            ("max_rel_dev", "max rel. deviation vs fp32", ".2e"),
            ("landmarks_agree", "heatmap argmax agree", ".0%"),
            ("first_call_s", "first call (s)", ".1f"),
        ],
    )
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "model": "EmoNet-8 (width 256, 2 hourglasses), "
        + ("weights " + str(args.checkpoint) if args.checkpoint else "synthetic weights (parity recipe)"),
        "device": str(device) if device.type != "cpu" else cpu_name(),
        "cpu_flags": cpu_flags(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "input": [3, 256, 256],
        "warmup": args.warmup,
        "iters": args.iters,
        "timing": "median seconds per batch over the timed iterations, under torch.inference_mode",
        "deviation": "max |out - fp32| / max |fp32| over valence, arousal and the 8 logits on the astronaut face",
        "rows": rows,
        "table": table,
    }


# --- data ------------------------------------------------------------------------------------------


def bench_data(args: argparse.Namespace) -> dict:
    """Batches of clips from the synthetic mp4s, built as training builds them (build_datasets of an
    experiment on a synthetic folder: training windows, augmentation, face crops, audio)."""
    import tempfile

    from torch.utils.data import DataLoader

    from .data.build import DataConfig, build_datasets
    from .synthetic import SyntheticConfig, generate_dataset
    from .train.experiment import ExperimentConfig, build_model

    if args.quick:
        args.clips, args.batches = 4, 2
    tmp = None if args.root else tempfile.TemporaryDirectory(prefix="avfusion_bench_")
    root = Path(args.root or tmp.name)
    syn = SyntheticConfig(clips=args.clips, frames=args.frames, size=args.size, seed=0)
    generate_s = None
    if not (root / "manifest.csv").is_file():
        print(f"[data] writing {syn.clips} clips x {syn.frames} frames to {root} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        generate_dataset(root, syn)
        generate_s = time.perf_counter() - t0

    frames_per_batch = args.batch * args.clip_len
    # (label, model overrides): the tiny model's HOG input, and EmoNet's preprocessing.
    crops = [("64 px (tiny: HOG)", {}), ("256 px (EmoNet, mean 0 std 1)", {"video": {"name": "emonet"}})]
    rows: list[dict] = []
    n_windows = None
    for crop_name, overrides in crops:
        data = DataConfig(kind="synthetic", root=str(root), face_mode="full", clip_len=args.clip_len,
                          val_fraction=0.0, batch_size=args.batch)
        cfg = ExperimentConfig(model="tiny", model_overrides=overrides, data=data)
        model = build_model(cfg)
        datasets = build_datasets(cfg.data, model)
        audio = model.use_audio
        del model  # only its preprocessing (pretrained_cfg) was needed
        dataset, n_windows = datasets.train, len(datasets.train)
        # Shuffled windows as in training, repeated when the run needs more batches than an epoch
        # has, so every worker count reads the same windows in the same order.
        g = torch.Generator().manual_seed(0)
        need = args.batch * (args.batches + 1)
        order = [int(i) for _ in range(-(-need // n_windows)) for i in torch.randperm(n_windows, generator=g)]
        for workers in args.workers:
            name = f"{workers} workers, {crop_name}, audio {'on' if audio else 'off'}"
            print(f"[data] {name} ...", file=sys.stderr, flush=True)
            loader = DataLoader(dataset, batch_size=args.batch, sampler=order[:need], collate_fn=datasets.collate_fn,
                                num_workers=workers, generator=torch.Generator().manual_seed(0))

            def batches() -> Iterator[dict]:  # starts the workers on the first next(), inside the timing
                yield from loader

            stream = batches()
            # Mean, not median: with workers, prefetched batches arrive in bursts.
            seconds, first = time_call(lambda: next(stream), warmup=1, iters=args.batches,
                                       sync=lambda: None, stat=np.mean)
            stream.close()
            rows.append({
                "variant": name,
                "workers": workers,
                "crop": crop_name,
                "audio": audio,
                "frames_per_s": frames_per_batch / seconds,
                "ms_per_batch": 1000 * seconds,
                "first_batch_s": first,
            })
    if tmp is not None:
        tmp.cleanup()

    table = markdown_table(
        rows,
        [
            ("variant", "variant (workers, crop size, audio)", ""),
            ("frames_per_s", "frames/s", ".0f"),
            ("ms_per_batch", "ms/batch", ".0f"),
            ("first_batch_s", "first batch (s)", ".2f"),
        ],
    )
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": cpu_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "dataset": {"clips": syn.clips, "frames": syn.frames, "size": syn.size, "fps": syn.fps, "seed": syn.seed,
                    "root": str(args.root) if args.root else None, "generate_s": generate_s},
        "batch": args.batch,
        "clip_len": args.clip_len,
        "windows": n_windows,
        "timed_batches": args.batches,
        "pipeline": f"avfusion.data.build.build_datasets (train part: stride {data.stride}, augmentation, "
        "face_mode full, 16 kHz audio) + DataLoader(collate) over shuffled windows",
        "timing": "first batch: from creating the loader's iterator (worker start-up) to the first batch; "
        "then mean seconds per batch over the timed batches; frames/s = batch * clip_len / that",
        "rows": rows,
        "table": table,
    }


# --- command line ----------------------------------------------------------------------------------

# --- predict (end to end) ---------------------------------------------------------------------------

# The child reports its peak from /proc/self/status (VmHWM: this process image since exec);
# getrusage's ru_maxrss would include the forked parent's memory (it survives exec on Linux).
_CHILD = (
    "import json, resource, sys, time\n"
    "from avfusion.cli.{command} import main\n"
    "t = time.perf_counter(); rc = main(sys.argv[1:]); dt = time.perf_counter() - t\n"
    "try:\n"
    "    peak = int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) / 1024\n"
    "except (OSError, IndexError):\n"
    "    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
    "print('BENCH ' + json.dumps({'rc': rc, 'seconds': dt, 'peak_rss_mb': peak}))\n"
)


def _run_child(argv: list[str], threads: int, command: str = "predict") -> dict:
    """``avfusion COMMAND argv`` in a fresh process: its seconds (inside main) and peak resident memory."""
    import subprocess

    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, "-c", _CHILD.replace("{command}", command), *argv],
                          capture_output=True, text=True, env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"predict failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    return json.loads(line[len("BENCH "):])


def _bare_emonet(weights: Path, batch: int, iters: int) -> dict:
    """The bare network on 256x256 crops, float32 eager and the bf16 fast path, at ``batch``."""
    from .encoders.emonet import EmoNet, load_emonet_checkpoint, optimize_for_inference

    model = load_emonet_checkpoint(EmoNet(n_expression=8), weights).eval()
    x = astronaut_face().repeat(batch, 1, 1, 1)

    def plain() -> object:
        with torch.inference_mode():
            return model(x)

    fast = optimize_for_inference(model, torch.bfloat16, channels_last=True)
    out = {}
    for name, fn in (("fp32_eager", plain), ("bf16_fast_path", lambda: fast(x))):
        seconds, _ = time_call(fn, 1, iters, lambda: None)
        out[name] = batch / seconds
    return out


def synthetic_emonet_file(work: Path) -> Path:
    """EmoNet-8 with the parity recipe's weights, saved like the official file (``module.`` keys),
    once per work folder: what the predict and zero-shot sections load through ``--checkpoint``."""
    from .encoders.emonet import EmoNet

    weights = work / "emonet_8_synthetic.pth"
    if not weights.is_file():
        net = EmoNet(n_expression=8)
        torch.save({f"module.{k}": v for k, v in synthetic_emonet_weights(net).items()}, weights)
    return weights


def bench_predict(args: argparse.Namespace) -> dict:
    """`avfusion predict` end to end on a generated 720p talking-face video vs the bare network."""
    import tempfile

    from .data.faces import resolve_yunet_model
    from .synthetic.talking import write_talking_video

    work = Path(args.workdir or tempfile.mkdtemp(prefix="avfusion-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    video = work / f"talk_{args.seconds:g}s_720p.mp4"
    if not video.is_file():
        print(f"[predict] writing {video} ...", file=sys.stderr, flush=True)
        write_talking_video(video, seconds=args.seconds, width=1280, height=720, fps=25)
    n_frames = int(round(args.seconds * 25))
    weights = synthetic_emonet_file(work)
    try:
        face = ["--face-backend", "yunet", "--yunet-model", str(resolve_yunet_model(args.yunet_model))]
    except FileNotFoundError:
        face = ["--face-backend", "full"]
    print("[predict] bare EmoNet ...", file=sys.stderr, flush=True)
    bare = _bare_emonet(weights, args.batch, args.iters)
    rows = []
    for model, stride, compile in args.variants:
        name = f"{model}, stride {stride}" + (", compiled" if compile else "")
        print(f"[predict] {name} ...", file=sys.stderr, flush=True)
        argv = [str(video), "--out", str(work / "out"), "--no-plot", "--quiet", "--batch-size", str(args.batch),
                *face, "--stride", str(stride)]
        argv += (["--model", "emonet_8", "--checkpoint", str(weights)] if model == "emonet_8" else ["--model", model])
        if compile:
            argv.append("--compile")
        res = _run_child(argv, args.threads)
        fps = n_frames / res["seconds"]
        rows.append({"variant": name, "model": model, "stride": stride, "compile": compile,
                     "frames_per_s": fps, "realtime_factor": fps / 25.0, "peak_rss_mb": res["peak_rss_mb"],
                     "vs_bare_fast_path": fps / bare["bf16_fast_path"] if model == "emonet_8" else None,
                     "vs_fp32_eager": fps / bare["fp32_eager"] if model == "emonet_8" else None})
    table = markdown_table(rows, [
        ("variant", "predict", ""), ("frames_per_s", "video frames/s", ".2f"),
        ("realtime_factor", "x real time (25 fps)", ".2f"), ("vs_bare_fast_path", "/ bare bf16 fast path", ".2f"),
        ("vs_fp32_eager", "/ bare fp32 eager", ".2f"), ("peak_rss_mb", "peak RSS (MB)", ".0f")])
    table += (f"\n\nBare EmoNet-8 at batch {args.batch} in the same run: fp32 eager {bare['fp32_eager']:.2f} "
              f"frames/s, bf16 + channels_last {bare['bf16_fast_path']:.2f} frames/s.")
    return {
        "section_key": f"predict_{args.seconds:g}s",  # runs on different video lengths are kept apart
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": cpu_name(), "cpu_flags": cpu_flags(), "torch": torch.__version__, "threads": args.threads,
        "video": {"seconds": args.seconds, "frames": n_frames, "size": "1280x720", "fps": 25,
                  "face_backend": face[1], "audio": "AAC 16 kHz"},
        "weights": "EmoNet-8 full size, synthetic weights (parity recipe)",
        "timing": "seconds inside `avfusion predict`'s main() in a fresh process (model load, decoding, "
                  "face detection, network, writing the table); peak RSS of that process",
        "bare": bare, "rows": rows, "table": table,
    }


def bench_zeroshot(args: argparse.Namespace) -> dict:
    """``avfusion evaluate`` of EmoNet-8 (full size) zero-shot on a generated AFEW-VA tree: speed and
    peak memory of the engine path, in a fresh process per precision."""
    import tempfile

    from .synthetic import SyntheticConfig, generate_dataset

    work = Path(args.workdir or tempfile.mkdtemp(prefix="avfusion-bench-"))
    root = work / f"afew_{args.clips}x{args.frames}_{args.size}px"
    if not (root / "metadata.json").is_file():
        print(f"[zeroshot] writing {root} ...", file=sys.stderr, flush=True)
        generate_dataset(root, SyntheticConfig(clips=args.clips, frames=args.frames, size=args.size, pair=False))
    weights = synthetic_emonet_file(work)
    n_frames = args.clips * args.frames
    rows = []
    for precision in args.precisions:
        print(f"[zeroshot] precision {precision} ...", file=sys.stderr, flush=True)
        res = _run_child(["--model", "emonet_8", "--checkpoint", str(weights), "--data-kind", "afew_va",
                          "--root", str(root / "AFEW-VA"), "--out", str(work / f"eval_{precision}"), "--no-plots",
                          "--precision", precision, "--cpu"], args.threads, command="evaluate")
        rows.append({"variant": f"evaluate emonet_8 zero-shot, {precision}, flip-averaged (as the config)",
                     "frames_per_s": n_frames / res["seconds"], "seconds": res["seconds"],
                     "peak_rss_mb": res["peak_rss_mb"]})
    table = markdown_table(rows, [("variant", "zero-shot evaluation", ""), ("frames_per_s", "frames/s", ".2f"),
                                  ("seconds", "seconds", ".0f"), ("peak_rss_mb", "peak RSS (MB)", ".0f")])
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": cpu_name(), "cpu_flags": cpu_flags(), "torch": torch.__version__, "threads": args.threads,
        "dataset": {"layout": "AFEW-VA (frame folders + landmarks JSON)", "clips": args.clips,
                    "frames_per_clip": args.frames, "size": args.size},
        "timing": "seconds inside `avfusion evaluate`'s main() in a fresh process; peak RSS of that process",
        "rows": rows, "table": table,
    }


# --- the whole benchmark: `avfusion bench [--quick] [--out DIR] [--device cpu|cuda]` -----------------
#
# One run measures every stage side by side (same machine, same minutes) and writes DIR/bench.json
# and DIR/bench.md; `avfusion bench readme` puts bench.md's tables in the README. Every figure is a
# median with its min-max over repeats, and the machine (CPU model, cores, ISA flags, torch,
# threads) is written beside it.

BENCH_KIND = "avfusion-bench"
BENCH_STAGES = ("emonet", "encoders", "decode", "predict", "train", "cache", "cuda")
INT8_MAX_VA_DEV = 0.05  # an int8 EmoNet would be reported only within this relative deviation from fp32

# AFEW-VA: 600 clips, 30,051 frames; Aff-Wild2 figures are given per 1M frames.
AFEW_CLIPS, AFEW_FRAMES = 600, 30_051

QUICK = {"repeats": 2, "video_seconds": 6.0, "vit_batch": 8, "audio_seconds": 5.0, "affwild_frames": 10_000,
         "train_epochs": 1, "train_variants": ["bf16:16", "bf16:64"], "cache_clips": 1, "cache_frames": 32,
         "compile": False}
FULL = {"repeats": 5, "video_seconds": 20.0, "vit_batch": 8, "audio_seconds": 10.0, "affwild_frames": 100_000,
        "train_epochs": 3, "train_variants": ["bf16:16", "no:16", "bf16:64", "no:64", "bf16:64:32"], "cache_clips": 4,
        "cache_frames": 64, "compile": True}
QUICK_SKIPS = ("torch.compile variants (EmoNet compiled at each batch: ~20 s of compilation per shape)",
               "fewer repeats (2 instead of 5) and a 6 s video instead of 20 s",
               "training: 1 timed epoch per setting (after 5 warm-up steps), 2 of the 5 settings, "
               "Aff-Wild2 rate from 10k frames instead of 100k",
               "feature caching on fewer frames")


def spread(values: list[float]) -> dict:
    """Median, min, max and count of repeated measurements."""
    a = np.asarray(values, dtype=float)
    return {"median": float(np.median(a)), "min": float(a.min()), "max": float(a.max()), "n": int(a.size)}


def fmt_spread(s: dict | None, spec: str = ".2f") -> str:
    """``median (min-max)`` of a :func:`spread`; just the median when there was one repeat."""
    if not s:
        return "—"
    if s["n"] < 2 or s["min"] == s["max"]:
        return format(s["median"], spec)
    return f"{s['median']:{spec}} ({s['min']:{spec}}–{s['max']:{spec}})"


def time_repeats(fn: Callable[[], object], repeats: int, sync: Callable[[], None] = lambda: None,
                 warmup: int = 1) -> tuple[list[float], float, object]:
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


def _rates(times: list[float], units: float) -> dict:
    return spread([units / t for t in times])


def _log(stage: str, text: str) -> None:
    print(f"[bench {stage}] {text}", file=sys.stderr, flush=True)


def _emonet_net(device: str = "cpu") -> torch.nn.Module:
    from .encoders.emonet import EmoNet

    model = EmoNet(n_expression=8)
    model.load_state_dict(synthetic_emonet_weights(model))
    return model.eval().to(device)


def _va(out: dict) -> torch.Tensor:
    return torch.stack([out["valence"][0], out["arousal"][0]]).float().cpu()


def stage_emonet(o: argparse.Namespace, shared: dict) -> dict:
    """EmoNet-8 frames/s at each batch: fp32 eager (the official graph), the bf16 + channels_last
    fast path, compiled (inductor, freezing); int8 where it is supported well."""
    from .encoders.emonet import optimize_for_inference

    model = _emonet_net()
    face = astronaut_face()
    fast = optimize_for_inference(model, torch.bfloat16, channels_last=True)

    def plain(x: torch.Tensor) -> dict:
        with torch.inference_mode():
            return model(x)

    rows = []
    for batch in o.batches:
        x = face.repeat(batch, 1, 1, 1)
        variants: list[tuple[str, str, Callable]] = [("fp32_eager", "float32 eager (reference)", plain),
                                                     ("fast_eager", "bf16 + channels_last eager", fast)]
        if o.compile:
            torch._dynamo.reset()  # a fresh graph per batch size (no automatic dynamic shapes)
            variants.append(("compiled", "bf16 + channels_last, torch.compile (inductor, freezing)",
                             optimize_for_inference(model, torch.bfloat16, channels_last=True, compile=True)))
        ref = None
        for key, label, fn in variants:
            _log("emonet", f"batch {batch}: {label}")
            times, first, out = time_repeats(lambda: fn(x), o.repeats)
            va = _va(out)
            fps = _rates(times, batch)
            row = {"batch": batch, "variant": key, "label": label, "frames_per_s": fps, "first_call_s": first}
            if ref is None:
                ref = (va, fps["median"])
                row["speedup_vs_fp32"] = 1.0
                row["va"] = va.tolist()
            else:
                row["speedup_vs_fp32"] = fps["median"] / ref[1]
                row["va"] = va.tolist()
                row["va_max_abs_dev"] = float((va - ref[0]).abs().max())
                # Synthetic weights do not keep valence/arousal in [-1, 1]: relative to fp32's largest.
                row["va_max_rel_dev"] = row["va_max_abs_dev"] / float(ref[0].abs().max())
            rows.append(row)
    if "amx_int8" not in cpu_flags():
        int8 = ("not run: this CPU has no AMX-INT8 (oneDNN int8 convolutions would run on AVX512-VNNI, "
                "without the AMX tiles that make int8 pay); avfusion has no int8 EmoNet path yet")
    else:
        int8 = ("not run: avfusion has no int8 EmoNet path yet (PT2E X86InductorQuantizer would be the way; "
                f"it would be reported only within {INT8_MAX_VA_DEV} relative deviation of fp32 valence/arousal)")
    fast_ratio = {str(r["batch"]): r["speedup_vs_fp32"] for r in rows if r["variant"] == "fast_eager"}
    shared["emonet_rows"] = rows
    table = markdown_table(
        [dict(r, fps=fmt_spread(r["frames_per_s"]), first=f"{r['first_call_s']:.1f}") for r in rows],
        [("batch", "batch", ""), ("label", "EmoNet-8 variant", ""), ("fps", "frames/s median (min–max)", ""),
         ("speedup_vs_fp32", "× fp32 eager", ".2f"), ("va_max_rel_dev", "valence/arousal deviation vs fp32", ".1e"),
         ("first", "first call (s)", "")])
    return {"rows": rows, "fast_over_fp32": fast_ratio, "int8": int8, "table": table,
            "notes": [f"int8: {int8}.",
                      "Input: the parity face (astronaut, 256x256) repeated to the batch; synthetic weights by the "
                      "parity recipe; deviation = max |out - fp32| / max |fp32| over valence and arousal of the "
                      "first face at the same batch (synthetic weights do not keep them in [-1, 1])."]}


def stage_encoders(o: argparse.Namespace, shared: dict) -> dict:
    """MAE ViT-B/16 frames/s and wav2vec2-base seconds of audio per second (random weights)."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from .encoders.base import inference_copy
    from .encoders.vit import MAEViTEncoder

    rows = []
    torch.manual_seed(0)
    vit = MAEViTEncoder("vit_base_patch16_224").eval()
    x = torch.randn(o.vit_batch, 3, 224, 224)
    w2v = Wav2Vec2Model(Wav2Vec2Config()).eval()
    wave = torch.randn(1, int(16000 * o.audio_seconds))
    for name, module, inp, units, unit in (("MAE ViT-B/16 (timm vit_base_patch16_224)", vit, x, o.vit_batch, "frames/s"),
                                           ("wav2vec2-base (Wav2Vec2Config defaults)", w2v, wave, o.audio_seconds,
                                            "s of audio / s")):
        for precision, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            _, run = inference_copy(module, dtype)
            inp_d = inp.to(dtype) if dtype is not None else inp

            def call() -> object:
                with torch.inference_mode():
                    return run(inp_d)

            _log("encoders", f"{name} {precision}")
            times, first, _ = time_repeats(call, o.repeats)
            rows.append({"model": name, "precision": precision, "unit": unit, "rate": _rates(times, units),
                         "first_call_s": first,
                         "input": f"batch {o.vit_batch} x 3x224x224" if module is vit else f"{o.audio_seconds:g} s at 16 kHz"})
    table = markdown_table([dict(r, r=fmt_spread(r["rate"])) for r in rows],
                           [("model", "encoder (random weights)", ""), ("precision", "precision", ""),
                            ("input", "input", ""), ("r", "rate median (min–max)", ""), ("unit", "unit", "")])
    return {"rows": rows, "table": table, "notes": []}


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
        rows.append({"decoder": name, "frames": n, "frames_per_s": _rates(times, n), "first_s": first})
    base = rows[0]["frames_per_s"]["median"]
    for r in rows:
        r["vs_decord"] = r["frames_per_s"]["median"] / base
    table = markdown_table([dict(r, fps=fmt_spread(r["frames_per_s"], ".0f")) for r in rows],
                           [("decoder", "decoding 1280x720 H.264 to RGB", ""), ("fps", "frames/s median (min–max)", ""),
                            ("vs_decord", "× decord", ".2f")])
    return {"video": {"path_name": video.name, "seconds": o.video_seconds, "size": "1280x720", "fps": 25},
            "rows": rows, "table": table, "notes": []}


def _bare_fast(batch: int, repeats: int, device: str = "cpu") -> dict:
    """The bare EmoNet-8 bf16 fast path at ``batch``: frames/s."""
    from .encoders.emonet import optimize_for_inference

    fast = optimize_for_inference(_emonet_net(), torch.bfloat16, channels_last=True, device=device)
    x = astronaut_face().repeat(batch, 1, 1, 1)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times, _, _ = time_repeats(lambda: fast(x), repeats, sync=sync)
    return _rates(times, batch)


def stage_predict(o: argparse.Namespace, shared: dict, device: str = "cpu") -> dict:
    """`avfusion predict` end to end (fresh process: model load, decoding, faces, network, table)."""
    from .data.faces import resolve_yunet_model

    video = _bench_video(o, shared)
    n_frames = int(round(o.video_seconds * 25))
    work = Path(shared["work"])
    weights = synthetic_emonet_file(work)
    try:
        face = ["--face-backend", "yunet", "--yunet-model", str(resolve_yunet_model(None))]
    except FileNotFoundError:
        face = ["--face-backend", "full"]
    bare = None
    for r in shared.get("emonet_rows", []) if device == "cpu" else []:
        if r["batch"] == o.predict_batch and r["variant"] == "fast_eager":
            bare = r["frames_per_s"]
    if bare is None:
        _log("predict", f"bare EmoNet-8 fast path at batch {o.predict_batch} ({device})")
        bare = _bare_fast(o.predict_batch, o.repeats, device)
    rows = []
    variants = o.predict_variants if device == "cpu" else ["emonet_8:1", "emonet_8:4"]
    for spec in variants:
        model, stride = spec.split(":")[0], int(spec.split(":")[1])
        name = f"{model}, stride {stride}"
        _log("predict", f"{name} ({device})")
        argv = [str(video), "--out", str(work / f"predict_{device}"), "--no-plot", "--quiet", "--batch-size",
                str(o.predict_batch), "--device", device, *face, "--stride", str(stride)]
        argv += (["--model", "emonet_8", "--checkpoint", str(weights)] if model == "emonet_8" else ["--model", model])
        res = _run_child(argv, o.threads)
        fps = n_frames / res["seconds"]
        rows.append({"variant": name, "model": model, "stride": stride, "frames_per_s": fps,
                     "realtime_factor": fps / 25.0, "peak_rss_mb": res["peak_rss_mb"], "seconds": res["seconds"],
                     "vs_bare_fast_path": fps / bare["median"] if model == "emonet_8" else None})
    table = markdown_table(rows, [("variant", f"avfusion predict ({device})", ""), ("frames_per_s", "video frames/s", ".2f"),
                                  ("realtime_factor", "× real time (25 fps)", ".2f"),
                                  ("vs_bare_fast_path", "/ bare bf16 fast path", ".2f"),
                                  ("peak_rss_mb", "peak RSS (MB)", ".0f")])
    notes = [f"Video: {o.video_seconds:g} s, 1280x720, 25 fps, H.264 + AAC, one synthetic talking face; "
             f"faces: {face[1]}; batch {o.predict_batch}; precision auto. One run per variant in a fresh "
             "process: seconds inside `avfusion predict`'s main() (model load, decoding, face detection, "
             "network, writing the table), so start-up weighs more on a short video.",
             f"Bare EmoNet-8 bf16 + channels_last at batch {o.predict_batch} in the same run: "
             f"{fmt_spread(bare)} frames/s; '/ bare' is predict's frames/s over that median (the predict "
             "target: close to 1 at stride 1)."]
    return {"rows": rows, "bare_fast_path": bare, "table": table, "notes": notes,
            "video": {"seconds": o.video_seconds, "frames": n_frames, "face_backend": face[1]}}


# --- training on cached features ---

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
    """bf16 EmoNet-8 at batch 32 and 256 and predict end to end on the GPU."""
    if o.device != "cuda":
        return {"status": "not run (--device cpu)", "table": "CUDA: not run (--device cpu).", "rows": [], "notes": []}
    if not torch.cuda.is_available():
        return {"status": "not run (no GPU)", "table": "CUDA: not run (no GPU).", "rows": [], "notes": []}
    rows = []
    for batch in (32, 256):
        _log("cuda", f"EmoNet-8 bf16 batch {batch}")
        rows.append({"what": f"EmoNet-8 bf16 + channels_last, batch {batch}",
                     "frames_per_s": _bare_fast(batch, o.repeats, "cuda")})
    pred = stage_predict(o, shared, device="cuda")
    gpu = torch.cuda.get_device_name(0)
    table = markdown_table([dict(r, f=fmt_spread(r["frames_per_s"], ".0f")) for r in rows],
                           [("what", f"CUDA ({gpu})", ""), ("f", "frames/s median (min–max)", "")])
    return {"status": "run", "gpu": gpu, "rows": rows, "predict": pred,
            "table": table + "\n\n" + pred["table"], "notes": pred["notes"]}


STAGE_FUNCS: dict[str, Callable[[argparse.Namespace, dict], dict]] = {
    "emonet": stage_emonet, "encoders": stage_encoders, "decode": stage_decode, "predict": stage_predict,
    "train": stage_train, "cache": stage_cache, "cuda": stage_cuda}

STAGE_TITLES = {
    "emonet": "EmoNet-8 per-frame network (256x256 crops)",
    "encoders": "Other frozen encoders",
    "decode": "Decoding 720p video",
    "predict": "`avfusion predict` end to end (720p 25 fps talking face with audio)",
    "train": "Fusion training on cached features",
    "cache": "Feature caching",
    "cuda": "CUDA",
}


def machine_line(m: dict) -> str:
    flags = ", ".join(m.get("cpu_flags") or []) or "none of the reported flags"
    amx = "AMX" if any(f.startswith("amx") for f in m.get("cpu_flags") or []) else "no AMX"
    gpu = f"; GPU {m['gpu']}" if m.get("gpu") else ""
    return (f"{m.get('cpu')}, {m.get('cores')} cores ({flags}; {amx}), {m.get('threads')} torch threads, "
            f"torch {m.get('torch')}{gpu}")


def bench_markdown(result: dict) -> str:
    """bench.md: the run's tables, each under the machine it ran on."""
    m = result["machine"]
    lines = [f"_`{result.get('command', 'avfusion bench')}`, {result['date'][:16].replace('T', ' ')}: "
             f"{machine_line(m)}; total {result.get('total_s', 0):.0f} s"
             + (f"; {result['note']}" if result.get("note") else "") + "_", ""]
    s = result.get("summary") or {}
    if s:
        bits = []
        if s.get("emonet_fast_over_fp32"):
            bits.append("EmoNet-8 fast path over fp32 eager: " + ", ".join(
                f"{v:.2f}× at batch {k}" for k, v in s["emonet_fast_over_fp32"].items()))
        if s.get("predict_over_bare_fast_path"):
            bits.append("predict end to end / bare fast path: " + ", ".join(
                f"{v:.2f} ({k})" for k, v in s["predict_over_bare_fast_path"].items()))
        if s.get("afew_epoch_s") is not None:
            bits.append(f"fusion training, one AFEW-VA-sized epoch: {s['afew_epoch_s']:.1f} s with the experiment's "
                        f"settings, {s['afew_epoch_s_best']:.1f} s at best ({s['afew_best_setting']})")
        lines += ["**Summary.** " + "; ".join(bits) + ".", ""]
    if result.get("quick"):
        lines += ["Quick mode skips: " + "; ".join(result.get("quick_skips", [])) + ".", ""]
    loads = [x for r in result["stages"].values() for x in (r.get("loadavg_1min_before_after") or []) if x is not None]
    if loads and m.get("cores") and max(loads) > 0.5 * m["cores"]:
        lines += [f"**Busy machine:** the 1-minute load average reached {max(loads):.1f} on {m['cores']} cores during "
                  "this run (other jobs), so its speeds are lower than an idle machine's; ratios measured in the "
                  "same stage suffer less.", ""]
    for stage in BENCH_STAGES:
        r = result["stages"].get(stage)
        if r is None:
            continue
        lines.append(f"### {STAGE_TITLES[stage]}")
        lines.append("")
        if "error" in r:
            lines += [f"Not measured: {r['error']}", ""]
            continue
        load = r.get("loadavg_1min_before_after")
        lines.append(r["table"])
        lines.append("")
        for note in r.get("notes", []):
            lines += [note, ""]
        if load and load[0] is not None:
            lines += [f"_{r.get('seconds', 0):.0f} s; 1-minute load average {load[0]:.1f} before, {load[1]:.1f} after._", ""]
    return "\n".join(lines).rstrip() + "\n"


def _summary(stages: dict) -> dict:
    s: dict = {}
    e = stages.get("emonet") or {}
    if e.get("fast_over_fp32"):
        s["emonet_fast_over_fp32"] = e["fast_over_fp32"]
    p = stages.get("predict") or {}
    ratios = {r["variant"]: r["vs_bare_fast_path"] for r in p.get("rows", []) if r.get("vs_bare_fast_path")}
    if ratios:
        s["predict_over_bare_fast_path"] = ratios
    t = stages.get("train") or {}
    if t.get("rows"):
        s["afew_epoch_s"] = t["afew_epoch_s_config"]
        s["afew_epoch_s_best"] = t["afew_epoch_s_best"]
        s["afew_best_setting"] = t["afew_best_setting"]
        s["affwild2_s_per_1M_frames"] = t["affwild2"]["seconds_per_1M_frames"]
    c = stages.get("cuda") or {}
    s["cuda"] = c.get("status", "not run")
    return s


def run_all(o: argparse.Namespace) -> dict:
    """Every stage of ``o.stages`` in one run; writes OUT/bench.json and OUT/bench.md after each."""
    import tempfile

    settings = QUICK if o.quick else FULL
    for key, value in settings.items():
        if getattr(o, key, None) is None:
            setattr(o, key, value)
    if o.no_compile:
        o.compile = False
    out = Path(o.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = None
    if o.workdir:
        Path(o.workdir).mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="avfusion-bench-")
    shared: dict = {"work": o.workdir or tmp.name}
    from .inference.hardware import machine_info

    result = {
        "kind": BENCH_KIND, "version": 1,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": "avfusion bench" + (" --quick" if o.quick else ""),
        "quick": bool(o.quick), "quick_skips": list(QUICK_SKIPS) if o.quick else [],
        "machine": machine_info("cuda" if o.device == "cuda" else "cpu"),
        "settings": {k: getattr(o, k) for k in ("repeats", "batches", "video_seconds", "vit_batch", "audio_seconds",
                                                "predict_batch", "predict_variants", "train_clips", "train_frames",
                                                "train_variants", "train_epochs", "affwild_frames", "cache_clips",
                                                "cache_frames", "compile", "device", "stages")},
        "timing": "each figure: median (min-max) over the repeats after one untimed first call; first calls "
                  "(compilation, kernel creation) are reported apart",
        "stages": {}, "note": o.note or "",
    }
    t_start = time.perf_counter()
    try:
        for stage in BENCH_STAGES:
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
            _write_bench(out, result)
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(bench_markdown(result))
    print(f"wrote {out / 'bench.json'} and {out / 'bench.md'} ({result['total_s']:.0f} s)")
    return result


def _write_bench(out: Path, result: dict) -> None:
    tmp = out / "bench.json.tmp"
    tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
    tmp.replace(out / "bench.json")
    (out / "bench.md").write_text(bench_markdown(result))


# --- README section ---------------------------------------------------------------------------------

README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"

# What each section measures, in the README's words (sections absent from the results are left out).
_CAPTIONS = {
    "predict_12s": "`avfusion predict` end to end on a generated 12 s 720p 25 fps talking-face video (YuNet "
                   "faces, EmoNet-8 at full size with synthetic parity weights), against the bare network "
                   "measured in the same run (`avfusion bench predict`):",
    "predict_600s": "The same on a 10-minute 720p video (15,000 frames), for peak memory: it must not grow "
                    "with the video's length (`avfusion bench predict --seconds 600 --variants emonet_8:1 "
                    "tiny:1`):",
    "zeroshot": "`avfusion evaluate` of EmoNet-8 zero-shot through the same engine on a generated AFEW-VA "
                "tree (4 clips x 48 frames of 512x512 PNGs + landmarks; flip-averaged as the emonet_8 config "
                "says; `avfusion bench zeroshot`):",
    "emonet": "The bare EmoNet-8 network (full size, synthetic parity weights), batch 8 at 256x256 "
              "(`avfusion bench emonet`); deviation = max |out - fp32| / max |fp32| over valence, arousal "
              "and the 8 logits on the astronaut face:",
    "data": "Training batches of 8 clips x 32 frames (decord frames + PyAV audio, face crop, training "
            "transform) from the synthetic mp4s (`avfusion bench data`):",
}


def readme_section(results: dict) -> str:
    """The README's performance tables from ``results`` (benchmarks/results.json), each with the
    machine it ran on."""
    if results.get("kind") == BENCH_KIND:
        return ("Measured by one `avfusion bench` run (`--out benchmarks`); the tables below are rewritten from "
                "its `benchmarks/bench.json` by `avfusion bench readme` (or `avfusion bench --readme` in one go).\n\n"
                + bench_markdown(results).rstrip())
    parts = []
    for key, caption in _CAPTIONS.items():
        r = results.get(key)
        if not r:
            continue
        flags = ", ".join(r.get("cpu_flags") or []) or "flags not recorded"
        machine = (f"{r.get('device')} ({flags}), {r.get('threads')} threads, torch {r.get('torch')}, "
                   f"{str(r.get('date', ''))[:10]}" + (f"; {r['note']}" if r.get("note") else ""))
        parts.append(f"{caption}\n\n_{machine}_\n\n{r['table']}")
    return "\n\n".join(parts)


def update_readme(readme: Path, *sources: Path) -> Path:
    """Rewrite the part of ``readme`` between the bench markers from the results files ``sources``
    (a run's bench.json and/or the per-section results.json), in that order; missing ones are skipped."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme}: no {README_START} ... {README_END} markers to write between")
    found = [Path(p) for p in sources if Path(p).is_file()]
    if not found:
        raise FileNotFoundError(f"no results to write into {readme}: none of {[str(p) for p in sources]} exists "
                                "(run `avfusion bench` first)")
    body = "\n\n".join(readme_section(json.loads(p.read_text())) for p in found)
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    new = f"{head}{README_START}\n{body}\n{README_END}{tail}"
    tmp = readme.with_suffix(".tmp")
    tmp.write_text(new)
    tmp.replace(readme)
    return readme


SECTIONS: dict[str, Callable[[argparse.Namespace], dict]] = {"emonet": bench_emonet, "data": bench_data,
                                                              "predict": bench_predict, "zeroshot": bench_zeroshot}


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The benchmark's options and sections on ``parser`` (``avfusion bench``)."""
    # The common options go before or after the section name; after it they must not reset
    # values given before it, hence SUPPRESS defaults in the sections' copy.
    common = argparse.ArgumentParser(add_help=False)
    for target, defaults in ((parser, True), (common, False)):
        target.add_argument("--output", type=Path, default=DEFAULT_OUTPUT if defaults else argparse.SUPPRESS,
                            help="results JSON (sections merged)")
        target.add_argument("--threads", type=int, default=os.cpu_count() if defaults else argparse.SUPPRESS,
                            help="torch threads (default: all cores)")
        target.add_argument("--note", default="" if defaults else argparse.SUPPRESS,
                            help="free text stored with the results (machine state, ...)")
    # The whole benchmark (no section named): every stage in one run.
    whole = parser.add_argument_group("the whole benchmark (`avfusion bench` without a section)")
    whole.add_argument("--quick", action="store_true",
                       help="under 5 minutes on 2 cores: no compile, fewer repeats, smaller sizes (listed in the output)")
    whole.add_argument("--out", type=Path, default=Path("benchmarks"), help="folder for bench.json and bench.md")
    whole.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                       help="cuda: also fill the CUDA column (bf16 EmoNet at batch 32 and 256, predict)")
    whole.add_argument("--stages", nargs="+", default=list(BENCH_STAGES), choices=BENCH_STAGES, metavar="STAGE",
                       help=f"stages to run (default all: {' '.join(BENCH_STAGES)})")
    whole.add_argument("--readme", nargs="?", type=Path, const=Path("README.md"), default=None, metavar="README",
                       help="then rewrite the README's performance section from this run (default README.md)")
    whole.add_argument("--repeats", type=int, default=None, help="timed repeats per figure (quick 2, full 5)")
    whole.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32], help="EmoNet batch sizes")
    whole.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    whole.add_argument("--video-seconds", type=float, default=None, help="length of the 720p video (quick 6, full 20)")
    whole.add_argument("--vit-batch", type=int, default=None, help="MAE ViT-B/16 batch (8)")
    whole.add_argument("--audio-seconds", type=float, default=None, help="wav2vec2 input length (quick 5, full 10)")
    whole.add_argument("--predict-batch", type=int, default=16, help="predict's --batch-size (its default, 16)")
    whole.add_argument("--predict-variants", nargs="+", default=["emonet_8:1", "emonet_8:4", "tiny:1", "tiny:4"],
                       metavar="MODEL:STRIDE", help="predict runs (model name and stride)")
    whole.add_argument("--train-clips", type=int, default=AFEW_CLIPS, help="clips of the AFEW-VA-sized cache (600)")
    whole.add_argument("--train-frames", type=int, default=AFEW_FRAMES, help="frames of the AFEW-VA-sized cache (30051)")
    whole.add_argument("--train-variants", nargs="+", default=None, metavar="PRECISION:BATCH",
                       help="training settings PRECISION:BATCH[:STRIDE] (bf16|no; stride default 16, the experiment's); "
                            "quick: bf16:16 bf16:64")
    whole.add_argument("--train-epochs", type=int, default=None, help="timed epochs per setting (quick 1, full 3)")
    whole.add_argument("--affwild-frames", type=int, default=None,
                       help="frames of the Aff-Wild2-like cache the per-1M-frames rate is measured on")
    whole.add_argument("--cache-clips", type=int, default=None, help="clips for the EmoNet feature-caching figure")
    whole.add_argument("--cache-frames", type=int, default=None, help="frames per clip for the caching figures")
    whole.add_argument("--workdir", default=None, help="keep the generated video, caches and weights here")
    whole.add_argument("--strict", action="store_true", help="stop at a failing stage (default: record its error)")
    sub = parser.add_subparsers(dest="section", required=False)
    emonet = sub.add_parser("emonet", parents=[common],
                            help="EmoNet frames/s: fp32 eager vs bf16 channels_last (eager, compiled)")
    emonet.add_argument("--batch", type=int, default=8)
    emonet.add_argument("--warmup", type=int, default=2, help="untimed calls (the first compiles)")
    emonet.add_argument("--iters", type=int, default=5)
    emonet.add_argument("--device", default="cpu")
    emonet.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    emonet.add_argument("--checkpoint", default=None, help="emonet_8.pth (default: synthetic weights)")
    data = sub.add_parser("data", parents=[common],
                          help="DataLoader frames/s: batches of clips (video + audio) from synthetic mp4s")
    data.add_argument("--root", type=Path, default=None,
                      help="dataset folder, written unless it holds a manifest.csv (default: a temp folder)")
    data.add_argument("--clips", type=int, default=16)
    data.add_argument("--frames", type=int, default=64, help="frames per synthetic clip")
    data.add_argument("--size", type=int, default=128, help="synthetic frame size (px)")
    data.add_argument("--batch", type=int, default=8, help="clips per batch")
    data.add_argument("--clip-len", type=int, default=32, help="frames per clip (T)")
    data.add_argument("--batches", type=int, default=10, help="timed batches after the first")
    data.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader num_workers to try")
    data.add_argument("--quick", action="store_true", help="smoke test: 4 clips, 2 timed batches")
    pred = sub.add_parser("predict", parents=[common],
                          help="avfusion predict end to end on a generated 720p video vs the bare EmoNet")
    pred.add_argument("--seconds", type=float, default=12.0, help="video length (25 fps)")
    pred.add_argument("--batch", type=int, default=16, help="face crops per network call")
    pred.add_argument("--iters", type=int, default=3, help="timed batches of the bare network")
    pred.add_argument("--workdir", default=None, help="keep the video and weights here (default: a temp folder)")
    pred.add_argument("--yunet-model", default=None, help="YuNet ONNX (default: the usual search; else --face-backend full)")
    pred.add_argument("--variants", type=_variant, nargs="+",
                      default=[_variant(v) for v in ("emonet_8:1", "emonet_8:4", "emonet_8:1:compile",
                                                     "emonet_8:4:compile", "tiny:1")],
                      help="MODEL:STRIDE[:compile] (default: EmoNet-8 at stride 1 and 4, eager and compiled; tiny)")
    readme = sub.add_parser("readme", parents=[common],
                            help="rewrite the README's performance tables (between markers) from the results")
    readme.add_argument("--readme", type=Path, default=Path("README.md"))
    readme.add_argument("--bench", type=Path, default=DEFAULT_BENCH,
                        help="a whole run's bench.json, written first (skipped when absent)")
    zs = sub.add_parser("zeroshot", parents=[common],
                        help="avfusion evaluate of EmoNet-8 zero-shot on a generated AFEW-VA tree: speed, memory")
    zs.add_argument("--clips", type=int, default=4)
    zs.add_argument("--frames", type=int, default=48, help="frames per clip")
    zs.add_argument("--size", type=int, default=512, help="frame size (px, square)")
    zs.add_argument("--precisions", nargs="+", default=["fp32", "auto"], choices=("fp32", "bf16", "auto"))
    zs.add_argument("--workdir", default=None, help="keep the tree and weights here (default: a temp folder)")
    return parser


def _variant(text: str) -> tuple[str, int, bool]:
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[1].isdigit() or (len(parts) == 3 and parts[2] != "compile"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected MODEL:STRIDE or MODEL:STRIDE:compile")
    return parts[0], int(parts[1]), len(parts) == 3


def run(args: argparse.Namespace) -> dict:
    """Run the section ``args`` names, save and print its results."""
    if args.section == "readme":
        path = update_readme(args.readme, args.bench, args.output)
        print(f"rewrote the performance tables of {path} from {args.bench} and {args.output} (those present)")
        return {}
    torch.set_num_threads(args.threads)
    if args.section is None:
        result = run_all(args)
        if args.readme is not None:
            update_readme(args.readme, Path(args.out) / "bench.json", args.output)
            print(f"rewrote the performance section of {args.readme}")
        return result
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    result = SECTIONS[args.section](args)
    # The 1-minute load average around the run tells how much other work shared the CPU.
    result["loadavg_1min_before_after"] = [load_before, os.getloadavg()[0] if load_before is not None else None]
    if args.note:
        result["note"] = args.note
    key = result.pop("section_key", args.section)
    save_section(args.output, key, result)
    print(f"## {args.section} ({result['date']}, {result['device']}, torch {result['torch']}, {result['threads']} threads)\n")
    print(result["table"])
    print(f"\nsaved to {args.output}")
    return result
