"""The catalogue of bad inputs and faults: one row per case -- what is damaged, which command, and
the one-line message (exit code 2: a user error before any work; 1: a batch that went on past a
bad file) or the warning it must give. Every row runs the real command in process and checks that
stderr carries no traceback and names the file. New cases are added here.

Cases that need a long run (a killed training, a tampered checkpoint, SIGINT during predict, a
cache file cut in half, a failed cache retried) live beside their subject in test_train.py,
test_predict_batch.py and test_cache.py.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest

from conftest import write_grey_video
from test_datasets import va_rows, write_afew_clip, write_crops, write_label_csv, write_va_txt


@dataclass
class Case:
    id: str
    damage: str                                   # what is wrong, in words
    setup: Callable[[Path], list[str]]            # writes the damaged input, returns the argv
    code: int                                     # expected exit code
    message: str                                  # regex expected in stderr (error or warning)
    names: Optional[str] = None                   # a file name the message must contain
    patch: Optional[Callable] = None              # patch(monkeypatch): a fault injected in the run


# --- builders ----------------------------------------------------------------------------------
def video(t: Path, name: str = "v.mp4", n: int = 6, audio: bool = True) -> Path:
    return write_grey_video(t / name, n, audio=audio)


def predict(*inputs: str, extra: tuple = ()) -> list[str]:
    return ["predict", *inputs, "--model", "tiny", "--face-backend", "full", "--no-plot", "--quiet", *extra]


def predict_on(t: Path, name: str, data: bytes, extra: tuple = ()) -> list[str]:
    (t / name).write_bytes(data)
    return predict(str(t / name), "--out", str(t / "out"), extra=extra)


def manifest(t: Path, rows: str, header: str = "video_id,video_path,labels_path") -> list[str]:
    (t / "m.csv").write_text(header + "\n" + rows)
    return ["evaluate", "--model", "tiny", "--data-kind", "manifest", "--root", str(t / "m.csv"),
            "--out", str(t / "eval"), "--no-plots", "data.face_backend=full"]


def with_labels(t: Path, rows: list[tuple], n: int = 6) -> list[str]:
    video(t, "a.mp4", n)
    write_label_csv(t / "a.csv", rows)
    return manifest(t, "a,a.mp4,a.csv\n")


def affwild(t: Path, rows: list[tuple], header: str = "valence,arousal") -> list[str]:
    root = t / "aw"
    write_va_txt(root / "annotations" / "VA_Estimation_Challenge" / "Train_Set" / "q.txt", rows, header=header)
    write_va_txt(root / "annotations" / "VA_Estimation_Challenge" / "Validation_Set" / "r.txt", va_rows(8))
    write_crops(root / "cropped_aligned" / "q", 8)
    write_crops(root / "cropped_aligned" / "r", 8)
    for name in ("q", "r"):
        video(root / "videos", f"{name}.mp4", 8)
    return ["evaluate", "--model", "tiny", "--data-kind", "affwild2", "--root", str(root), "--out",
            str(t / "eval"), "--no-plots"]


def afew(t: Path, **kw) -> list[str]:
    write_afew_clip(t / "afew" / "001", 8, **kw)
    return ["evaluate", "--model", "tiny", "--data-kind", "afew_va", "--root", str(t / "afew"), "--out",
            str(t / "eval"), "--no-plots"]


def afew_json(t: Path, edit: Callable[[dict], None]) -> list[str]:
    argv = afew(t)
    path = t / "afew" / "001" / "001.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return argv


def train_cfg(t: Path, yaml_text: str, *overrides: str) -> list[str]:
    (t / "exp.yaml").write_text(yaml_text)
    return ["train", "--config", str(t / "exp.yaml"), "--no-tensorboard", *overrides]


GOOD_EXP = "name: x\nmodel: tiny\ndata:\n  kind: synthetic\n  root: {root}\ntrain:\n  epochs: 1\n  cpu: true\n"


def split_file(t: Path, split: dict, *config: str) -> list[str]:
    for i in range(4):
        video(t, f"c{i}.mp4", 4)
    rows = "".join(f"c{i},c{i}.mp4,,actor{i // 2}\n" for i in range(4))
    (t / "split.json").write_text(json.dumps(split))
    return manifest(t, rows, "video_id,video_path,labels_path,actor") + ["--split-file", str(t / "split.json"),
                                                                          "--part", "test", *config]


def mp4_bytes(t: Path) -> bytes:
    return video(t, "good_source.mp4", 10).read_bytes()


# --- the catalogue ------------------------------------------------------------------------------
CASES = [
    # unreadable and odd videos (predict: reported per file, the batch goes on, exit 1)
    Case("empty-video", "a zero-byte .mp4", lambda t: predict_on(t, "e.mp4", b""), 1, r"empty file \(0 bytes\)", "e.mp4"),
    Case("truncated-video", "an mp4 cut in half (no moov atom)",
         lambda t: predict_on(t, "cut.mp4", mp4_bytes(t)[: len(mp4_bytes(t)) // 2]), 1, r"cut\.mp4: .*(truncated|corrupt|not a readable)", "cut.mp4"),
    Case("text-as-video", "a text file named .mp4", lambda t: predict_on(t, "notes.mp4", b"hello\n" * 50), 1,
         r"not a readable video file", "notes.mp4"),
    Case("missing-video", "a path that does not exist", lambda t: predict(str(t / "gone.mp4"), "--out", str(t)), 1,
         r"gone\.mp4: video file not found", "gone.mp4"),
    Case("audio-only-file", "an audio-only file named .mp4 (no video stream)",
         lambda t: predict_on(t, "voice.mp4", _audio_only(t)), 1, r"no video stream", "voice.mp4"),
    Case("empty-folder", "a folder without videos", lambda t: predict(str(_mkdir(t / "nothing")), "--out", str(t)), 2,
         r"no video files in this folder", "nothing"),
    Case("glob-no-match", "a pattern matching nothing", lambda t: predict(str(t / "x*.mp4"), "--out", str(t)), 2,
         r"no file matches this pattern"),
    # predict options (checked before any decoding)
    Case("stride-0", "--stride 0", lambda t: predict(str(video(t)), extra=("--stride", "0")), 2, r"stride must be >= 1"),
    Case("smooth-even", "--smooth 4", lambda t: predict(str(video(t)), extra=("--smooth", "4")), 2, r"smooth must be a positive odd"),
    Case("smooth-negative", "--smooth -3", lambda t: predict(str(video(t)), extra=("--smooth", "-3")), 2, r"smooth must be a positive odd"),
    Case("batch-0", "--batch-size 0", lambda t: predict(str(video(t)), extra=("--batch-size", "0")), 2, r"batch size must be >= 1"),
    Case("stride-temporal", "--stride 2 with a temporal model", lambda t: predict(str(video(t)), extra=("--stride", "2")), 2,
         r"only frame-by-frame models"),
    Case("flip-not-emonet", "--flip with a HOG encoder", lambda t: predict(str(video(t)), extra=("--flip",)), 2,
         r"flip averaging is available for EmoNet"),
    Case("unknown-model", "a model name that does not exist",
         lambda t: ["predict", str(video(t)), "--model", "no_such_model"], 2, r"unknown model"),
    # model files
    Case("model-folder-cut", "an exported model.safetensors cut short",
         lambda t: _cut_export(t), 2, r"model\.safetensors", "model.safetensors"),
    Case("model-config-broken", "an exported config.json that is not JSON",
         lambda t: _broken_config(t), 2, r"config\.json", "config.json"),
    # manifests
    Case("manifest-missing-column", "a manifest without labels_path", lambda t: manifest(t, "a,a.mp4\n", "video_id,video_path"), 2,
         r"missing column\(s\) \['labels_path'\]", "m.csv"),
    Case("manifest-unknown-column", "a misspelt column", lambda t: manifest(t, "a,a.mp4,,x\n", "video_id,video_path,labels_path,actr"), 2,
         r"unknown column\(s\) \['actr'\]", "m.csv"),
    Case("manifest-empty-id", "a row without video_id", lambda t: manifest(t, ",a.mp4,\n"), 2, r"line 2: empty video_id", "m.csv"),
    Case("manifest-video-missing", "a row whose video does not exist", lambda t: manifest(t, "a,nope.mp4,\n"), 2,
         r"video file not found: .*nope\.mp4", "m.csv"),
    Case("manifest-both-sources", "video_path and frames_dir both given",
         lambda t: manifest(t, f"a,{video(t)},,fr\n", "video_id,video_path,labels_path,frames_dir"), 2, r"exactly one of video_path and frames_dir"),
    Case("manifest-frames-no-fps", "a frames_dir row without fps",
         lambda t: manifest(t, f"a,,,{_frames_dir(t)}\n", "video_id,video_path,labels_path,frames_dir"), 2, r"needs a positive fps"),
    Case("manifest-bad-fps", "fps that is not a number",
         lambda t: manifest(t, f"a,{video(t)},,x25\n", "video_id,video_path,labels_path,fps"), 2, r"fps 'x25' is not a number"),
    Case("manifest-duplicate-id", "two rows with one id", lambda t: manifest(t, f"a,{video(t)},\na,{video(t)},\n"), 2,
         r"m\.csv: duplicate video ids \['a'\]", "m.csv"),
    # label files
    Case("labels-frame-beyond", "a label row past the video's last frame", lambda t: with_labels(t, [(0, 0.1, 0.1), (9, 0.1, 0.1)]), 2,
         r"a\.csv, line 3: frame 9 outside the video's 6 frames", "a.csv"),
    Case("labels-twice", "a frame labelled twice", lambda t: with_labels(t, [(0, 0.1, 0.1), (0, 0.2, 0.2)]), 2,
         r"a\.csv, line 3: frame 0 is labelled twice", "a.csv"),
    Case("labels-not-number", "a label that is text", lambda t: with_labels(t, [(0, "high", 0.1)]), 2,
         r"a\.csv, line 2: valence 'high' is not a number", "a.csv"),
    Case("labels-out-of-range", "valence 3", lambda t: with_labels(t, [(0, 3, 0.1)]), 2, r"outside \[-1, 1\]", "a.csv"),
    Case("labels-bad-header", "a label file without the frame column", lambda t: _bad_label_header(t), 2,
         r"header must name columns frame,valence,arousal", "a.csv"),
    Case("labels-stop-early", "a label file covering half the video (warns)",
         lambda t: with_labels(t, [(k, 0.1, 0.1) for k in range(5)], n=10), 0, r"warning: .*rows stop at frame 4", "a.csv"),
    Case("labels-all-missing", "every row -5 (warns; another video is labelled)", lambda t: _one_unlabelled(t), 0,
         r"warning: .*no labelled frame at all", "a.csv"),
    # Aff-Wild2
    Case("affwild-inf", "an -inf label", lambda t: affwild(t, va_rows(4) + [(0.2, float("-inf"))] + va_rows(3)), 2,
         r"q\.txt, line 6: .*infinite", "q.txt"),
    Case("affwild-header", "arousal,valence header", lambda t: affwild(t, va_rows(8), header="arousal,valence"), 2,
         r"first line must be the header", "q.txt"),
    Case("affwild-range", "a label of 1.5", lambda t: affwild(t, va_rows(3) + [(1.5, 0.0)] + va_rows(4)), 2,
         r"q\.txt, line 5: .*outside \[-1, 1\]", "q.txt"),
    Case("affwild-not-number", "a label that is text", lambda t: affwild(t, va_rows(3) + [("x", 0.0)] + va_rows(4)), 2,
         r"q\.txt, line 5: not two numbers", "q.txt"),
    Case("affwild-all-minus5", "a clip whose every frame is -5 (warns)", lambda t: affwild(t, va_rows(8, minus5=set(range(1, 9)))), 0,
         r"warning: .*q\.txt: no labelled frame at all", "q.txt"),
    # AFEW-VA
    Case("afew-no-landmarks", "a frame without landmarks", lambda t: afew(t, drop_key="landmarks"), 2,
         r"001\.json.*missing key 'landmarks'", "001.json"),
    Case("afew-no-actor", "a clip JSON without actor", lambda t: afew_json(t, lambda d: d.pop("actor")), 2,
         r"001\.json.*missing key 'actor'", "001.json"),
    Case("afew-not-json", "a clip JSON that is not JSON", lambda t: _afew_garbage(t), 2, r"001\.json: not valid JSON", "001.json"),
    Case("afew-image-count", "8 labelled frames but 6 images", lambda t: afew(t, n_images=6), 2,
         r"001\.json: 8 labelled frames but 6 frame images", "001.json"),
    # splits
    Case("split-by-clip-vs-actor", "a split file made by clip, config by actor",
         lambda t: split_file(t, {"train": ["c0", "c2"], "val": ["c1"], "test": ["c3"], "by": "clip"}, "data.split_by=actor"), 2,
         r"split\.json was made by clip .*split_by=actor", "split.json"),
    Case("split-unknown-id", "a split naming clips the data lacks",
         lambda t: split_file(t, {"train": ["c0", "zz"], "val": ["c1"], "test": ["c3"], "by": "clip"}), 2, r"not in the dataset"),
    Case("split-leak", "one clip on two sides",
         lambda t: split_file(t, {"train": ["c0", "c1"], "val": ["c1"], "test": ["c3"], "by": "clip"}), 2, r"on more than one side"),
    # configs
    Case("yaml-indent", "an experiment YAML with broken indentation",
         lambda t: train_cfg(t, "name: x\ndata:\n  kind: synthetic\n   root: y\n"), 2, r"exp\.yaml.*line", "exp.yaml"),
    Case("epochs-0", "train.epochs=0 on the command line",
         lambda t: train_cfg(t, GOOD_EXP.format(root=t), "train.epochs=0"), 2,
         r"command-line override: train\.epochs must be >= 1, got 0"),
    Case("override-typo", "an override key that does not exist", lambda t: train_cfg(t, GOOD_EXP.format(root=t), "train.epochz=3"), 2,
         r"command-line override"),
    Case("config-missing", "an experiment that does not exist", lambda t: ["train", "--config", str(t / "nope.yaml")], 2,
         r"config file not found: .*nope\.yaml", "nope.yaml"),
    # out of space
    Case("cache-disk-full", "the disk is full when the cache is written", lambda t: _cache_argv(t), 2,
         r"cache/\S+: No space left on device while writing", "cache", patch=lambda m: _enospc(m, "avfusion.files._fsync_file")),
    Case("checkpoint-disk-full", "the disk fills while a checkpoint is saved", lambda t: _train_argv(t), 2,
         r"could not be written \(disk full\?\).*--resume latest", patch=lambda m: _torch_write_fails(m)),
    Case("predict-disk-full", "the disk fills while a table is written", lambda t: predict(str(video(t)), "--out", str(t / "o")), 1,
         r"v\.mp4: .*No space left on device", patch=lambda m: _enospc(m, "pandas.DataFrame.to_csv")),
    Case("device-no-gpu", "--device cuda on a machine without one", lambda t: predict(str(video(t)), extra=("--device", "cuda")), 2,
         r"no CUDA GPU is available"),
]


def _synthetic(t: Path) -> Path:
    from avfusion.synthetic import SyntheticConfig, generate_dataset

    generate_dataset(t / "syn", SyntheticConfig(clips=4, frames=8, size=32, pair=False, gaps=False, clips_per_actor=1))
    return t / "syn"


def _cache_argv(t: Path) -> list[str]:
    return ["cache", "--config", "tiny_synthetic", "--out", str(t / "cache"), "--cpu", f"data.root={_synthetic(t)}",
            "data.clip_len=8", "data.stride=8"]


def _train_argv(t: Path) -> list[str]:
    return ["train", "--config", "tiny_synthetic", "--no-tensorboard", f"data.root={_synthetic(t)}", "data.clip_len=8",
            "data.stride=8", "train.epochs=1", "train.cpu=true", f"output_dir={t / 'run'}", "data.test_fraction=0"]


def _enospc(monkeypatch, target: str) -> None:
    import errno

    def full(*args, **kwargs):
        name = next((str(a) for a in list(args) + list(kwargs.values()) if isinstance(a, (str, Path))), None)
        raise OSError(errno.ENOSPC, "No space left on device", name)

    if target.endswith("_fsync_file"):  # the atomic writer's last step before the rename
        def full_fd(path) -> None:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

        monkeypatch.setattr(target, full_fd)
    else:
        monkeypatch.setattr(target, full)


def _torch_write_fails(monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr("avfusion.train.loop.save_checkpoint", fail)


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _audio_only(t: Path) -> bytes:
    import av
    import numpy as np

    path = t / "voice_src.m4a"
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=16000)
        s.layout = "mono"
        pcm = (0.1 * np.sin(np.arange(16000) / 10)).astype(np.float32)
        for i in range(0, len(pcm), 1024):
            f = av.AudioFrame.from_ndarray(pcm[None, i:i + 1024].copy(), format="flt", layout="mono")
            f.sample_rate, f.pts = 16000, i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path.read_bytes()


def _export(t: Path) -> Path:
    import avfusion

    out = t / "model"
    avfusion.save_pretrained(avfusion.create_model("tiny"), out)
    return out


def _cut_export(t: Path) -> list[str]:
    m = _export(t) / "model.safetensors"
    m.write_bytes(m.read_bytes()[:100])
    return ["predict", str(video(t)), "--model", str(m.parent), "--face-backend", "full", "--out", str(t / "o")]


def _broken_config(t: Path) -> list[str]:
    m = _export(t)
    (m / "config.json").write_text("{ not json")
    return ["predict", str(video(t)), "--model", str(m), "--face-backend", "full", "--out", str(t / "o")]


def _frames_dir(t: Path) -> Path:
    import cv2
    import numpy as np

    d = _mkdir(t / "fr")
    for k in range(3):
        cv2.imwrite(str(d / f"{k:03d}.png"), np.full((8, 8, 3), k, np.uint8))
    return d


def _one_unlabelled(t: Path) -> list[str]:
    video(t, "a.mp4")
    video(t, "b.mp4")
    write_label_csv(t / "a.csv", [(k, -5, -5) for k in range(6)])
    write_label_csv(t / "b.csv", [(k, k / 10, -k / 10) for k in range(6)])
    return manifest(t, "a,a.mp4,a.csv\nb,b.mp4,b.csv\n")


def _bad_label_header(t: Path) -> list[str]:
    video(t, "a.mp4")
    (t / "a.csv").write_text("valence,arousal\n0.1,0.2\n")
    return manifest(t, "a,a.mp4,a.csv\n")


def _afew_garbage(t: Path) -> list[str]:
    argv = afew(t)
    (t / "afew" / "001" / "001.json").write_text("{ broken")
    return argv


def test_catalogue_has_the_promised_size():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case: Case, tmp_path, capsys, monkeypatch):
    import torch

    from avfusion.cli.main import main

    if case.id == "device-no-gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.chdir(tmp_path)  # default output folders land in the test's folder
    argv = case.setup(tmp_path)
    if case.patch is not None:
        case.patch(monkeypatch)
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert code == case.code, (case.damage, err)
    assert __import__("re").search(case.message, err), (case.damage, err)
    if case.names:
        assert case.names in err
    if case.code == 2:  # a user error: exactly one error line (progress bars aside)
        assert len([ln for ln in err.splitlines() if "error:" in ln]) == 1, err
        assert err.strip().splitlines()[-1].startswith("avfusion "), err


SUBPROCESS_SAMPLE = ["truncated-video", "text-as-video", "afew-no-landmarks", "yaml-indent", "split-by-clip-vs-actor",
                     "model-folder-cut"]


@pytest.mark.slow
def test_sample_as_subprocess_prints_no_traceback_or_native_noise(tmp_path):
    """The real program, in its own process (native libraries write to the process's stderr, which
    capsys cannot see): one clean line per problem, nothing from FFmpeg, decord or OpenCV."""
    import re
    import subprocess
    import sys

    for case in (c for c in CASES if c.id in SUBPROCESS_SAMPLE):
        work = tmp_path / case.id
        work.mkdir()
        argv = case.setup(work)
        proc = subprocess.run([sys.executable, "-m", "avfusion.cli.main", *argv], capture_output=True, text=True,
                              cwd=work, timeout=120)
        err = proc.stderr
        assert proc.returncode == case.code, (case.id, err)
        assert "Traceback" not in err and ".cc:" not in err and "[ WARN" not in err, (case.id, err)
        assert re.search(case.message, err), (case.id, err)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert all(ln.startswith(("avfusion ", "  failed: ")) for ln in lines), (case.id, err)
