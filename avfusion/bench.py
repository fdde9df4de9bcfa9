"""Throughput benchmarks, one section per component.

    avfusion bench emonet [--batch 8 --iters 5 --warmup 2 --no-compile]
    avfusion bench data [--clips 16 --batches 10 --root DIR] [--quick]
    avfusion bench predict [--seconds 12 --variants emonet_8:1 emonet_8:4:compile tiny:1 ...]
    avfusion bench zeroshot [--clips 4 --frames 48 --size 512 --precisions fp32 auto]
    avfusion bench readme   (rewrite the README's performance tables from the results file)

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
from typing import Callable, Iterator

import numpy as np
import torch

from .inference.hardware import cpu_flags, cpu_name

# Relative to the working directory: in a clone, the repository's recorded results.
DEFAULT_OUTPUT = Path("benchmarks") / "results.json"


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


def update_readme(readme: Path, results_path: Path) -> Path:
    """Rewrite the part of ``readme`` between the bench markers from ``results_path``."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme}: no {README_START} ... {README_END} markers to write between")
    results = json.loads(results_path.read_text())
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    new = f"{head}{README_START}\n{readme_section(results)}\n{README_END}{tail}"
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
    sub = parser.add_subparsers(dest="section", required=True)
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
        path = update_readme(args.readme, args.output)
        print(f"rewrote the performance tables of {path} from {args.output}")
        return {}
    torch.set_num_threads(args.threads)
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
