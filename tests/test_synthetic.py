"""The synthetic dataset: determinism, labels in three layouts, real media files, learnable cues."""
from __future__ import annotations

import csv
import json
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from avfusion.data.audio import audio_span, load_audio
from avfusion.synthetic.generator import (
    SyntheticConfig,
    generate_dataset,
    load_metadata,
    make_actor,
    parse_fps,
    synth_voice,
)
from avfusion.data.video import VideoFile

ROOT = Path(__file__).resolve().parents[1]
N_CLIPS, N_FRAMES, SIZE = 6, 48, 96


def _cli():
    from conftest import command

    return command("synth")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth")
    argv = ["--out", str(out), "--clips", str(N_CLIPS), "--frames", str(N_FRAMES), "--size", str(SIZE)]
    assert len(_cli().main(argv + ["--fps", "mixed", "--seed", "3", "--clips-per-actor", "2"])["clips"]) == N_CLIPS
    return out, load_metadata(out)


def _label_files(root: Path) -> dict[str, bytes]:
    suffixes = {".json", ".txt", ".csv"}
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.suffix in suffixes}


def test_same_seed_same_bytes_and_frames(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "a", SyntheticConfig(clips=4, frames=10, size=64, seed=5))
    generate_dataset(tmp_path / "b", SyntheticConfig(clips=4, frames=10, size=64, seed=5))
    generate_dataset(tmp_path / "c", SyntheticConfig(clips=4, frames=10, size=64, seed=6))
    a, b, c = (_label_files(tmp_path / k) for k in "abc")
    assert a == b  # byte-identical labels (json, txt, csv, metadata)
    assert a["labels/001.csv"] != c["labels/001.csv"]
    assert (tmp_path / "a/videos/002.mp4").read_bytes() == (tmp_path / "b/videos/002.mp4").read_bytes()
    for stem in ("001", "003-004"):
        va, vb = (VideoFile(tmp_path / k / "videos" / f"{stem}.mp4") for k in "ab")
        np.testing.assert_array_equal(va.get_batch(range(10)), vb.get_batch(range(10)))
        np.testing.assert_array_equal(*(load_audio(tmp_path / k / "videos" / f"{stem}.mp4") for k in "ab"))
    png_a = cv2.imread(str(tmp_path / "a" / "AFEW-VA" / "002" / "00007.png"))
    png_b = cv2.imread(str(tmp_path / "b" / "AFEW-VA" / "002" / "00007.png"))
    np.testing.assert_array_equal(png_a, png_b)


@pytest.mark.slow
def test_worker_processes_give_the_same_dataset(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "a", SyntheticConfig(clips=4, frames=6, size=64, seed=2))
    generate_dataset(tmp_path / "b", SyntheticConfig(clips=4, frames=6, size=64, seed=2, workers=2))
    assert _label_files(tmp_path / "a") == _label_files(tmp_path / "b")
    for stem in ("001", "002", "003-004"):
        assert (tmp_path / f"a/videos/{stem}.mp4").read_bytes() == (tmp_path / f"b/videos/{stem}.mp4").read_bytes()


def test_fps_parsing() -> None:
    assert parse_fps("29.97") == Fraction(30000, 1001) == parse_fps("30000/1001")
    assert parse_fps(25) == Fraction(25) and parse_fps("mixed") is None
    with pytest.raises(ValueError, match="fps"):
        parse_fps("fast")


def test_labels_agree_across_layouts(dataset: tuple[Path, dict]) -> None:
    root, meta = dataset
    clips = meta["clips"]
    assert [c["id"] for c in clips] == [f"{i:03d}" for i in range(1, N_CLIPS + 1)]
    assert any(c["label_gaps"] for c in clips)
    for c in clips:
        v, a = np.array(c["valence"]), np.array(c["arousal"])
        assert v.shape == a.shape == (N_FRAMES,)
        for x in (v, a):
            assert np.all(np.abs(x) <= 1.0)
            np.testing.assert_array_equal(x * 10, np.rint(x * 10))  # multiples of 0.1
        gap = np.zeros(N_FRAMES, bool)
        for s, e in c["label_gaps"]:
            gap[s:e] = True

        # AFEW-VA: integers in [-10, 10], every frame, keys = PNG stems.
        doc = json.loads((root / c["afew_dir"] / f"{c['id']}.json").read_text())
        assert doc["video_id"] == c["id"] and doc["actor"] == c["actor"]
        keys = sorted(doc["frames"])
        assert keys == [f"{i:05d}" for i in range(N_FRAMES)]
        assert sorted(p.stem for p in (root / c["afew_dir"]).glob("*.png")) == keys
        vi = np.array([doc["frames"][k]["valence"] for k in keys])
        ai = np.array([doc["frames"][k]["arousal"] for k in keys])
        assert vi.dtype.kind == "i" and np.all(np.abs(vi) <= 10)
        np.testing.assert_array_equal(vi / 10, v)
        np.testing.assert_array_equal(ai / 10, a)

        # Aff-Wild2: header, one line per frame, -5 in the gap, 1-based crops missing in the gap.
        lines = (root / c["affwild2_labels"]).read_text().splitlines()
        assert lines[0] == "valence,arousal" and len(lines) == N_FRAMES + 1
        rows = np.array([[float(x) for x in ln.split(",")] for ln in lines[1:]])
        assert np.all(rows[gap] == -5)
        np.testing.assert_array_equal(rows[~gap, 0], v[~gap])
        np.testing.assert_array_equal(rows[~gap, 1], a[~gap])
        crops = sorted(p.name for p in (root / c["crops_dir"]).glob("*.jpg"))
        assert crops == [f"{i + 1:05d}.jpg" for i in range(N_FRAMES) if not gap[i]]
        crop = cv2.imread(str(root / c["crops_dir"] / crops[0]))
        assert crop.shape == (112, 112, 3)

        # Manifest: per-video csv, empty where there is no label.
        with open(root / c["labels_csv"]) as f:
            table = list(csv.DictReader(f))
        assert [int(r["frame"]) for r in table] == list(range(N_FRAMES))
        for i, r in enumerate(table):
            if gap[i]:
                assert r["valence"] == r["arousal"] == ""
            else:
                assert (float(r["valence"]), float(r["arousal"])) == (v[i], a[i])

    with open(root / "manifest.csv") as f:
        manifest = list(csv.DictReader(f))
    assert list(manifest[0]) == ["video_id", "video_path", "labels_path", "actor"]
    assert [m["video_id"] for m in manifest] == [c["id"] for c in clips]
    for m, c in zip(manifest, clips):
        assert (root / m["video_path"]).is_file() and (root / m["labels_path"]).is_file()
        assert m["actor"] == c["actor"]
    # Several clips per actor, and Aff-Wild2's validation set holds whole actors.
    actors = [c["actor"] for c in clips]
    assert len(set(actors)) < len(actors)
    sets = {}
    for c in clips:
        if c["side"] is None:
            sets.setdefault(c["actor"], set()).add(c["affwild2_set"])
    assert all(len(s) == 1 for s in sets.values())
    assert {c["affwild2_set"] for c in clips} == {"Train_Set", "Validation_Set"}


def test_left_right_pair_shares_one_video(dataset: tuple[Path, dict]) -> None:
    root, meta = dataset
    pair = [c for c in meta["clips"] if c["side"] is not None]
    assert [c["side"] for c in pair] == ["left", "right"]
    left, right = pair
    assert left["video"] == right["video"] == "videos/005-006.mp4"
    assert left["affwild2_name"] == "005-006_left" and right["affwild2_name"] == "005-006_right"
    assert left["width"] == 2 * SIZE
    for c, lo, hi in ((left, 0, SIZE), (right, SIZE, 2 * SIZE)):
        doc = json.loads((root / c["afew_dir"] / f"{c['id']}.json").read_text())
        lm = np.array([doc["frames"][k]["landmarks"] for k in sorted(doc["frames"])])
        assert lm.shape == (N_FRAMES, 68, 2)
        assert lo <= lm[..., 0].min() and lm[..., 0].max() <= hi


def test_official_afew_layout(tmp_path: Path) -> None:
    meta = generate_dataset(tmp_path, SyntheticConfig(clips=2, frames=4, size=64, afew_layout="official"))
    assert [c["afew_dir"] for c in meta["clips"]] == ["AFEW-VA/01/001", "AFEW-VA/01/002"]
    assert (tmp_path / "AFEW-VA" / "01" / "002" / "002.json").is_file()
    assert (tmp_path / "AFEW-VA" / "01" / "002" / "00003.png").is_file()


def test_mp4_streams_rates_and_timestamps(dataset: tuple[Path, dict]) -> None:
    root, meta = dataset
    rates = set()
    for c in meta["clips"]:
        path = root / c["video"]
        with av.open(str(path)) as container:
            vs, as_ = container.streams.video[0], container.streams.audio[0]
            assert vs.codec_context.name == "h264" and vs.codec_context.pix_fmt == "yuv420p"
            assert as_.codec_context.name == "aac" and as_.codec_context.sample_rate == c["audio_rate"]
            assert vs.average_rate == Fraction(c["fps_fraction"])
        rates.add(c["fps_fraction"])
        video = VideoFile(path)
        assert len(video) == c["n_frames"]
        np.testing.assert_allclose(video.timestamps, np.arange(c["n_frames"]) / Fraction(c["fps_fraction"]).__float__(), atol=1e-6)
        assert video.get_batch([0]).shape == (1, c["height"], c["width"], 3)
    assert {"25/1", "30000/1001", "30/1"} <= rates


def _skin_fraction_inside(img: np.ndarray, lm: np.ndarray, margin: float = 0.25) -> float:
    lo, hi = lm.min(axis=0), lm.max(axis=0)
    centre, side = (lo + hi) / 2, float(max(hi - lo)) * (1 + 2 * margin)
    # Skin is the commonest colour just under the eyes (cheeks).
    cheek = img[int(lm[41, 1]) + 2 : int(lm[31, 1]), int(lm[36, 0]) : int(lm[39, 0])].reshape(-1, 3)
    colours, counts = np.unique(cheek, axis=0, return_counts=True)
    skin = colours[np.argmax(counts)].astype(int)
    ys, xs = np.nonzero(np.abs(img.astype(int) - skin).max(axis=2) <= 2)
    inside = (np.abs(xs - centre[0]) <= side / 2) & (np.abs(ys - centre[1]) <= side / 2)
    return float(inside.mean())


def test_landmarks_sit_on_the_drawn_face(dataset: tuple[Path, dict]) -> None:
    root, meta = dataset
    for c in meta["clips"][:4]:
        doc = json.loads((root / c["afew_dir"] / f"{c['id']}.json").read_text())
        for i in (0, N_FRAMES // 2, N_FRAMES - 1):
            lm = np.array(doc["frames"][f"{i:05d}"]["landmarks"])
            img = cv2.cvtColor(cv2.imread(str(root / c["afew_dir"] / f"{i:05d}.png")), cv2.COLOR_BGR2RGB)
            assert lm.shape == (68, 2)
            assert np.all(lm >= 0) and np.all(lm[:, 0] < c["width"]) and np.all(lm[:, 1] < c["height"])
            # A landmark box with a 25 % margin holds the face (its skin pixels).
            assert _skin_fraction_inside(img, lm) > 0.97
            # Landmarks 48-59 outline the mouth: red lips and a dark opening inside them.
            mask = np.zeros(img.shape[:2], np.uint8)
            cv2.fillPoly(mask, [np.round(lm[48:60]).astype(np.int32)], 1)
            r, g, b = img[mask.astype(bool)].astype(float).mean(axis=0)
            assert r > g + 30 and r > b + 10


def _lip_curvature(frame: np.ndarray, lm: np.ndarray) -> float:
    """Curvature of the red lip pixels around the mouth landmarks: > 0 for a smile."""
    x0, y0 = np.floor(lm[48:68].min(axis=0) - 3).astype(int)
    x1, y1 = np.ceil(lm[48:68].max(axis=0) + 3).astype(int)
    box = frame[max(y0, 0) : y1, max(x0, 0) : x1].astype(int)
    ys, xs = np.nonzero((box[..., 0] > box[..., 1] + 50) & (box[..., 0] > box[..., 2] + 20))
    xn = (xs - xs.mean()) / (xs.std() + 1e-6)
    return -float(np.polyfit(xn, ys, 2)[0])


def _loudness(audio: np.ndarray) -> float:
    sub = audio[: len(audio) // 320 * 320].reshape(-1, 320).astype(np.float64)
    return float(np.log(np.percentile(np.sqrt((sub**2).mean(axis=1)), 90) + 1e-6))


def test_decoded_cues_follow_labels(dataset: tuple[Path, dict]) -> None:
    """From the mp4s alone: lip curvature tracks valence, voice loudness tracks arousal."""
    root, meta = dataset
    curv, val, loud, aro = [], [], [], []
    for c in meta["clips"]:
        video = VideoFile(root / c["video"])
        frames = video.get_batch(range(len(video)))
        doc = json.loads((root / c["afew_dir"] / f"{c['id']}.json").read_text())
        for i in range(0, len(video), 2):
            curv.append(_lip_curvature(frames[i], np.array(doc["frames"][f"{i:05d}"]["landmarks"])))
            val.append(c["valence"][i])
        if c["side"] is None:  # the pair's audio mixes two voices
            audio = load_audio(root / c["video"])
            ts = video.timestamps
            for i in range(len(video)):
                s, e = audio_span(ts, [max(0, i - 4), min(len(ts) - 1, i + 4)], video.fps)
                loud.append(_loudness(audio[s:e]))
                aro.append(c["arousal"][i])
    assert np.corrcoef(curv, val)[0, 1] > 0.6
    assert np.corrcoef(loud, aro)[0, 1] > 0.4


def _pitch(x: np.ndarray, sr: int) -> float:
    ac = np.correlate(x, x, "full")[len(x) - 1 :]
    lo, hi = sr // 400, sr // 60
    return sr / (lo + int(np.argmax(ac[lo:hi])))


def test_voice_parameters_follow_labels() -> None:
    sr, fps, n = 16000, 25.0, 50
    actor = make_actor(0, 0)
    out = {}
    for name, v, a in (("calm", 0.0, -0.8), ("excited", 0.0, 0.8), ("sad", -0.8, 0.0), ("happy", 0.8, 0.0)):
        sig, env = synth_voice(np.random.default_rng(1), actor, np.full(n, v), np.full(n, a), fps, sr, 32000)
        loud = env > 0.5
        voiced = sig[np.argmax(env) - 400 : np.argmax(env) + 400]
        spec = np.abs(np.fft.rfft(sig[loud])) ** 2
        freqs = np.fft.rfftfreq(int(loud.sum()), 1 / sr)
        out[name] = {
            "rms": float(np.sqrt(np.mean(sig[loud] ** 2))),
            "pitch": _pitch(voiced, sr),
            "syllables": int(np.sum((env[1:] > 0.5) & (env[:-1] <= 0.5))),
            "centroid": float((spec * freqs).sum() / spec.sum()),
        }
    calm, excited = out["calm"], out["excited"]
    assert excited["rms"] > 4 * calm["rms"]  # 24 dB range over arousal -1..1
    assert excited["pitch"] > 1.5 * calm["pitch"]  # +-6 semitones
    assert excited["syllables"] > calm["syllables"]
    assert out["happy"]["centroid"] > out["sad"]["centroid"]  # brighter timbre with valence


def test_the_three_loaders_read_back_the_same_labels(dataset: tuple[Path, dict]) -> None:
    """`make_synthetic.py` output through the AFEW-VA, Aff-Wild2 and manifest loaders: every clip,
    same frames, same labels (Aff-Wild2's `-5` gap frames masked there and in the manifest)."""
    from avfusion.data.afew_va import load_afew_va
    from avfusion.data.affwild2 import load_affwild2
    from avfusion.data.manifest import load_manifest

    root, meta = dataset
    afew = {r.video_id: r for r in load_afew_va(root / "AFEW-VA")}
    aw2 = {r.video_id: r for s in ("train", "val") for r in load_affwild2(root, subset=s)}
    man = {r.video_id: r for r in load_manifest(root / "manifest.csv")}
    assert len(afew) == len(man) == len(aw2) == N_CLIPS
    for c in meta["clips"]:
        truth = np.stack([c["valence"], c["arousal"]], axis=1)
        gap = np.zeros(len(truth), bool)
        for s, e in c["label_gaps"]:
            gap[s:e] = True
        a, w, m = afew[c["id"]], aw2[c["affwild2_name"]], man[c["id"]]
        assert a.n_frames == w.n_frames == m.n_frames == c["n_frames"]
        np.testing.assert_allclose(a.labels, truth, atol=1e-6)  # AFEW-VA stores every frame's label
        assert a.label_mask.all()
        for r in (w, m):
            np.testing.assert_array_equal(r.label_mask, ~gap)
            np.testing.assert_allclose(r.labels[~gap], truth[~gap], atol=1e-6)
        assert w.fps == pytest.approx(c["fps"]) and m.fps == pytest.approx(c["fps"])


def test_hard_variant_covers_mouths_pauses_voices_and_drops_a_track(tmp_path: Path) -> None:
    """``synth --hard``: the same labels as the normal data; a hand or a microphone over the mouth in
    the occluded stretches; the voice silent in its pauses while the room noise goes on; clip
    index 3 written without an audio track."""
    argv = ["--clips", "4", "--frames", "60", "--size", "64", "--no-pair", "--no-gaps", "--clips-per-actor", "1"]
    normal = _cli().main(argv + ["--out", str(tmp_path / "normal")])
    hard = _cli().main(argv + ["--out", str(tmp_path / "hard"), "--hard"])
    assert "hard" not in normal["clips"][0]
    for a, b in zip(normal["clips"], hard["clips"]):
        assert a["valence"] == b["valence"] and a["arousal"] == b["arousal"]  # labels as without --hard
    by_id = {c["id"]: c for c in hard["clips"]}
    assert not by_id["004"]["hard"]["has_audio"] and by_id["004"]["hard"]["speaking"] == []
    with av.open(str(tmp_path / "hard" / by_id["004"]["video"])) as c:
        assert not c.streams.audio
    occluded = [c for c in hard["clips"] if c["hard"]["occluded"]]
    assert occluded and all(c["hard"]["occluded"] == [] for c in hard["clips"] if c not in occluded)
    for clip in occluded:
        (start, end), frames = clip["hard"]["occluded"][0], VideoFile(tmp_path / "hard" / clip["video"])
        lms = json.loads((tmp_path / "hard" / clip["afew_dir"] / f"{clip['id']}.json").read_text())["frames"]
        for k, covered in ((start, True), (end if end < 60 else start - 1, False)):
            if k < 0:
                continue
            img = frames.get_batch([k])[0]  # RGB
            x, y = np.rint(np.mean(lms[f"{k:05d}"]["landmarks"][48:68], axis=0)).astype(int)
            patch = img[y - 2 : y + 3, x - 3 : x + 4].astype(int)
            red = int((patch[..., 0] - (patch[..., 1] + patch[..., 2]) // 2).max())
            assert (red < 70) == covered, (clip["id"], k, covered, red)  # the lips' red shows unless covered
    talking = [c for c in hard["clips"] if c["hard"]["has_audio"]]
    fractions = []
    for clip in talking:
        audio = load_audio(tmp_path / "hard" / clip["video"], 16000)
        per_frame = np.array([np.sqrt(np.mean(audio[int(k / 25 * 16000) : int((k + 1) / 25 * 16000)] ** 2) + 1e-12)
                              for k in range(60)])
        said = np.zeros(60, bool)
        for a, b in clip["hard"]["speaking"]:
            said[a:b] = True
        fractions.append(1 - said.mean())
        room = 10 ** (clip["hard"]["noise_db"] / 20)  # the noise's RMS
        inner = ~said & (np.convolve((~said).astype(float), np.ones(5), "same") == 5)  # pause frames away from its edges
        if inner.any():  # in a pause the room noise alone, the voice silent
            np.testing.assert_allclose(per_frame[inner], room, rtol=0.35)
        if said.any():
            assert per_frame[said].max() > 1.5 * room
    assert 0.15 < np.mean(fractions) < 0.6  # about a third of the time without speech
