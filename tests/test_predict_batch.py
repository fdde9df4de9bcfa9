"""`avfusion predict` over many inputs: bad files reported while the good ones are written, outputs
that never collide, files that are complete or absent after Ctrl-C at any moment, resumable
batches, table formats, and a batch shared by two processes under `accelerate launch`."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import write_grey_video

FRAME_BY_FRAME = {"mode": "video", "video": {"name": "emonet", "n_expression": 8, "width": 16, "num_modules": 1,
                                             "n_blocks": 1, "frozen": True}, "audio": None, "fusion": None}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    import torch

    import avfusion
    from avfusion.config import ModelConfig, from_dict

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("model") / "emonet_tiny"
    avfusion.save_pretrained(avfusion.create_model(from_dict(ModelConfig, FRAME_BY_FRAME)), out)
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Good videos (two sharing a stem in different folders, two sharing one in the same folder)
    and bad ones: empty, truncated, a text file named .mp4."""
    root = tmp_path_factory.mktemp("batch") / "videos"
    write_grey_video(root / "a" / "clip.mp4", 10)
    write_grey_video(root / "b" / "clip.mp4", 12)
    write_grey_video(root / "b" / "take.mp4", 9)
    write_grey_video(root / "b" / "take.avi", 11)
    (root / "bad").mkdir()
    (root / "bad" / "empty.mp4").write_bytes(b"")
    good = (root / "a" / "clip.mp4").read_bytes()
    (root / "bad" / "truncated.mp4").write_bytes(good[: len(good) // 2])
    (root / "bad" / "notes.mp4").write_text("not a video, just text\n" * 20)
    (root / "readme.txt").write_text("ignored: not a video extension")
    return root


GOOD = {"a/clip": 10, "b/clip": 12, "b/take_mp4": 9, "b/take_avi": 11}
BAD = ("empty.mp4", "truncated.mp4", "notes.mp4")


def run_predict(argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "avfusion.cli.predict", *map(str, argv)], capture_output=True,
                          text=True, timeout=300, **kw)


def test_folder_with_bad_files_and_colliding_names(folder, model_dir, tmp_path, capsys):
    from avfusion.cli import predict

    out = tmp_path / "out"
    code = predict.main([str(folder), "--model", str(model_dir), "--face-backend", "full", "--out", str(out),
                         "--no-plot", "--quiet"])
    captured = capsys.readouterr()
    assert code == 1
    assert "4 written, 3 failed" in captured.out
    for name in BAD:  # each failure named, one line each, no traceback
        assert sum(name in line for line in captured.err.splitlines()) == 1
    assert "Traceback" not in captured.err
    for name, n in GOOD.items():
        table = pd.read_csv(out / f"{name}_va.csv")
        assert len(table) == n and list(table["frame"]) == list(range(n))
    combined = pd.read_csv(out / "predictions.csv")
    assert combined.columns[0] == "video" and len(combined) == sum(GOOD.values())
    assert combined["video"].nunique() == 4
    # (hidden: the folder's record of the run it holds, .avfusion-run.json)
    assert sorted(p.name for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")) == sorted(
        ["clip_va.csv", "clip_va.csv", "take_mp4_va.csv", "take_avi_va.csv", "predictions.csv",
         "clip_summary.json", "clip_summary.json", "take_mp4_summary.json", "take_avi_summary.json"])

    # --skip-existing: nothing recomputed, same combined table.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*_va.csv")}
    code = predict.main([str(folder / "a"), str(folder / "b"), "--model", str(model_dir), "--face-backend", "full",
                         "--out", str(out), "--no-plot", "--quiet", "--skip-existing"])
    assert code == 0 and "0 written, 0 failed, 4 skipped" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*_va.csv")} == before


def test_globs_formats_and_missing_inputs(folder, model_dir, tmp_path, capsys):
    from avfusion.cli import predict

    out = tmp_path / "out"
    for fmt in ("parquet", "json"):
        code = predict.main([str(folder / "b" / "*.mp4"), str(tmp_path / "missing.mp4"), "--model", str(model_dir),
                             "--face-backend", "full", "--out", str(out), "--no-plot", "--quiet", "--format", fmt])
        captured = capsys.readouterr()
        assert code == 1 and "2 written, 1 failed" in captured.out and "missing.mp4: video file not found" in captured.err
        from avfusion.predict import read_table

        # Names mirror the inputs below their common folder (here the glob's and the missing file's).
        [path] = list(out.rglob(f"clip_va.{fmt}"))
        assert path.parent.name == "b"
        table = read_table(path)
        assert len(table) == 12 and set(table.columns) >= {"frame", "timestamp", "valence", "arousal", "face_found"}
        assert len(read_table(out / f"predictions.{fmt}")) == 12 + 9
    assert predict.main([str(tmp_path / "nothing*.mp4"), "--model", str(model_dir), "--out", str(out)]) == 2
    assert "no file matches" in capsys.readouterr().err
    (tmp_path / "empty_dir").mkdir()
    assert predict.main([str(tmp_path / "empty_dir"), "--model", str(model_dir), "--out", str(out)]) == 2
    assert "no video files" in capsys.readouterr().err


def complete(path: Path, frames: dict[str, int], out: Path) -> bool:
    """A file under a final name is whole: tables have every frame, plots and videos open."""
    name = path.relative_to(out).as_posix()
    if path.suffix == ".csv":
        t = pd.read_csv(path)
        if name == "predictions.csv":
            return len(t) == sum(frames.values())
        return len(t) == frames[name[: -len("_va.csv")]]
    if path.suffix == ".png":
        import matplotlib.image

        return matplotlib.image.imread(path).ndim == 3
    if path.suffix == ".json":
        import json

        return json.loads(path.read_text())["frames"] == frames[name[: -len("_summary.json")]]
    if path.suffix == ".mp4":
        from avfusion.data.video import VideoFile

        return len(VideoFile(path)) == frames[name[: -len("_overlay.mp4")]]
    return False


@pytest.mark.slow
def test_interrupted_runs_leave_no_incomplete_file(model_dir, tmp_path):
    """SIGINT at several moments of a batch (while tables, plots and overlays are being written):
    every file under a final name is complete; temporary files are gone."""
    videos = tmp_path / "v"
    frames = {}
    from avfusion.synthetic.talking import write_talking_video

    videos.mkdir()
    for k in range(4):
        frames[f"v{k}"] = write_talking_video(videos / f"v{k}.mp4", 1.2 + 0.2 * k, 96, 96, seed=k)["frames"]
    for delay in (0.0, 0.7):  # while the second video runs, and later (its plot, overlay or table)
        out = tmp_path / f"out{delay}"
        proc = subprocess.Popen([sys.executable, "-m", "avfusion.cli.predict", str(videos), "--model",
                                 str(model_dir), "--face-backend", "full", "--out", str(out), "--overlay",
                                 "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=tmp_path)
        # Wait for the first finished video, then interrupt a little later.
        while True:
            line = proc.stdout.readline()
            if not line or line.startswith("[1/"):
                break
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode in (130, 0, 1), err
        assert "Traceback" not in err
        assert not (out / ".avfusion.lock").exists(), "the folder's lock outlived the run"
        files = [p for p in out.rglob("*") if p.is_file() and p.name != ".avfusion-run.json"]
        assert files, "the first video's outputs should exist"
        assert not [p for p in files if ".partial" in p.name], "temporary files left behind"
        for p in files:
            assert complete(p, frames, out), f"{p} is incomplete after SIGINT at +{delay} s"


@pytest.mark.slow
def test_accelerate_two_processes_equal_one(folder, model_dir, tmp_path):
    """`accelerate launch` with 2 CPU processes: each video written once, and one combined table
    equal to a single-process run's."""
    good = tmp_path / "good"
    for name, n in GOOD.items():
        src = folder / (name.replace("_mp4", ".mp4").replace("_avi", ".avi") if "take" in name else name + ".mp4")
        dst = good / src.relative_to(folder)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())
    common = ["--model", model_dir, "--face-backend", "full", "--no-plot", "--quiet", "--precision", "fp32"]
    from avfusion.cli import predict

    # The single-process reference runs in this process (the same program, one interpreter start fewer).
    assert predict.main([str(a) for a in (good, *common, "--out", tmp_path / "one")]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # --multi_gpu starts N processes (torchrun); without a GPU they run on the CPU (gloo).
    multi = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                            "-m", "avfusion.cli.predict", str(good), *map(str, common), "--out", str(tmp_path / "two")],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert multi.returncode == 0, multi.stderr[-3000:]
    assert multi.stdout.count("4 written, 0 failed") == 1
    # Every video once: by process 0 or process 1, never both.
    done = [line for line in multi.stdout.splitlines() if line.startswith("[") and " -> " in line]
    assert len(done) == 4 and {"(process 0)" in d for d in done} == {True, False}
    one = pd.read_csv(tmp_path / "one" / "predictions.csv")
    two = pd.read_csv(tmp_path / "two" / "predictions.csv")
    pd.testing.assert_frame_equal(one, two, check_exact=False, atol=1e-6)
