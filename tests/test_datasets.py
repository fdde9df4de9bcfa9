"""AFEW-VA, Aff-Wild2 and manifest loaders on small trees written here in the documented formats."""
from __future__ import annotations

import json
import math
import warnings
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import write_grey_video
from avfusion.data.afew_va import afew_va_layout, load_afew_va
from avfusion.data.affwild2 import load_affwild2, raw_video_name
from avfusion.data.manifest import load_manifest

# ---------------------------------------------------------------------------------------------
# writers (exactly the layouts of docs/FORMATS.md)


def write_video(path: Path, n: int, fps: float | Fraction = 25, audio: bool = True,
                size: int = 32, sample_rate: int = 16000) -> Path:
    """A tiny video whose frame k is a flat grey of level 16 + 12 k, optionally with a tone."""
    return write_grey_video(path, n, fps, audio=audio, size=size, sample_rate=sample_rate)


def landmarks68(k: int) -> list[list[float]]:
    """68 points on a small ellipse that moves with the frame number (a face box of ~20 px)."""
    a = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    pts = np.stack([30 + k + 10 * np.cos(a), 24 + 12 * np.sin(a)], axis=1)
    return pts.round(2).tolist()


def write_afew_clip(clip_dir: Path, n: int, actor: str = "Ann", values: list | None = None,
                    drop_key: str | None = None, n_images: int | None = None,
                    keys: list[str] | None = None) -> Path:
    """Clip folder NNN/ with 00000.png … and NNN.json; labels v = k - 5, a = 5 - k (integers)."""
    clip_dir.mkdir(parents=True, exist_ok=True)
    for k in range(n if n_images is None else n_images):
        img = np.full((48, 64, 3), 10 * k, dtype=np.uint8)
        cv2.imwrite(str(clip_dir / f"{k:05d}.png"), img)
    frames = {}
    for i, key in enumerate(keys or [f"{k:05d}" for k in range(n)]):
        v, a = (values[i] if values is not None else (i - 5, 5 - i))
        fr = {"valence": v, "arousal": a, "landmarks": landmarks68(i)}
        if drop_key:
            fr.pop(drop_key, None)
        frames[key] = fr
    data = {"actor": actor, "video_id": clip_dir.name, "frames": frames}
    if drop_key == "frames":
        data.pop("frames")
    (clip_dir / f"{clip_dir.name}.json").write_text(json.dumps(data))
    return clip_dir


# ---------------------------------------------------------------------------------------------
# AFEW-VA


def test_afew_flat_layout(tmp_path: Path) -> None:
    root = tmp_path / "AFEW-VA"
    write_afew_clip(root / "001", 8, actor="Ann")
    write_afew_clip(root / "002", 10, actor="Bob")
    recs = load_afew_va(root)
    assert afew_va_layout(root) == "flat"
    assert [r.video_id for r in recs] == ["001", "002"]
    r = recs[1]
    assert r.n_frames == 10 and r.actor == "Bob" and r.face_mode == "landmarks"
    assert r.audio_path is None and r.is_frame_folder
    assert Path(r.source[3]).name == "00003.png"
    # integers in [-10, 10] divided by 10
    np.testing.assert_allclose(r.valence, (np.arange(10) - 5) / 10, atol=1e-6)
    np.testing.assert_allclose(r.arousal, (5 - np.arange(10)) / 10, atol=1e-6)
    assert r.label_mask.all()
    assert r.landmarks.shape == (10, 68, 2)
    np.testing.assert_allclose(r.landmarks[4], np.array(landmarks68(4)), atol=1e-4)
    # the flattened copy unpacked one level down is found as well
    assert [x.video_id for x in load_afew_va(tmp_path)] == ["001", "002"]


def test_afew_official_layout(tmp_path: Path) -> None:
    write_afew_clip(tmp_path / "01" / "001", 8)
    write_afew_clip(tmp_path / "01" / "002", 9, actor="Cy")
    write_afew_clip(tmp_path / "02" / "051", 12)
    recs = load_afew_va(tmp_path)
    assert afew_va_layout(tmp_path) == "official"
    assert [(r.video_id, r.n_frames) for r in recs] == [("001", 8), ("002", 9), ("051", 12)]
    assert recs[1].actor == "Cy"
    assert [r.video_id for r in load_afew_va(tmp_path, ids=["051"])] == ["051"]


def test_afew_mixed_layouts_refused(tmp_path: Path) -> None:
    write_afew_clip(tmp_path / "001", 8)
    write_afew_clip(tmp_path / "01" / "002", 8)
    with pytest.raises(ValueError, match="mixes the flattened layout"):
        load_afew_va(tmp_path)


def test_afew_label_count_mismatch_names_clip_and_counts(tmp_path: Path) -> None:
    write_afew_clip(tmp_path / "007", 8, n_images=9)
    with pytest.raises(ValueError) as e:
        load_afew_va(tmp_path)
    msg = str(e.value)
    assert "007.json" in msg and "8 labelled frames" in msg and "9 frame images" in msg


def test_afew_frame_keys_must_match_png_stems(tmp_path: Path) -> None:
    # same count, but 1-based keys: a silent off-by-one if accepted
    write_afew_clip(tmp_path / "003", 8, keys=[f"{k:05d}" for k in range(1, 9)])
    with pytest.raises(ValueError, match=r"003\.json: frame keys do not match the image names"):
        load_afew_va(tmp_path)


@pytest.mark.parametrize("key", ["valence", "arousal", "landmarks", "frames"])
def test_afew_missing_json_keys(tmp_path: Path, key: str) -> None:
    write_afew_clip(tmp_path / "004", 8, drop_key=key)
    with pytest.raises(KeyError) as e:
        load_afew_va(tmp_path)
    assert "004.json" in str(e.value) and repr(key) in str(e.value)


def test_afew_missing_actor(tmp_path: Path) -> None:
    d = write_afew_clip(tmp_path / "005", 8)
    data = json.loads((d / "005.json").read_text())
    del data["actor"]
    (d / "005.json").write_text(json.dumps(data))
    with pytest.raises(KeyError, match="missing key 'actor'"):
        load_afew_va(tmp_path)


def test_afew_nan_labels_masked_with_one_warning(tmp_path: Path) -> None:
    vals = [(k - 5, 5 - k) for k in range(8)]
    vals[2] = (float("nan"), 1)
    vals[6] = (None, None)
    write_afew_clip(tmp_path / "006", 8, values=vals)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        (r,) = load_afew_va(tmp_path)
    msgs = [str(x.message) for x in w if "NaN" in str(x.message)]
    assert len(msgs) == 1 and "006.json" in msgs[0] and "2 frame(s)" in msgs[0]
    assert r.label_mask.tolist() == [True, True, False, True, True, True, False, True]
    assert np.isnan(r.labels[[2, 6]]).all()


def test_afew_out_of_range_values(tmp_path: Path) -> None:
    vals = [(0, 0)] * 8
    vals = vals[:3] + [(11, 0)] + vals[4:]
    write_afew_clip(tmp_path / "008", 8, values=vals)
    with pytest.raises(ValueError, match=r"008\.json, frame 00003: .* outside \[-10, 10\]"):
        load_afew_va(tmp_path)


def test_afew_bad_landmarks(tmp_path: Path) -> None:
    d = write_afew_clip(tmp_path / "009", 8)
    data = json.loads((d / "009.json").read_text())
    data["frames"]["00001"]["landmarks"] = data["frames"]["00001"]["landmarks"][:60]
    (d / "009.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"frame 00001: landmarks must be 68"):
        load_afew_va(tmp_path)


# ---------------------------------------------------------------------------------------------
# Aff-Wild2


def write_va_txt(path: Path, rows: list[tuple[float, float]], header: str = "valence,arousal") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "".join(f"{v},{a}\n" for v, a in rows))
    return path


def write_crops(folder: Path, n: int, missing: set[int] = frozenset()) -> None:
    """1-based 00001.jpg …, skipping the (1-based) numbers in ``missing``."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(1, n + 1):
        if k not in missing:
            cv2.imwrite(str(folder / f"{k:05d}.jpg"), np.full((16, 16, 3), 8 * k, np.uint8))


def va_rows(n: int, minus5: set[int] = frozenset()) -> list[tuple[float, float]]:
    """Label line k (1-based) = (k/100, -k/100), or -5 where listed."""
    return [(-5, -5) if k in minus5 else (k / 100, -k / 100) for k in range(1, n + 1)]


@pytest.fixture()
def affwild_tree(tmp_path: Path) -> Path:
    root = tmp_path / "affwild2"
    train = root / "annotations" / "VA_Estimation_Challenge" / "Train_Set"
    val = root / "annotations" / "VA_Estimation_Challenge" / "Validation_Set"
    write_va_txt(train / "v1.txt", va_rows(12, minus5={3, 4}))
    write_crops(root / "cropped_aligned" / "v1", 12, missing={4, 9})
    write_video(root / "videos" / "batch1" / "v1.mp4", 12, fps=25)
    # two people in one raw video (30 fps .avi, no audio track)
    for side in ("left", "right"):
        write_va_txt(train / f"2-30_{side}.txt", va_rows(10))
        write_crops(root / "cropped_aligned" / f"2-30_{side}", 10, missing={10} if side == "left" else set())
    write_video(root / "videos" / "batch2" / "2-30.avi", 10, fps=30, audio=False)
    write_va_txt(val / "v3.txt", va_rows(8))
    write_crops(root / "cropped_aligned" / "v3", 8)
    write_video(root / "videos" / "batch1" / "v3.mp4", 8, fps=Fraction(30000, 1001))
    return root


def test_affwild2_train_set(affwild_tree: Path) -> None:
    recs = {r.video_id: r for r in load_affwild2(affwild_tree, "train")}
    assert sorted(recs) == ["2-30_left", "2-30_right", "v1"]
    r = recs["v1"]
    assert r.n_frames == 12 and r.fps == pytest.approx(25.0) and r.face_mode == "precropped"
    # -5 lines (3 and 4, 1-based) -> frames 2 and 3 masked
    assert np.flatnonzero(~r.label_mask).tolist() == [2, 3]
    np.testing.assert_allclose(r.valence[[0, 4, 11]], [0.01, 0.05, 0.12], atol=1e-6)
    np.testing.assert_allclose(r.arousal[[0, 4, 11]], [-0.01, -0.05, -0.12], atol=1e-6)
    # missing crops 4 and 9 (1-based) -> frames 3 and 8 have no face; their labels are kept
    assert np.flatnonzero(~r.face_mask).tolist() == [3, 8]
    assert r.label_mask[8] and r.valence[8] == pytest.approx(0.09)
    assert r.source[3] is None and Path(r.source[0]).name == "00001.jpg"
    assert Path(r.source[11]).name == "00012.jpg"
    assert r.audio_path is not None and r.audio_path.endswith("v1.mp4")
    # timestamps come from the raw video
    np.testing.assert_allclose(r.timestamps, np.arange(12) / 25.0, atol=1e-3)


def test_affwild2_left_right_map_to_raw_video(affwild_tree: Path) -> None:
    recs = {r.video_id: r for r in load_affwild2(affwild_tree, "train")}
    assert raw_video_name("2-30_left") == "2-30"
    for side in ("left", "right"):
        r = recs[f"2-30_{side}"]
        assert r.group == "2-30" and r.meta["raw_video"].endswith("2-30.avi")
        assert r.fps == pytest.approx(30.0)  # read from the video, not assumed
        assert r.audio_path is None  # the raw video has no audio track
    assert not recs["2-30_left"].face_mask[9] and recs["2-30_right"].face_mask.all()


def test_affwild2_validation_set_and_fps(affwild_tree: Path) -> None:
    (r,) = load_affwild2(affwild_tree, "val")
    assert r.video_id == "v3" and r.n_frames == 8
    assert r.fps == pytest.approx(30000 / 1001, rel=1e-4)


def test_affwild2_2020_layout(tmp_path: Path) -> None:
    root = tmp_path / "aw"
    write_va_txt(root / "annotations" / "VA_Set" / "Training_Set" / "x.txt", va_rows(8, {1}))
    write_va_txt(root / "annotations" / "VA_Set" / "Validation_Set" / "y.txt", va_rows(8))
    write_crops(root / "cropped_aligned" / "x", 8)
    write_crops(root / "cropped_aligned" / "y", 8)
    write_video(root / "x.mp4", 8, fps=25, audio=False)
    write_video(root / "y.mp4", 8, fps=25, audio=False)
    (x,) = load_affwild2(root, "train")
    (y,) = load_affwild2(root, "val")
    assert (x.video_id, y.video_id) == ("x", "y")
    assert not x.label_mask[0] and x.label_mask[1:].all()


def test_affwild2_video_frames_mode(affwild_tree: Path) -> None:
    recs = {r.video_id: r for r in load_affwild2(affwild_tree, "train", frames="video")}
    r = recs["v1"]
    assert r.source.endswith("v1.mp4") and r.face_mode == "detect" and r.face_mask.all()


def test_affwild2_count_mismatch_is_an_error(affwild_tree: Path) -> None:
    ann = affwild_tree / "annotations" / "VA_Estimation_Challenge" / "Train_Set"
    write_va_txt(ann / "v1.txt", va_rows(17))
    with pytest.raises(ValueError) as e:
        load_affwild2(affwild_tree, "train")
    msg = str(e.value)
    assert "v1.txt" in msg and "17 label lines" in msg and "12 frames" in msg


def test_affwild2_count_within_tolerance_warns(affwild_tree: Path) -> None:
    ann = affwild_tree / "annotations" / "VA_Estimation_Challenge" / "Train_Set"
    write_va_txt(ann / "v1.txt", va_rows(13))
    with pytest.warns(UserWarning, match=r"v1\.txt: 13 label lines for 12 video frames"):
        recs = {r.video_id: r for r in load_affwild2(affwild_tree, "train", ids=["v1"])}
    assert recs["v1"].n_frames == 12 and recs["v1"].valence[11] == pytest.approx(0.12)
    write_va_txt(ann / "v1.txt", va_rows(11))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        (r,) = load_affwild2(affwild_tree, "train", ids=["v1"])
    assert [str(x.message).split(": ", 1)[1] for x in w] == [
        "11 label lines for 12 video frames (within the tolerance of 2): the last frames are unlabelled"]
    assert r.n_frames == 12 and not r.label_mask[11] and r.label_mask[10]
    with pytest.raises(ValueError, match="12 frames"):
        load_affwild2(affwild_tree, "train", ids=["v1"], count_tolerance=0)


def test_affwild2_without_raw_video_needs_fps(tmp_path: Path) -> None:
    root = tmp_path / "aw"
    write_va_txt(root / "annotations" / "VA_Estimation_Challenge" / "Train_Set" / "z_left.txt", va_rows(8))
    write_crops(root / "cropped_aligned" / "z_left", 8, missing={2})
    with pytest.raises(FileNotFoundError, match=r"z_left\.txt: no raw video z\.mp4/\.avi .* pass fps="):
        load_affwild2(root, "train")
    with pytest.warns(UserWarning, match="assuming fps=30"):
        (r,) = load_affwild2(root, "train", fps=30)
    assert r.n_frames == 8 and r.fps == 30 and r.audio_path is None and not r.face_mask[1]


@pytest.mark.filterwarnings("ignore:.*no raw video")
def test_affwild2_bad_files(tmp_path: Path) -> None:
    root = tmp_path / "aw"
    ann = root / "annotations" / "VA_Estimation_Challenge" / "Train_Set"
    write_crops(root / "cropped_aligned" / "q", 8)
    write_va_txt(ann / "q.txt", va_rows(8), header="arousal,valence")
    with pytest.raises(ValueError, match=r"q\.txt: first line must be the header"):
        load_affwild2(root, "train", fps=25)
    write_va_txt(ann / "q.txt", va_rows(3) + [(1.5, 0.0)] + va_rows(4))
    with pytest.raises(ValueError, match=r"q\.txt, line 5: .*outside \[-1, 1\]"):
        load_affwild2(root, "train", fps=25)
    write_va_txt(ann / "q.txt", va_rows(4) + [(0.2, float("-inf"))] + va_rows(3))
    with pytest.raises(ValueError, match=r"q\.txt, line 6: .*infinite"):
        load_affwild2(root, "train", fps=25)
    write_va_txt(ann / "q.txt", va_rows(3) + [(float("nan"), 0.1)] + va_rows(4))
    with pytest.warns(UserWarning, match=r"q\.txt: 1 frame\(s\) with NaN"):
        (r,) = load_affwild2(root, "train", fps=25)
    assert not r.label_mask[3] and r.label_mask.sum() == 7
    # crops numbered far beyond the labels belong to another video
    write_va_txt(ann / "q.txt", va_rows(8))
    write_crops(root / "cropped_aligned" / "q", 20)
    with pytest.raises(ValueError, match=r"00020\.jpg is beyond the 8 frames"):
        load_affwild2(root, "train", fps=25)


# ---------------------------------------------------------------------------------------------
# manifest


def write_label_csv(path: Path, rows: list[tuple]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("frame,valence,arousal\n" + "".join(",".join(str(x) for x in r) + "\n" for r in rows))
    return path


def test_manifest_video_and_frames_dir(tmp_path: Path) -> None:
    write_video(tmp_path / "media" / "a.mp4", 10, fps=25)
    fdir = tmp_path / "media" / "b_frames"
    fdir.mkdir(parents=True)
    for k in range(6):
        cv2.imwrite(str(fdir / f"f{k:03d}.png"), np.full((8, 8, 3), k, np.uint8))
    write_label_csv(tmp_path / "labels" / "a.csv",
                    [(0, 0.5, -0.5), (1, "", ""), (2, -5, -5), (3, 0.1, 0.2), (9, -1, 1)])
    write_label_csv(tmp_path / "labels" / "b.csv", [(k, k / 10, -k / 10) for k in range(6)])
    (tmp_path / "m.csv").write_text(
        "video_id,video_path,labels_path,actor,frames_dir,audio_path,fps\n"
        "a,media/a.mp4,labels/a.csv,ann,,,\n"
        "b,,labels/b.csv,bob,media/b_frames,,12.5\n")
    a, b = load_manifest(tmp_path / "m.csv")
    assert (a.video_id, a.n_frames, a.actor) == ("a", 10, "ann")
    assert a.fps == pytest.approx(25.0) and a.audio_path.endswith("a.mp4")
    assert a.label_mask.tolist() == [True, False, False, True] + [False] * 5 + [True]
    np.testing.assert_allclose(a.labels[[0, 3, 9]], [[0.5, -0.5], [0.1, 0.2], [-1, 1]], atol=1e-6)
    assert a.face_mode == "detect" and not a.is_frame_folder
    assert b.is_frame_folder and b.n_frames == 6 and b.fps == 12.5 and b.audio_path is None
    np.testing.assert_allclose(b.valence, np.arange(6) / 10, atol=1e-6)
    np.testing.assert_allclose(b.frame_times(), np.arange(6) / 12.5)


def test_manifest_frames_dir_with_a_gap_keeps_every_image_on_its_number(tmp_path: Path) -> None:
    """f000, f001, f003: frame 2 has no image (masked, one warning); f003's picture is frame 3,
    with frame 3's label and time, not frame 2's."""
    from avfusion.data.clips import open_reader

    fdir = tmp_path / "fr"
    fdir.mkdir()
    for k in (0, 1, 3):
        cv2.imwrite(str(fdir / f"f{k:03d}.png"), np.full((8, 8, 3), 40 * k, np.uint8))
    write_label_csv(tmp_path / "a.csv", [(k, k / 10, -k / 10) for k in range(4)])
    (tmp_path / "m.csv").write_text("video_id,video_path,labels_path,frames_dir,fps\na,,a.csv,fr,25\n")
    with pytest.warns(RuntimeWarning, match=r"fr: frame images are numbered 0\.\.3 but 1 number\(s\) are missing \(2\)"):
        (rec,) = load_manifest(tmp_path / "m.csv")
    assert rec.n_frames == 4 and rec.source[2] is None and rec.source[3].endswith("f003.png")
    np.testing.assert_allclose(rec.labels[3], [0.3, -0.3], atol=1e-6)
    reader = open_reader(rec)
    frames, valid = reader.get_batch_masked([0, 1, 2, 3])
    assert valid.tolist() == [True, True, False, True]
    assert frames[3].mean() == pytest.approx(120, abs=1) and (frames[2] == 0).all()
    np.testing.assert_allclose(reader.timestamps, np.arange(4) / 25)


def test_manifest_saved_by_excel_with_a_bom(tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" starts the file (manifest and label files) with a byte-order mark."""
    write_video(tmp_path / "a.mp4", 4, fps=25)
    (tmp_path / "a.csv").write_bytes("\ufeffframe,valence,arousal\n0,0.5,-0.5\n".encode("utf-8"))
    (tmp_path / "m.csv").write_bytes("\ufeffvideo_id,video_path,labels_path\na,a.mp4,a.csv\n".encode("utf-8"))
    with pytest.warns(UserWarning, match=r"a\.csv: rows stop at frame 0 of the video's 4 frames"):
        (rec,) = load_manifest(tmp_path / "m.csv")
    assert rec.video_id == "a" and rec.label_mask.tolist() == [True, False, False, False]


def test_label_files_that_label_nothing_warn(tmp_path: Path) -> None:
    from avfusion.data.manifest import read_label_csv
    from avfusion.data.records import mask_labels

    write_label_csv(tmp_path / "all_missing.csv", [(k, -5, -5) for k in range(4)])
    with pytest.warns(UserWarning, match=r"all_missing\.csv: no labelled frame at all"):
        _, mask = read_label_csv(tmp_path / "all_missing.csv", 4)
    assert not mask.any()
    with pytest.warns(UserWarning, match=r"clip\.txt: no labelled frame at all"):
        mask_labels(np.full((6, 2), -5.0), "clip.txt", missing=-5.0)


def test_manifest_errors(tmp_path: Path) -> None:
    fdir = tmp_path / "fr"
    fdir.mkdir()
    for k in range(4):
        cv2.imwrite(str(fdir / f"{k}.png"), np.zeros((8, 8, 3), np.uint8))
    write_label_csv(tmp_path / "ok.csv", [(0, 0.1, 0.1)])
    m = tmp_path / "m.csv"
    m.write_text("video_id,video_path,labels_path,frames_dir\nc,,ok.csv,fr\n")
    with pytest.raises(ValueError, match=r"m\.csv, line 2 \(c\): a frames_dir row needs a positive fps"):
        load_manifest(m)
    m.write_text("video_id,labels_path\nc,ok.csv\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['video_path'\]"):
        load_manifest(m)
    m.write_text("video_id,video_path,labels_path,frames_dir,fps\nc,,far.csv,fr,25\n")
    write_label_csv(tmp_path / "far.csv", [(0, 0.1, 0.1), (4, 0.2, 0.2)])
    with pytest.raises(ValueError, match=r"far\.csv, line 3: frame 4 outside the video's 4 frames"):
        load_manifest(m)
    write_label_csv(tmp_path / "far.csv", [(1, 3.0, 0.2)])
    with pytest.raises(ValueError, match=r"far\.csv, line 2: valence/arousal .* outside \[-1, 1\]"):
        load_manifest(m)
    m.write_text("video_id,video_path,labels_path\nc,missing.mp4,ok.csv\n")
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        load_manifest(m)


def test_manifest_rejects_corrupt_video(tmp_path: Path) -> None:
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 64)
    write_label_csv(tmp_path / "l.csv", [(0, 0.1, 0.1)])
    m = tmp_path / "m.csv"
    m.write_text("video_id,video_path,labels_path\nc,bad.mp4,l.csv\n")
    with pytest.raises(RuntimeError, match="bad.mp4"):
        load_manifest(m)


def test_record_keeps_masked_labels_nan() -> None:
    from avfusion.data.records import VideoRecord

    r = VideoRecord("x", ["a.png"] * 3, 3, 25.0, np.ones((3, 2)), np.array([True, False, True]))
    assert np.isnan(r.labels[1]).all() and r.group == "x"
    with pytest.raises(ValueError, match="labels must have shape"):
        VideoRecord("x", ["a.png"] * 3, 3, 25.0, np.ones((4, 2)), np.ones(3, bool))
    with pytest.raises(ValueError, match="2 frame paths for 3 frames"):
        VideoRecord("x", ["a.png"] * 2, 3, 25.0, np.ones((3, 2)), np.ones(3, bool))
    assert math.isclose(r.frame_times()[2], 0.08)
