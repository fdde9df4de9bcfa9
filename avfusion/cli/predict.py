"""``avfusion predict``: per-frame valence and arousal of video files, folders or glob patterns:
a table, a summary, a plot and optionally an overlay video per input, and one combined table.

    avfusion predict talk.mp4 --model runs/exp/best --out predictions/
    avfusion predict videos/ --model emonet_8 --checkpoint pretrained/emonet_8.pth --stride 4
    avfusion predict "data/**/*.mp4" --model emonet_8 --checkpoint emonet_8.pth --format parquet
    accelerate launch --multi_gpu --num_processes 2 -m avfusion.cli.predict videos/ --model ... --out out/
    avfusion predict --live /dev/video0 --input-format v4l2 --model emonet_8 --checkpoint emonet_8.pth
    avfusion predict --live rtsp://camera/stream --model runs/exp/best --out live/

(--multi_gpu starts the processes; on a machine without a GPU they share the CPU.)

--live SOURCE reads anything PyAV opens (a camera device, an RTSP/HTTP stream, or a file, read at
its own pace unless --no-realtime) and appends each frame's row to <out>/<name>_live.csv as soon as
it is computed (flushed per row; a row is at most about a second behind its frame: when the model
falls behind, the oldest waiting frames are dropped and get no row), with a line per second of
video on the terminal; Ctrl-C ends it. Live, audio is not read (audio-visual models see it masked,
audio-only models are refused), temporal models use a sliding window of the last --clip-len frames
(each frame's value from the window that ends with it), and --stride/--smooth do not apply. The
live CSV grows while it is written: its name (_live) keeps it apart from the finished tables.

Per video: <name>_va.<format>, one row per frame (--faces all: per face and frame) with video,
frame, timestamp (seconds, from the container), track_id, face_found, face_x/y/w/h (pixels),
face_score, speech, speech_prob, valid, valence, arousal, quadrant and, for EmoNet models, expr_<class>
probabilities; rows that are not valid (no face for a video model, no speech for an audio
model) have empty values. <name>_summary.json: duration, fps, frames with a face, with speech
and valid, mean/std valence and arousal over valid frames (null without any), seconds per
quadrant, the face tracks, model, avfusion version and options.

Every option is checked before any video is decoded. A bad video is reported in one line and the
others go on; the run ends with "N written, M failed" (exit code 1 when any failed). Every file is
written under a temporary name and renamed when complete; --skip-existing resumes a batch.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from ._common import entry_points

NAME = "predict"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(NAME, help="per-frame valence/arousal of video files",
                              description=__doc__.split("\n\n")[0], epilog=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="video files, folders (recursive) or glob patterns")
    p.add_argument("--live", metavar="SOURCE",
                   help="predict frames as they arrive from a camera device, an RTSP/HTTP stream or a file (read at "
                        "its own pace); rows are appended to <out>/<name>_live.csv as they are computed")
    p.add_argument("--input-format", help="--live: PyAV/FFmpeg input format (v4l2, avfoundation, dshow, ...)")
    p.add_argument("--no-realtime", action="store_true",
                   help="--live on a file: read it as fast as it is processed, not at its own pace")
    p.add_argument("--name", help="--live: output name (default: the source file's stem, else 'live')")
    p.add_argument("--model", required=True, help="a save_pretrained folder or a model name (e.g. emonet_8)")
    p.add_argument("--checkpoint", help="video-encoder weights for a named model (e.g. emonet_8.pth)")
    p.add_argument("--out", default=None, help="output folder (default: runs/predict)")
    p.add_argument("--format", default="csv", choices=("csv", "parquet", "json"), help="table format")
    p.add_argument("--skip-existing", action="store_true", help="keep videos whose table is already written")
    p.add_argument("--overwrite", action="store_true",
                   help="--out holds predictions of another model or settings: remove them and predict (without it "
                        "the run is refused)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="auto: bf16 + channels_last where the CPU has AVX512-BF16/AMX or on CUDA, else fp32")
    p.add_argument("--runtime", default=None, choices=("auto", "torch", "openvino"),
                   help="the per-frame network's runtime: auto (default, or $AVFUSION_RUNTIME): OpenVINO where the bench "
                        "measured it faster on this kind of CPU for this network, else torch; openvino needs "
                        "pip install \"avfusion[openvino]\"")
    p.add_argument("--compile", action="store_true", help="torch.compile the per-frame network (slow start)")
    p.add_argument("--stride", type=int, default=1,
                   help="run a frame-by-frame model on every K-th frame and interpolate (default 1)")
    p.add_argument("--flip", action="store_true", help="average EmoNet with the mirrored face (2x the work)")
    p.add_argument("--batch-size", type=int, default=16, help="face crops per network call")
    p.add_argument("--face-backend", default="yunet", choices=("yunet", "full"),
                   help="yunet: detect the face (needs the YuNet model file); full: the face fills the frame")
    p.add_argument("--faces", default="main", choices=("main", "all"),
                   help="main: read the face seen in the most frames (faces are tracked; a warning when several "
                        "people appear); all: one row per face per frame with its track_id (one model pass per face)")
    p.add_argument("--speech", default="auto", choices=("auto", "off"),
                   help="auto: the model's speech rule (what it was trained with) on Silero VAD's per-frame "
                        "probabilities marks the frames with speech, and models that listen ignore audio without "
                        "speech (as if the video had no track); off: the whole track counts, no speech column")
    p.add_argument("--yunet-model", help="YuNet ONNX file (default: $AVFUSION_HOME or ./pretrained/)")
    p.add_argument("--detect-size", type=int, default=None, metavar="PX",
                   help="longer side frames are shrunk to for face detection (default 320; 640 or more for faces "
                        "under ~1/30 of the frame; 0: full resolution)")
    p.add_argument("--detect-every", type=int, default=4, metavar="K",
                   help="detect faces on one frame in K, a steady face interpolated between (default 4; "
                        "1: every frame; live: every frame)")
    p.add_argument("--clip-len", type=int, help="frames per window of a temporal model (default: its serving spec, "
                                                 "the window it was trained with)")
    p.add_argument("--hop", type=int, help="frames between window starts of a temporal model (default: half a "
                                            "window; the clip length: each frame in one window, as evaluate)")
    p.add_argument("--smooth", type=int, default=1, help="moving average over this many frames (odd)")
    p.add_argument("--overlay", action="store_true", help="also write <name>_overlay.mp4: the video with the face box, values and a small circumplex "
                        "drawn on it (same frame count and rate, the audio kept as AAC)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..predict.batch import claim_output, distributed_state, expand_inputs, predict_identity
    from ..predict.predictor import Predictor, check_options, default_runtime
    from ..runlock import check_output_folder, run_lock, write_owner

    check_options(args.stride, args.smooth, args.batch_size, args.face_backend, args.precision, args.clip_len,
                  fmt=args.format, faces=args.faces, speech=args.speech, runtime=default_runtime(args.runtime))
    if args.live is not None:
        return run_live(args)
    if not args.inputs:
        raise ValueError("no input: give video files, folders or glob patterns, or --live SOURCE")
    if args.input_format or args.no_realtime or args.name:
        raise ValueError("--input-format, --no-realtime and --name go with --live")
    out = check_output_folder(args.out or "runs/predict", "--out")
    unreadable: list[tuple[str, str]] = []
    jobs = expand_inputs(args.inputs, out=out, unreadable=unreadable)
    state = distributed_state()
    rank, world = (state.process_index, state.num_processes) if state is not None else (0, 1)
    device = args.device
    if state is not None:
        device = device or str(state.device)
        if state.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            import torch

            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    predictor = Predictor(args.model, checkpoint=args.checkpoint, device=device, clip_len=args.clip_len,
                          hop=args.hop, precision=args.precision, runtime=args.runtime, compile=args.compile, flip=args.flip, stride=args.stride,
                          batch_size=args.batch_size, face_backend=args.face_backend,
                          yunet_model=args.yunet_model, detect_size=args.detect_size,
                          detect_every=args.detect_every, smooth=args.smooth,
                          faces=args.faces, speech=args.speech)
    identity = predict_identity(predictor)
    with contextlib.ExitStack() as stack:
        if rank == 0:
            stack.enter_context(run_lock(out, "predict"))
            claim_output(out, identity, args.overwrite)
            write_owner(out, "predict", identity)
        return _run_batch(args, predictor, jobs, out, unreadable, state, rank, world)


def _run_batch(args: argparse.Namespace, predictor: Any, jobs: list, out: Path, unreadable: list, state: Any,
               rank: int, world: int) -> int:
    from ..predict.batch import combine_tables, run_batch

    if rank == 0:
        runs = "; voice ".join(r.description for r in (predictor.runner, predictor.voice_runner) if r is not None)
        st = predictor.settings
        faces = (f"; faces: YuNet on {st['detector_runtime']}, 1 frame in {st['detect_every']}"
                 if st.get("detector_runtime") else "")
        print(f"{len(jobs)} video(s), model {predictor.name} ({runs or 'audio only'}{faces})"
              + (f", {world} processes" if world > 1 else "") + f" -> {out}")
    result = run_batch(predictor, jobs, out, fmt=args.format, plot=not args.no_plot, overlay=args.overlay,
                       skip_existing=args.skip_existing, progress=not args.quiet, rank=rank, world=world)
    if state is not None:
        from accelerate.utils import gather_object

        state.wait_for_everyone()
        parts = gather_object([result])
        result = parts[0]
        for part in parts[1:]:
            result = result.merge(part)
    if rank == 0:
        for path, reason in unreadable:  # sub-folders the search could not enter: their videos were not read
            result.failed.append((path, reason))
        combined = combine_tables(jobs, out, args.format)
        print(result.summary() + (f"; all frames in {combined}" if combined else ""))
        for path, reason in result.failed:
            print(f"  failed: {reason}", file=sys.stderr)
    if state is not None:
        state.wait_for_everyone()
        # An explicit end of the process group: left to interpreter exit, gloo's threads were
        # seen to abort one process ("terminate called without an active exception").
        state.destroy_process_group()
    return 1 if result.failed else 0


def run_live(args: argparse.Namespace) -> int:
    """``--live SOURCE``: rows appended to ``<out>/<name>_live.csv`` as frames are computed."""
    import csv
    import math
    import time

    from ..predict.predictor import Predictor

    if args.inputs:
        raise ValueError(f"--live reads one source; drop the inputs ({' '.join(args.inputs)})")
    for flag, bad in (("--stride", args.stride != 1), ("--smooth", args.smooth != 1), ("--overlay", args.overlay),
                      ("--skip-existing", args.skip_existing), ("--faces all", args.faces != "main"),
                      ("--format", args.format != "csv")):
        if bad:
            raise ValueError(f"{flag} does not apply to --live (no future frames; rows go to a CSV)")
    source = args.live
    name = args.name or (Path(source).stem if Path(source).is_file() else "live")
    predictor = Predictor(args.model, checkpoint=args.checkpoint, device=args.device, clip_len=args.clip_len,
                          precision=args.precision, runtime=args.runtime, compile=args.compile, flip=args.flip,
                          batch_size=args.batch_size, face_backend=args.face_backend,
                          yunet_model=args.yunet_model, detect_size=args.detect_size, speech="off")
    from ..runlock import check_output_folder

    out = check_output_folder(args.out or "runs/predict", "--out")
    out.mkdir(parents=True, exist_ok=True)  # live rows are appended as they come: no run lock here
    path = out / f"{name}_live.csv"
    start = time.monotonic()
    rows = predictor.stream(source, realtime=False if args.no_realtime else None, input_format=args.input_format,
                            name=source)
    first = next(rows, None)  # opens the source: a bad one fails here, before any file is written
    if first is None:
        raise ValueError(f"{source}: no frame could be read")
    print(f"live: {source}, model {predictor.name} ({predictor.runner.description}) -> {path}"
          + ("" if args.quiet else "; Ctrl-C stops"), flush=True)
    n, shown = 0, -math.inf
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(first))
        writer.writeheader()
        try:
            for row in _chain(first, rows):
                # Empty cells for missing values, as in the finished tables.
                writer.writerow({k: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v
                                 for k, v in row.items()})
                f.flush()
                n += 1
                if not args.quiet and row["timestamp"] >= shown + 1.0:
                    shown = row["timestamp"]
                    values = (f"valence {row['valence']:+.2f}  arousal {row['arousal']:+.2f}" if row["valid"]
                              else "no face")
                    print(f"{row['timestamp']:8.1f} s  frame {row['frame']:6d}  {values}  "
                          f"(lag {time.monotonic() - start - row['timestamp']:.2f} s)", flush=True)
        except KeyboardInterrupt:
            rows.close()
            print(f"stopped: {n} rows in {path}")
            return 0
    print(f"{n} rows in {path}")
    return 0


def _chain(first: dict, rest: Any) -> Any:
    yield first
    yield from rest


# parse_args(argv) -> Namespace and main(argv=None) -> exit code, as every command has them.
parse_args, main = entry_points(add_parser, run, NAME)


if __name__ == "__main__":
    sys.exit(main())
