"""Clip windows, the clip Dataset, collate and a DataLoader with workers, on tiny media written here."""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from avfusion.evaluation.collect import PredictionCollector
from torch.utils.data import DataLoader

from avfusion.data.afew_va import load_afew_va
from avfusion.data.audio import load_audio
from avfusion.data.clips import (
    BATCH_KEYS,
    ClipDataset,
    collate,
    make_windows,
    sequence_indices,
    window_starts,
)
from avfusion.data.faces import FaceCropper
from avfusion.data.manifest import load_manifest
from avfusion.data.records import VideoRecord
from avfusion.data.transforms import build_transform

from conftest import grey_level, write_grey_video  # noqa: E402

SR = 16000


def level(k: int) -> int:
    return grey_level(k)


def write_video(path: Path, n: int, fps: float | Fraction, audio: bool = True, size: int = 32) -> Path:
    """Flat grey frames (level(k)) with a 440 Hz tone whose amplitude grows with time."""
    return write_grey_video(path, n, fps, audio=audio, size=size, sample_rate=SR, ramp=True)


def frame_folder_record(tmp: Path, vid: str, n: int, fps: float = 25.0,
                        missing: tuple[int, ...] = (), unlabelled: tuple[int, ...] = ()) -> VideoRecord:
    """PNG frames (lossless: pixel value = level(k)); labels v = k / 100, a = -k / 100."""
    d = tmp / vid
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        p = d / f"{k:05d}.png"
        cv2.imwrite(str(p), np.full((20, 20, 3), level(k), np.uint8))
        paths.append(None if k in missing else str(p))
    labels = np.stack([np.arange(n) / 100, -np.arange(n) / 100], 1)
    mask = np.ones(n, bool)
    mask[list(unlabelled)] = False
    face = np.array([p is not None for p in paths])
    return VideoRecord(vid, paths, n, fps, labels, mask, face_mode="precropped", face_mask=face)


# --- windows ---------------------------------------------------------------------------------


def test_window_starts_and_padding() -> None:
    assert window_starts(10, 4, 4) == [0, 4, 8]
    assert window_starts(10, 4, 2) == [0, 2, 4, 6]
    assert window_starts(8, 4, 4) == [0, 4]
    assert window_starts(3, 4, 2) == [0]
    with pytest.raises(ValueError, match="would skip frames"):
        window_starts(10, 4, 5)


def test_eval_windows_cover_every_frame_once(tmp_path: Path) -> None:
    recs = [VideoRecord(f"r{n}", [f"{k}.png" for k in range(n)], n, 25.0, np.zeros((n, 2)), np.ones(n, bool))
            for n in (1, 7, 8, 13)]
    wins = make_windows(recs, clip_len=4)
    for r, rec in enumerate(recs):
        idx = np.concatenate([w.indices for w in wins if w.record == r])
        real = idx[idx >= 0]
        assert sorted(real.tolist()) == list(range(rec.n_frames))  # each frame exactly once
        assert (idx[: rec.n_frames] >= 0).all() and (idx[rec.n_frames:] == -1).all()  # padding only at the end
    train = make_windows(recs, clip_len=4, stride=2)
    assert [w.indices.tolist() for w in train if w.record == 1] == [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, -1]]


def test_resampling_picks_frames_by_timestamp() -> None:
    n = 30
    r30 = VideoRecord("a", [f"{k}.png" for k in range(n)], n, 30.0, np.zeros((n, 2)), np.ones(n, bool))
    assert sequence_indices(r30, 15).tolist() == list(range(0, 30, 2))
    r25 = VideoRecord("b", [f"{k}.png" for k in range(25)], 25, 25.0, np.zeros((25, 2)), np.ones(25, bool))
    up = sequence_indices(r25, 30)
    assert len(up) == 30 and up[0] == 0 and up[-1] == 24
    # grid time j/30 shows the frame that started at or before it
    np.testing.assert_array_equal(up, np.floor(np.arange(30) / 30 * 25 + 1e-9).astype(int))
    # irregular timestamps (variable frame rate) are honoured, not k / fps
    ts = np.array([0.0, 0.1, 0.15, 0.5, 0.55])
    rv = VideoRecord("c", [f"{k}.png" for k in range(5)], 5, 10.0, np.zeros((5, 2)), np.ones(5, bool), timestamps=ts)
    assert sequence_indices(rv, 10).tolist() == [0, 1, 2, 2, 2, 3, 4]


# --- the dataset ------------------------------------------------------------------------------


def test_frame_folder_items_align_frames_labels_and_masks(tmp_path: Path) -> None:
    rec = frame_folder_record(tmp_path, "x", 10, missing=(4,), unlabelled=(2,))
    ds = ClipDataset([rec], clip_len=4, crop_size=8, with_audio=False)
    assert len(ds) == 3
    items = [ds[i] for i in range(len(ds))]
    batch = collate(items)
    assert list(batch) == list(BATCH_KEYS)
    idx = batch["frame_indices"]
    assert idx.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, -1, -1]]
    real = idx >= 0
    # the frame at each position is the one frame_indices names (pixel value = level(k))
    grey = (batch["video"].mean(dim=(2, 3, 4)) * 255).round()
    expected = torch.where(real, 16 + 12 * idx, torch.zeros_like(idx)).float()
    expected[0 + 1, 0] = 0  # frame 4 has no image: black, face masked
    torch.testing.assert_close(grey, expected)
    # the label of frame k sits where frame_indices == k
    torch.testing.assert_close(batch["valence"][real], idx[real].float() / 100 * (idx[real] != 2))
    torch.testing.assert_close(batch["arousal"][real], -idx[real].float() / 100 * (idx[real] != 2))
    assert batch["mask"].tolist() == [[True, True, False, True], [True] * 4, [True, True, False, False]]
    assert batch["face_mask"].tolist() == [[True] * 4, [False, True, True, True], [True, True, False, False]]
    assert batch["valence"][~batch["mask"]].abs().sum() == 0  # no NaN leaks into a loss
    torch.testing.assert_close(batch["timestamps"][0], torch.arange(4) / 25.0)
    assert not batch["audio_valid"].any()
    # times stay increasing through the padding
    assert (batch["timestamps"][2].diff() > 0).all()


def test_video_file_items_with_audio(tmp_path: Path) -> None:
    path = write_video(tmp_path / "v.mp4", 13, fps=Fraction(30000, 1001))
    (tmp_path / "l.csv").write_text("frame,valence,arousal\n" + "".join(
        f"{k},{k / 100},{-k / 100}\n" for k in range(13)))
    (tmp_path / "m.csv").write_text("video_id,video_path,labels_path\nv,v.mp4,l.csv\n")
    (rec,) = load_manifest(tmp_path / "m.csv", face_mode="full")
    ds = ClipDataset([rec], clip_len=5, crop_size=16)
    batch = collate([ds[i] for i in range(len(ds))])
    B, T = 3, 5
    assert batch["video"].shape == (B, T, 3, 16, 16)
    assert batch["audio_valid"].all()
    idx = batch["frame_indices"]
    real = idx >= 0
    grey = (batch["video"].mean(dim=(2, 3, 4)) * 255)[real]
    assert (grey - (16 + 12 * idx[real]).float()).abs().max() < 4  # lossy codec, flat frames
    # audio of each row = the track's samples from the window's first frame to the end of its last
    track = load_audio(path, SR)
    ts = rec.timestamps
    fps = 30000 / 1001
    for b in range(B):
        k = idx[b][real[b]]
        first = int(np.floor(ts[k[0]] * SR + 0.5))
        end = int(np.floor((ts[k[-1] + 1] if k[-1] + 1 < 13 else ts[-1] + 1 / fps) * SR + 0.5))
        n = int(batch["audio_lengths"][b])
        assert abs(n - (end - first)) <= 1
        np.testing.assert_allclose(batch["audio"][b, :n].numpy(), track[first:first + n], atol=1e-6)
        assert batch["audio"][b, n:].abs().sum() == 0  # zero padding after the row's audio
        # offsets and frame times agree with the timestamps and with each other
        off = batch["audio_offsets"][b][real[b]].numpy()
        np.testing.assert_array_equal(off, np.floor(ts[k] * SR + 0.5).astype(int) - first)
        torch.testing.assert_close(batch["frame_times"][b][real[b]],
                                   torch.tensor(ts[k] - first / SR, dtype=torch.float32))
        assert batch["frame_times"][b, 0].abs() <= 0.5 / SR + 1e-7  # the first sample is the nearest one
        assert (batch["audio_offsets"][b] <= n).all()
    assert batch["audio_lengths"][2] < batch["audio_lengths"][0]  # last window is 3 frames
    # long tracks are decoded per window (seek + span) instead of cached whole: same samples
    per_window = collate([ClipDataset([rec], 5, crop_size=16, audio_cache_seconds=0)[i] for i in range(3)])
    torch.testing.assert_close(per_window["audio_lengths"], batch["audio_lengths"])
    assert (per_window["audio"] - batch["audio"]).abs().max() < 1e-3


def test_landmark_crops_from_afew_tree(tmp_path: Path) -> None:
    clip = tmp_path / "AFEW-VA" / "001"
    clip.mkdir(parents=True)
    frames = {}
    for k in range(6):
        img = np.zeros((60, 80, 3), np.uint8)
        img[20:40, 30 + k:50 + k] = 200  # a bright "face" that moves right
        cv2.imwrite(str(clip / f"{k:05d}.png"), img)
        a = np.linspace(0, 2 * np.pi, 68, endpoint=False)
        lm = np.stack([40 + k + 10 * np.cos(a), 30 + 10 * np.sin(a)], 1)
        frames[f"{k:05d}"] = {"valence": k, "arousal": -k, "landmarks": lm.tolist()}
    (clip / "001.json").write_text(json.dumps({"actor": "A", "video_id": "001", "frames": frames}))
    recs = load_afew_va(tmp_path / "AFEW-VA")
    tf = build_transform({"input_size": (3, 24, 24), "mean": (0, 0, 0), "std": (1, 1, 1)}, train=False)
    ds = ClipDataset(recs, clip_len=4, transform=tf, with_audio=False,
                     cropper={"landmarks": FaceCropper("landmarks", margin=0.0, output_size=24, smoothing=1)})
    b = collate([ds[0], ds[1]])
    assert b["video"].shape == (2, 4, 3, 24, 24)
    assert b["face_mask"].tolist() == [[True] * 4, [True, True, False, False]]
    # the crop is the landmark box: the bright square fills its centre
    centre = b["video"][0, :, :, 8:16, 8:16]
    assert (centre > 0.7).all()
    torch.testing.assert_close(b["valence"][0], torch.tensor([0.0, 0.1, 0.2, 0.3]))


def test_detect_records_need_a_detector(tmp_path: Path) -> None:
    rec = frame_folder_record(tmp_path, "d", 4)
    rec.face_mode = "detect"
    with pytest.raises(ValueError, match=r"no face cropper for face_mode \['detect'\]"):
        ClipDataset([rec], clip_len=4)


def test_drop_unlabelled_windows(tmp_path: Path) -> None:
    rec = frame_folder_record(tmp_path, "u", 8, unlabelled=(4, 5, 6, 7))
    assert len(ClipDataset([rec], 4, with_audio=False)) == 2
    ds = ClipDataset([rec], 4, with_audio=False, drop_unlabelled=True)
    assert [w.indices.tolist() for w in ds.windows] == [[0, 1, 2, 3]]


def test_stitcher_puts_predictions_back(tmp_path: Path) -> None:
    recs = [frame_folder_record(tmp_path, "s1", 7), frame_folder_record(tmp_path, "s2", 5)]
    for stride in (3, 2):  # eval (each frame once) and overlapping windows
        ds = ClipDataset(recs, 3, stride=stride, crop_size=4, with_audio=False)
        st = PredictionCollector({r.video_id: r.n_frames for r in recs}, overlap="mean" if stride < 3 else "error")
        for b in DataLoader(ds, batch_size=2, collate_fn=collate):
            # a "prediction" equal to the label of the position
            st.add(b, {"valence": b["valence"], "arousal": b["arousal"]})
        out = st.result()
        for r in recs:
            np.testing.assert_allclose(out[r.video_id].pred, r.labels, atol=1e-6)
        if stride < 3:  # overlapping windows are an error under the evaluation protocol
            strict = PredictionCollector({r.video_id: r.n_frames for r in recs}, overlap="error")
            for b in DataLoader(ds, batch_size=2, collate_fn=collate):
                strict.add(b, {"valence": b["valence"], "arousal": b["arousal"]})
            with pytest.raises(ValueError, match="must not overlap"):
                strict.result()


def test_dataloader_with_two_workers(tmp_path: Path) -> None:
    recs = []
    for i, (n, fps) in enumerate([(9, 25), (7, 30)]):
        write_video(tmp_path / f"w{i}.mp4", n, fps=fps)
        (tmp_path / f"l{i}.csv").write_text("frame,valence,arousal\n0,0.5,0.5\n")
    (tmp_path / "m.csv").write_text("video_id,video_path,labels_path\nw0,w0.mp4,l0.csv\nw1,w1.mp4,l1.csv\n")
    recs = load_manifest(tmp_path / "m.csv", face_mode="full")
    ds = ClipDataset(recs, clip_len=4, crop_size=8)
    ds[0]  # readers opened in the parent must not leak into the workers
    serial = [collate([ds[i] for i in range(j, min(j + 2, len(ds)))]) for j in range(0, len(ds), 2)]
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate, timeout=120)
    batches = list(loader)
    assert len(batches) == len(serial) == 3
    for a, b in zip(batches, serial):
        assert a["video_id"] == b["video_id"]
        for k in BATCH_KEYS:
            if torch.is_tensor(a[k]):
                torch.testing.assert_close(a[k], b[k])
    assert batches[0]["audio_valid"].all()
