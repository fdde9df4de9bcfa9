"""The catalogue of bad inputs and faults: one row per case -- what is damaged, which command, and
the one-line message (exit code 2: a user error before any work; 1: a batch that went on past a
bad file) or the warning it must give. Every row runs the real command in process and checks that
stderr carries no traceback and names the file. New cases are added here.

Cases that need a long run (a killed training, a tampered checkpoint, SIGINT during predict, a
cache file cut in half, a failed cache retried) live beside their subject in test_train.py,
test_predict_batch.py and test_cache.py; so do two real runs sharing an output folder
(test_train.py), a rotated phone clip (test_decoding.py, test_predict_faces.py) and a frames_dir
whose numbering skips a frame (test_datasets.py). Full disks are injected here (the writer's last
step, safetensors inside Accelerate's save_state or the export of best/).
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
         r"cache: No space left on device \(writing \S+\); free space there", "cache", patch=lambda m: _enospc(m, "avfusion.files._fsync_file")),
    Case("checkpoint-disk-full", "the disk fills while a checkpoint is saved", lambda t: _train_argv(t), 2,
         r"could not be written \(disk full\?\).*--resume latest", patch=lambda m: _torch_write_fails(m)),
    Case("predict-disk-full", "the disk fills while a table is written", lambda t: predict(str(video(t)), "--out", str(t / "o")), 1,
         r"v\.mp4: .*/o: No space left on device \(writing v_va\.csv\)", patch=lambda m: _enospc(m, "pandas.DataFrame.to_csv")),
    Case("device-no-gpu", "--device cuda on a machine without one", lambda t: predict(str(video(t)), extra=("--device", "cuda")), 2,
         r"no CUDA GPU is available"),
]

# --- second round (issue 20): lost or mixed work, silent misalignment, tracebacks, messages, splits --
CASES += [
    # one run per output folder: a live lock refuses, a stale one is replaced, a finished run is kept
    Case("train-folder-locked", "a second training into a folder a live run holds",
         lambda t: _locked(t / "run", alive=True) and _train_argv(t), 2,
         r"run: avfusion train \(pid \d+ on .*\) is writing into this folder", ".avfusion.lock"),
    Case("evaluate-folder-locked", "an evaluation into a folder a live evaluation holds",
         lambda t: _locked(t / "eval", alive=True, command="evaluate") and with_labels(t, _rows(6)), 2,
         r"eval: avfusion evaluate \(pid \d+.*is writing into this folder"),
    Case("predict-folder-locked", "a batch into a folder a live batch holds",
         lambda t: _locked(t / "o", alive=True, command="predict") and predict(str(video(t)), "--out", str(t / "o")), 2,
         r"o: avfusion predict \(pid \d+.*is writing into this folder"),
    Case("cache-folder-locked", "a cache run into a folder a live cache run holds",
         lambda t: _locked(t / "cache", alive=True, command="cache") and _cache_argv(t), 2,
         r"cache: avfusion cache \(pid \d+.*is writing into this folder"),
    Case("stale-lock", "a lock left by a process that is gone (warns, runs)",
         lambda t: _locked(t / "eval", alive=False, command="evaluate") and with_labels(t, _rows(6)), 0,
         r"warning: .*\.avfusion\.lock: removed a stale lock of avfusion evaluate", ".avfusion.lock"),
    Case("train-finished-other-run", "training into a folder holding a finished run of another config",
         lambda t: _finished_run(t / "run", {"train": {"seed": 5}}) and _train_argv(t), 2,
         r"output_dir .*run: holds a finished training run of another config \(.*\); pass --overwrite"),
    Case("train-unfinished-run", "training (no --resume) into a folder with another run's checkpoints",
         lambda t: _checkpointed_run(t / "run") and _train_argv(t), 2,
         r"holds an unfinished training run .*last checkpoint step_3.*--resume latest continues it"),
    Case("train-resume-and-overwrite", "--resume and --overwrite together",
         lambda t: _train_argv(t) + ["--resume", "latest", "--overwrite"], 2, r"give one of them"),
    Case("evaluate-other-results", "evaluate into a folder holding another model's results",
         lambda t: _other_results(t / "eval", "evaluate", "metrics.json") and with_labels(t, _rows(6)), 2,
         r"eval: holds the results of another evaluation \(.*model: 'someone_else' -> 'tiny'.*--overwrite"),
    Case("predict-other-model", "predict into a folder holding another model's tables",
         lambda t: _other_results(t / "o", "predict", "x_va.csv") and predict(str(video(t)), "--out", str(t / "o")), 2,
         r"o: holds predictions of another model or settings \(.*model: 'someone_else' -> 'tiny'.*x_va\.csv"),
    # output folders that cannot be one (checked before any work)
    Case("predict-out-is-file", "--out names a file", lambda t: predict(str(video(t)), "--out", str(_file(t / "o"))), 2,
         r"--out .*o: is a file, not a folder"),
    Case("predict-out-below-file", "--out below a file", lambda t: predict(str(video(t)), "--out", str(_file(t / "f") / "o")), 2,
         r"--out .*: .*f is a file, so no folder can be made below it"),
    Case("predict-out-read-only", "--out in a read-only place", lambda t: predict(str(video(t)), "--out", str(t / "o")), 2,
         r"--out .*o: .*not writable \(permission denied or a read-only place\)",
         patch=lambda m: m.setattr("avfusion.runlock.os.access", lambda *a, **k: False)),
    Case("evaluate-out-is-file", "evaluate --out names a file",
         lambda t: with_labels(t, _rows(6))[:-4] + ["--out", str(_file(t / "o")), "--no-plots", "data.face_backend=full"], 2,
         r"--out .*o: is a file, not a folder"),
    Case("cache-out-is-file", "cache --out names an existing file",
         lambda t: _file(t / "cache") and _cache_argv(t), 2, r"--out .*cache: is a file, not a folder"),
    # full disks: nothing short under a final name, the folder named
    Case("evaluate-disk-full", "the disk fills while evaluate writes its tables",
         lambda t: with_labels(t, _rows(6)), 2, r"eval: No space left on device \(writing \S+\.csv\)",
         patch=lambda m: _enospc(m, "avfusion.files._fsync_file")),
    Case("checkpoint-safetensors-full", "safetensors fills the disk inside accelerator.save_state",
         lambda t: _train_argv(t), 2,
         r"checkpoints: No space left on device \(writing step_\d+\).*--resume latest continues",
         patch=lambda m: _safetensors_full(m, "accelerate.Accelerator.save_state")),
    Case("best-model-disk-full", "safetensors fills the disk while best/ is exported", lambda t: _train_argv(t), 2,
         r"run: No space left on device \(writing best\)", patch=lambda m: _safetensors_full(m, "safetensors.torch.save_file")),
    # videos named for what they are, batches that report every input, outputs that are never inputs
    Case("fifo-as-video", "a FIFO named .mp4", lambda t: predict(str(_fifo(t / "pipe.mp4")), "--out", str(t / "o")), 1,
         r"pipe\.mp4: is a FIFO \(named pipe\), not a video file"),
    Case("folder-in-manifest", "a manifest row whose video_path is a folder",
         lambda t: manifest(t, f"a,{_mkdir(t / 'clip.mp4')},\n"), 2, r"line 2 \(a\): video_path .*clip\.mp4: is a folder, not a video file"),
    Case("fifo-in-manifest", "a manifest row whose video_path is a FIFO",
         lambda t: manifest(t, f"a,{_fifo(t / 'pipe.mp4')},\n"), 2, r"video_path .*pipe\.mp4: is a FIFO"),
    Case("broken-link-video", "a symbolic link to a deleted video",
         lambda t: predict(str(_link(t / "gone.mp4", t / "l.mp4")), "--out", str(t / "o")), 1,
         r"l\.mp4: broken symbolic link"),
    Case("symlink-loop-input", "a link that points at itself, given as input",
         lambda t: predict(str(_link(t / "loop.mp4", t / "loop.mp4")), "--out", str(t / "o")), 1, r"loop\.mp4: symbolic link loop"),
    Case("symlink-cycle-folder", "a folder with a link back to itself and a looping .mp4 link",
         lambda t: predict(str(_cyclic(t)), "--out", str(t / "o")), 1, r"in/loop\.mp4: symbolic link loop"),
    Case("unreadable-subfolder", "a sub-folder the batch cannot enter",
         lambda t: predict(str(_with_locked_subfolder(t)), "--out", str(t / "o")), 1,
         r"locked: folder cannot be read \(Permission denied\); its videos were not predicted",
         patch=lambda m: _scandir_denied(m, "locked")),
    Case("out-inside-input", "--out inside the input folder, holding the last run's overlay (warns, skips it)",
         lambda t: _last_overlay(t) and predict(str(t / "in"), "--out", str(t / "in" / "o")), 0,
         r"warning: .*in: left out what avfusion predict wrote there .*outputs are never inputs"),
    # frame folders: matched by number
    Case("frames-dir-gap", "a frames_dir whose numbering skips f002 (warns, masks it)",
         lambda t: _gapped_frames(t), 0, r"warning: .*fr: frame images are numbered 0\.\.3 but 1 number\(s\) are missing \(2\)"),
    Case("frames-dir-unnumbered", "a frames_dir image without a number",
         lambda t: _gapped_frames(t, extra="cover.png"), 2, r"fr: frame image cover\.png has no frame number"),
    Case("frames-dir-duplicate", "two images with one frame number",
         lambda t: _gapped_frames(t, extra="f01.png"), 2, r"fr: (f001\.png and f01\.png|f01\.png and f001\.png) both carry frame number 1"),
    # settings checked before any work, each naming where the value came from
    Case("cache-window-0", "cache --window 0", lambda t: _cache_argv(t) + ["--window", "0"], 2, r"--window must be >= 1 frame, got 0"),
    Case("manifest-no-rows", "a manifest with a header and no rows", lambda t: manifest(t, ""), 2,
         r"m\.csv: a header and no rows", "m.csv"),
    Case("config-json-wrong-type", "an exported config.json with a width that is a string",
         lambda t: _typed_config(t), 2, r"config\.json: fusion\.d_model must be an integer, got 'wide'", "config.json"),
    Case("section-is-number-cli", "train=3 on the command line", lambda t: train_cfg(t, GOOD_EXP.format(root=t), "train=3"), 2,
         r"command-line override: train must be a mapping of TrainConfig fields, got 3"),
    Case("section-is-number-yaml", "`data: 3` in the experiment file",
         lambda t: train_cfg(t, "name: x\nmodel: tiny\ndata: 3\n"), 2, r"exp\.yaml, line 3: data must be a mapping", "exp.yaml"),
    Case("lr-not-number-cli", "train.lr=abc", lambda t: train_cfg(t, GOOD_EXP.format(root=t), "train.lr=abc"), 2,
         r"command-line override: train\.lr must be a number, got 'abc'"),
    Case("batch-size-not-number-cli", "data.batch_size=abc", lambda t: train_cfg(t, GOOD_EXP.format(root=t), "data.batch_size=abc"), 2,
         r"command-line override: data\.batch_size must be an integer, got 'abc'"),
    Case("lr-not-number-yaml", "lr: fast in the file", lambda t: train_cfg(t, GOOD_EXP.format(root=t) + "  lr: fast\n"), 2,
         r"exp\.yaml, line 9: train\.lr must be a number, got 'fast'", "exp.yaml"),
    Case("heads-do-not-divide", "fusion.n_heads that does not divide the width",
         lambda t: train_cfg(t, GOOD_EXP.format(root=t), "model_overrides.fusion.temporal=transformer",
                             "model_overrides.fusion.n_heads=5"), 2,
         r"command-line override: model_overrides of model tiny: fusion\.n_heads \(5\) must divide fusion\.d_model \(64\)"),
    Case("set-heads-do-not-divide", "evaluate --set fusion.n_heads=5 (a width of 64)",
         lambda t: with_labels(t, _rows(6)) + ["--set", "fusion.temporal=transformer", "--set", "fusion.n_heads=5"], 2,
         r"--set of model tiny: fusion\.n_heads \(5\) must divide fusion\.d_model \(64\)"),
    Case("depth-zero-yaml", "fusion.n_layers: 0 in the experiment's model_overrides",
         lambda t: train_cfg(t, GOOD_EXP.format(root=t) + "model_overrides:\n  fusion:\n    n_layers: 0\n"), 2,
         r"exp\.yaml, line 9: model_overrides of model tiny: fusion\.n_layers must be >= 1", "exp.yaml"),
    Case("model-yaml-bad-heads", "a model YAML whose heads do not divide its width",
         lambda t: predict(str(video(t)))[:2] + ["--model", str(_model_yaml(t))] + predict(str(video(t)))[4:], 2,
         r"m\.yaml: fusion\.n_heads \(3\) must divide fusion\.d_model \(32\)", "m.yaml"),
    Case("loss-not-finite", "a training whose loss becomes NaN", lambda t: _train_argv(t), 2,
         r"non-finite training loss nan at step 0 .*lower train\.lr", patch=lambda m: _nan_loss(m)),
    Case("features-other-encoder", "evaluating a cache made with other encoder settings",
         lambda t: _cache_then_evaluate(t, "audio.n_mels=32"), 2,
         r"manifest\.json: cached audio features are 64 wide, the model expects 32 \(the cache was made with other encoder settings\)"),
    Case("yunet-model-garbage", "--yunet-model that OpenCV cannot load",
         lambda t: _yunet(t, _file(t / "det.onnx", b"not an onnx file")), 2,
         r"det\.onnx: OpenCV could not load this YuNet model \([^/]*\); give the official file", "det.onnx"),
    Case("yunet-model-missing", "--yunet-model that does not exist", lambda t: _yunet(t, t / "nope.onnx"), 2,
         r"YuNet model file not found: .*nope\.onnx"),
    Case("evaluate-part-test-no-split", "evaluate --part test without a split file",
         lambda t: with_labels(t, _rows(6)) + ["--part", "test"], 2,
         r"part test: no split file given, and 1 clip\(s\) cannot be split into train/val/test .*--part all"),
    Case("evaluate-part-test-default-split", "evaluate --part test, no split file, the default fractions (no test part)",
         lambda t: _actor_split(t)[:-5] + ["--part", "test"], 2,
         r"part test: the split has no test clips \(no split file given: .*data\.test_fraction=0\.0 has no test part\)"),
    Case("face-backend-typo", "data.face_backend=yunett", lambda t: train_cfg(t, GOOD_EXP.format(root=t), "data.face_backend=yunett"), 2,
         r"command-line override: data\.face_backend must be one of auto, yunet"),
    Case("workers-negative", "data.num_workers=-1", lambda t: train_cfg(t, GOOD_EXP.format(root=t), "data.num_workers=-1"), 2,
         r"data\.num_workers must be >= 0, got -1"),
    # splits that cannot do what was asked
    Case("split-fractions-missed", "6 clips over 3 actors, val 0.2 / test 0.2 (warns with the sizes)",
         lambda t: _actor_split(t), 0, r"warning: .*cannot meet the fractions asked within 5 points: train \d+ clips"),
    Case("split-fractions-strict", "the same with --strict-split", lambda t: _actor_split(t, "--strict-split"), 2,
         r"cannot meet the fractions asked.*--strict-split made this an error"),
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


def _rows(n: int) -> list[tuple]:
    return [(k, k / 10, -k / 10) for k in range(n)]


def _file(p: Path, data: bytes = b"x") -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def _locked(folder: Path, alive: bool, command: str = "train") -> bool:
    """A lock file as another run leaves it: a live process (this test's parent) or a gone one."""
    import os
    import socket
    import subprocess
    import sys

    pid = os.getppid()
    if not alive:
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        proc.wait()
        pid = proc.pid
    _mkdir(folder)
    (folder / ".avfusion.lock").write_text(json.dumps({"command": command, "pid": pid, "host": socket.gethostname(),
                                                       "started": "2026-01-01 00:00:00"}))
    return True


def _finished_run(out: Path, identity: dict) -> bool:
    _mkdir(out / "best")
    (out / "results.json").write_text("{}")
    (out / ".avfusion-run.json").write_text(json.dumps({"command": "train", "identity": identity}))
    return True


def _checkpointed_run(out: Path) -> bool:
    _mkdir(out / "checkpoints" / "step_3")
    (out / "checkpoints" / "step_3" / "trainer_state.json").write_text("{}")
    return True


def _other_results(out: Path, command: str, name: str) -> bool:
    _mkdir(out)
    (out / name).write_text("{}" if name.endswith(".json") else "frame\n0\n")
    (out / ".avfusion-run.json").write_text(json.dumps({"command": command, "identity": {"model": "someone_else"}}))
    return True


def _safetensors_full(monkeypatch, target: str) -> None:
    class SafetensorError(Exception):  # safetensors' Rust error, as it reads on a full disk
        pass

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(target, full)


def _nan_loss(monkeypatch) -> None:
    import torch

    import avfusion.train.loop as loop

    real = loop.training_loss
    monkeypatch.setattr(loop, "training_loss", lambda *a, **k: real(*a, **k) * torch.tensor(float("nan")))


def _fifo(p: Path) -> Path:
    import os

    os.mkfifo(p)
    return p


def _link(target: Path, link: Path) -> Path:
    link.symlink_to(target)
    return link


def _cyclic(t: Path) -> Path:
    root = _mkdir(t / "in" / "sub")
    video(root, "a.mp4")
    (root / "up").symlink_to(root.parent)  # in/sub/up -> in: a cycle
    (root.parent / "loop.mp4").symlink_to(root.parent / "loop.mp4")
    return root.parent


def _with_locked_subfolder(t: Path) -> Path:
    video(_mkdir(t / "in"), "a.mp4")
    video(_mkdir(t / "in" / "locked"), "b.mp4")
    return t / "in"


def _scandir_denied(monkeypatch, name: str) -> None:
    """os.scandir as on a folder without read permission (tests may run as root, who reads anything)."""
    import errno
    import os

    real = os.scandir

    def scandir(path="."):
        if Path(path).name == name:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr("avfusion.predict.batch.os.scandir", scandir)


def _last_overlay(t: Path) -> bool:
    video(_mkdir(t / "in"), "a.mp4")
    out = _mkdir(t / "in" / "o")
    video(out, "a_overlay.mp4")
    (out / "a_summary.json").write_text("{}")
    video(t / "in" / "old", "b_overlay.mp4")  # an older run's overlay elsewhere in the folder
    (t / "in" / "old" / "b_summary.json").write_text("{}")
    return True


def _gapped_frames(t: Path, extra: Optional[str] = None) -> list[str]:
    import cv2
    import numpy as np

    d = _mkdir(t / "fr")
    for k in (0, 1, 3):
        cv2.imwrite(str(d / f"f{k:03d}.png"), np.full((16, 16, 3), 40 * k, np.uint8))
    if extra:
        cv2.imwrite(str(d / extra), np.zeros((16, 16, 3), np.uint8))
    write_label_csv(t / "a.csv", _rows(4))
    return manifest(t, f"a,,a.csv,{d},25\n", "video_id,video_path,labels_path,frames_dir,fps")


def _typed_config(t: Path) -> list[str]:
    m = _export(t)
    meta = json.loads((m / "config.json").read_text())
    meta["model"]["fusion"]["d_model"] = "wide"
    (m / "config.json").write_text(json.dumps(meta))
    return ["predict", str(video(t)), "--model", str(m), "--face-backend", "full", "--out", str(t / "o")]


def _model_yaml(t: Path) -> Path:
    (t / "m.yaml").write_text("mode: video\nvideo: {name: hog}\naudio: null\n"
                              "fusion: {d_model: 32, n_heads: 3, n_layers: 1, temporal: transformer}\n")
    return t / "m.yaml"


def _cache_then_evaluate(t: Path, *model_set: str) -> list[str]:
    from avfusion.cli.main import main

    assert main(_cache_argv(t)) == 0
    sets = [w for s in model_set for w in ("--set", s)]
    return ["evaluate", "--model", "tiny", *sets, "--config", "tiny_synthetic", "--features", str(t / "cache"),
            "--part", "all", "--out", str(t / "eval"), "--no-plots", "data.root=null", "data.clip_len=8",
            "data.stride=8"]


def _yunet(t: Path, model: Path) -> list[str]:
    return ["predict", str(video(t)), "--model", "tiny", "--face-backend", "yunet", "--yunet-model", str(model),
            "--out", str(t / "o"), "--no-plot", "--quiet"]


def _actor_split(t: Path, *extra: str) -> list[str]:
    for i in range(6):
        video(t, f"c{i}.mp4", 4)
        write_label_csv(t / f"c{i}.csv", _rows(4))
    rows = "".join(f"c{i},c{i}.mp4,c{i}.csv,actor{i // 2}\n" for i in range(6))
    return manifest(t, rows, "video_id,video_path,labels_path,actor") + [
        "--part", "val", "data.split_by=actor", "data.val_fraction=0.2", "data.test_fraction=0.2", *extra]


def test_catalogue_has_the_promised_size():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)
    assert len(CASES) - 51 >= 30  # the second round (issue 20) added at least 30 cases to the first 51


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


SUBPROCESS_SAMPLE = ["truncated-video", "afew-no-landmarks", "yaml-indent", "model-folder-cut", "yunet-model-garbage"]


# The real program in one process of its own, each case in turn (one interpreter start instead of
# five): a marker line on the process's stderr (fd 2, where native libraries write) separates the
# cases, and the exit codes come back on stdout.
_SAMPLE_DRIVER = """
import json, os, sys
from avfusion.cli.main import main
codes = []
for cwd, argv in json.load(open(sys.argv[1])):
    os.chdir(cwd)
    sys.stderr.flush()
    os.write(2, b"@@case@@\\n")
    codes.append(main(argv))
    sys.stderr.flush()
print(json.dumps(codes))
"""


@pytest.mark.slow
def test_sample_as_subprocess_prints_no_traceback_or_native_noise(tmp_path):
    """The real program, in its own process (native libraries write to the process's stderr, which
    capsys cannot see): one clean line per problem, nothing from FFmpeg, decord or OpenCV."""
    import json
    import re
    import subprocess
    import sys

    cases, jobs = [c for c in CASES if c.id in SUBPROCESS_SAMPLE], []
    assert len(cases) == len(SUBPROCESS_SAMPLE)
    for case in cases:
        work = tmp_path / case.id
        work.mkdir()
        jobs.append((str(work), [str(a) for a in case.setup(work)]))
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    proc = subprocess.run([sys.executable, "-c", _SAMPLE_DRIVER, str(tmp_path / "jobs.json")], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    codes = json.loads(proc.stdout.strip().splitlines()[-1])
    before, *errs = proc.stderr.split("@@case@@\n")
    assert not before.strip() and len(errs) == len(cases), proc.stderr
    for case, code, err in zip(cases, codes, errs):
        assert code == case.code, (case.id, err)
        assert "Traceback" not in err and ".cc:" not in err and ".cpp:" not in err, (case.id, err)
        assert "[ WARN" not in err and "[ERROR" not in err, (case.id, err)
        assert re.search(case.message, err), (case.id, err)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert all(ln.startswith(("avfusion ", "  failed: ")) for ln in lines), (case.id, err)


@pytest.mark.parametrize("case_id", ["evaluate-disk-full", "checkpoint-safetensors-full", "best-model-disk-full",
                                     "cache-disk-full"])
def test_full_disk_leaves_nothing_short_under_a_final_name(case_id, tmp_path, capsys, monkeypatch):
    """After a write fails for lack of space, no temporary file is left and nothing incomplete
    carries a final name: the evaluation has no metrics.json, the checkpoint folder is gone, best/
    is absent or a loadable model, the cache holds only whole files."""
    from avfusion.cli.main import main

    case = next(c for c in CASES if c.id == case_id)
    monkeypatch.chdir(tmp_path)
    argv = case.setup(tmp_path)
    case.patch(monkeypatch)
    assert main(argv) == 2
    capsys.readouterr()
    assert not [p for p in tmp_path.rglob("*") if ".partial" in p.name or ".old-" in p.name]
    run = tmp_path / "run"
    if case_id == "evaluate-disk-full":
        assert not any((tmp_path / "eval").glob("*.json")) and not any((tmp_path / "eval").glob("*.csv"))
    elif case_id == "checkpoint-safetensors-full":
        assert not list((run / "checkpoints").glob("step_*")) and not (run / "results.json").exists()
        monkeypatch.undo()
        from avfusion.factory import from_pretrained

        from_pretrained(run / "best")  # exported before the checkpoint failed: whole
    elif case_id == "best-model-disk-full":
        assert not (run / "best").exists() and not (run / "results.json").exists()
    else:
        from safetensors import safe_open

        for f in (tmp_path / "cache").glob("*.safetensors"):
            with safe_open(str(f), framework="pt") as st:
                assert list(st.keys())


def test_evaluate_and_predict_folders_belong_to_one_model(tmp_path, capsys, monkeypatch):
    """The same evaluation (or batch) run again replaces its own results; another model's are kept,
    byte for byte, and the run refused, unless --overwrite, which replaces them."""
    from avfusion.cli.main import main

    monkeypatch.chdir(tmp_path)
    other = str(_export(tmp_path))  # the same architecture, exported: another model string
    argv = with_labels(tmp_path, _rows(6))
    assert main(argv) == 0 and main(argv) == 0
    metrics = (tmp_path / "eval" / "metrics.json").read_bytes()
    swapped = [other if a == "tiny" else a for a in argv]
    assert main(swapped) == 2 and "holds the results of another evaluation" in capsys.readouterr().err
    assert (tmp_path / "eval" / "metrics.json").read_bytes() == metrics
    assert main(swapped + ["--overwrite"]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["model"] == other

    argv = predict(str(tmp_path / "a.mp4"), "--out", str(tmp_path / "o"))
    assert main(argv) == 0 and main(argv) == 0
    swapped = [other if a == "tiny" else a for a in argv]
    assert main(swapped) == 2 and "holds predictions of another model" in capsys.readouterr().err
    (tmp_path / "o" / "stale_va.csv").write_text("frame\n0\n")  # a table of the old model for another video
    assert main(swapped + ["--overwrite"]) == 0
    assert not (tmp_path / "o" / "stale_va.csv").exists() and (tmp_path / "o" / "a_va.csv").is_file()
    assert json.loads((tmp_path / "o" / "a_summary.json").read_text())["model"] != "tiny"
