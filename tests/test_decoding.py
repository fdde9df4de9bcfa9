"""Frame and audio decoding on small videos whose content encodes the frame index.

Each test video frame shows its index as 8 black/white blocks (one bit each, robust to H.264), and
the audio track has a click at every frame boundary ``k / fps`` (plus one at the end of the last
frame), so decoded frames, timestamps and the audio span of any frame range can be checked exactly.
"""
from __future__ import annotations

import math
import os
import multiprocessing
import pickle
import time
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Optional

import av
import cv2
import numpy as np
import pytest
import soundfile as sf

from avfusion.data.audio import (
    AudioDecodeError,
    NoAudioStreamError,
    audio_span,
    frame_sample_offsets,
    has_audio,
    load_audio,
    probe_audio,
    slice_audio,
)
from avfusion.data.video import (
    FrameFolder,
    NoVideoStreamError,
    VideoDecodeError,
    VideoFile,
    list_frame_files,
    open_frames,
)

W, H = 64, 48
SR = 16000


def index_frame(i: int, w: int = W, h: int = H) -> np.ndarray:
    """RGB frame whose top row of 8 blocks spells ``i`` in binary; the rest is grey ``i``."""
    img = np.full((h, w, 3), (i * 7) % 200 + 20, np.uint8)
    bw = w // 8
    for b in range(8):
        img[: h // 2, b * bw : (b + 1) * bw] = 255 if (i >> b) & 1 else 0
    return img


def read_index(frame: np.ndarray) -> int:
    h, w = frame.shape[:2]
    bw = w // 8
    top = frame[: h // 2].astype(np.float64).mean(axis=2)
    bits = [top[2:-2, b * bw + 2 : (b + 1) * bw - 2].mean() > 127 for b in range(8)]
    return sum(1 << b for b, on in enumerate(bits) if on)


def click_positions(n_frames: int, fps: Fraction, rate: int) -> list[int]:
    """Sample index (at ``rate``) of the click at each frame boundary k / fps, k = 0..n_frames."""
    return [int(math.floor(k / fps * rate + Fraction(1, 2))) for k in range(n_frames + 1)]


def test_frames_matched_by_number_one_based_and_refused_names(tmp_path: Path) -> None:
    """FFmpeg's image2 numbering starts at 1: frame 0 is 000001.png; a skipped number is a masked
    frame; a name without a number, or two images with one number, are refused by folder."""
    from avfusion.data.video import numbered_frame_files

    for i in (1, 2, 4):
        cv2.imwrite(str(tmp_path / f"{i:06d}.png"), cv2.cvtColor(index_frame(i), cv2.COLOR_RGB2BGR))
    with pytest.warns(RuntimeWarning, match=r"numbered 1\.\.4 but 1 number\(s\) are missing \(3\)"):
        files = numbered_frame_files(tmp_path)
    assert [f.name if f else None for f in files] == ["000001.png", "000002.png", None, "000004.png"]
    cv2.imwrite(str(tmp_path / "poster.png"), index_frame(0))
    with pytest.raises(ValueError, match="poster.png has no frame number"):
        numbered_frame_files(tmp_path)
    (tmp_path / "poster.png").unlink()
    cv2.imwrite(str(tmp_path / "frame_2.png"), index_frame(2))
    with pytest.raises(ValueError, match="both carry frame number 2"):
        numbered_frame_files(tmp_path)


@pytest.mark.parametrize("degrees", [90, -90, 180])
def test_display_rotation_is_applied_on_every_path(tmp_path: Path, degrees: int) -> None:
    """A clip stored turned with a display matrix (a phone's portrait video): random access,
    the sequential pass, the masked reader and the decoder's resize all give the upright picture,
    in order, as a player shows it."""
    turns = degrees // 90
    upright = [index_frame(i, w=48, h=64) for i in range(12)]  # portrait, index in the top row
    path = tmp_path / f"rot{degrees}.mp4"
    write_video(path, frames=[np.ascontiguousarray(np.rot90(f, -turns)) for f in upright], audio_rate=None,
                display_rotation=degrees)
    video = VideoFile(path)
    assert len(video) == 12 and video.turns == turns % 4
    batch = video.get_batch([7, 0, 11])
    assert batch.shape == (3, 64, 48, 3) and [read_index(f) for f in batch] == [7, 0, 11]
    seq = np.concatenate([f for _, f, _ in video.iter_batches(np.arange(12), 5)])
    assert [read_index(f) for f in seq] == list(range(12))
    frames, valid = video.get_batch_masked([3])
    assert valid.all() and read_index(frames[0]) == 3
    small = VideoFile(path, width=24, height=32)
    assert small.get_batch([0]).shape == (1, 32, 24, 3)
    assert next(small.iter_batches([0, 1]))[1].shape == (2, 32, 24, 3)


def test_fifo_folder_and_link_loop_named_for_what_they_are(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.mp4")
    (tmp_path / "dir.mp4").mkdir()
    (tmp_path / "loop.mp4").symlink_to(tmp_path / "loop.mp4")
    (tmp_path / "dangling.mp4").symlink_to(tmp_path / "gone.mp4")
    for name, error, words in (("pipe.mp4", VideoDecodeError, "is a FIFO"), ("dir.mp4", IsADirectoryError, "is a folder"),
                               ("loop.mp4", VideoDecodeError, "symbolic link loop"),
                               ("dangling.mp4", FileNotFoundError, "broken symbolic link")):
        with pytest.raises(error, match=words):
            len(VideoFile(tmp_path / name))


def write_video(
    path: Path,
    n: int = 30,
    fps: Fraction = Fraction(25),
    audio_rate: Optional[int] = SR,
    video_pts0: int = 0,
    audio_pts0: int = 0,
    pts: Optional[list[int]] = None,
    time_base: Optional[Fraction] = None,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    frames: Optional[list[np.ndarray]] = None,
    container_options: Optional[dict] = None,
    display_rotation: Optional[int] = None,
) -> None:
    """Index-coded frames (+ clicks at frame boundaries when ``audio_rate``) into ``path``;
    ``display_rotation``: the display matrix a player applies (degrees counter-clockwise)."""
    with av.open(str(path), "w", options=container_options or {}) as c:
        vs = c.add_stream(codec, rate=fps)
        frames = frames if frames is not None else [index_frame(i) for i in range(n)]
        vs.height, vs.width = frames[0].shape[:2]
        vs.pix_fmt = pix_fmt
        if display_rotation is not None:
            vs.set_display_rotation(display_rotation)
        vs.codec_context.gop_size = 8
        if time_base is not None:
            vs.codec_context.time_base = time_base
        if audio_rate:
            a = c.add_stream("aac", rate=audio_rate)
            a.layout = "mono"
        for i, img in enumerate(frames):
            fmt = "gray" if img.ndim == 2 else "rgb24"
            frame = av.VideoFrame.from_ndarray(img, format=fmt)
            frame.pts = (pts[i] if pts is not None else i) + video_pts0
            if time_base is not None:
                frame.time_base = time_base
            for p in vs.encode(frame):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        if audio_rate:
            clicks = click_positions(len(frames), fps, audio_rate)
            sig = np.zeros(clicks[-1] + audio_rate // 10, np.float32)
            sig[clicks] = 0.9
            for s in range(0, sig.shape[0], 1024):
                af = av.AudioFrame.from_ndarray(sig[None, s : s + 1024].copy(), format="flt", layout="mono")
                af.sample_rate = audio_rate
                af.pts = s + audio_pts0
                for p in a.encode(af):
                    c.mux(p)
            for p in a.encode():
                c.mux(p)


def find_clicks(x: np.ndarray, thr: float = 0.25) -> np.ndarray:
    """Local maxima above ``thr`` (one per click)."""
    y = np.pad(x, 1)
    return np.flatnonzero((y[1:-1] > thr) & (y[1:-1] >= y[:-2]) & (y[1:-1] > y[2:]))


def nearest(peaks: np.ndarray, target: int) -> int:
    return int(peaks[np.argmin(np.abs(peaks - target))])


FPS_CASES = [Fraction(25), Fraction(30000, 1001), Fraction(30)]


@pytest.mark.parametrize("fps", FPS_CASES, ids=["25", "29.97", "30"])
def test_frames_timestamps_and_audio_span(tmp_path: Path, fps: Fraction) -> None:
    path = tmp_path / "clip.mp4"
    n = 30
    write_video(path, n=n, fps=fps)
    video = VideoFile(path)
    assert len(video) == n
    assert video.fps == pytest.approx(float(fps), rel=1e-6)
    np.testing.assert_allclose(video.timestamps, np.arange(n) / float(fps), atol=1e-6)
    assert not video.is_variable_frame_rate

    order = [17, 3, 3, 29, 0, 8, 9, 16]  # out of order, repeats, across keyframes (gop 8)
    frames = video.get_batch(order)
    assert frames.shape == (len(order), H, W, 3) and frames.dtype == np.uint8
    assert [read_index(f) for f in frames] == order

    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    peaks = find_clicks(audio)
    expected = click_positions(n, fps, SR)
    for first, last in [(0, 0), (3, 7), (10, 29), (29, 29), (0, 29)]:
        start, end = audio_span(video.timestamps, range(first, last + 1), video.fps)
        # Within one audio sample of the clicks at the range's frame boundaries.
        assert abs(nearest(peaks, expected[first]) - start) <= 1
        assert abs(nearest(peaks, expected[last + 1]) - end) <= 1
        assert start == expected[first] and end == expected[last + 1]
    offsets = frame_sample_offsets(video.timestamps, [5, -1, 12])
    assert offsets.tolist() == [expected[5], -1, expected[12]]


@pytest.mark.parametrize("rate", [44100, 48000])
def test_audio_resampled_to_16k_stays_aligned(tmp_path: Path, rate: int) -> None:
    fps = Fraction(30000, 1001)
    path = tmp_path / "clip.mp4"
    write_video(path, n=20, fps=fps, audio_rate=rate)
    info = probe_audio(path)
    assert info is not None and info.sample_rate == rate and info.codec == "aac"
    audio = load_audio(path)
    peaks = find_clicks(audio, thr=0.1)
    for k, pos in enumerate(click_positions(20, fps, SR)):
        assert abs(nearest(peaks, pos) - pos) <= 1, k


def test_audio_window_equals_full_decode(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    fps = Fraction(25)
    write_video(path, n=60, fps=fps, audio_rate=48000)
    full = load_audio(path)
    start, end = 1.0, 1.6
    part = load_audio(path, start=start, end=end)
    s0, s1 = int(start * SR), int(end * SR)
    assert part.shape == (s1 - s0,)
    # Seeking restarts the AAC decoder a margin earlier: the window matches the full decode.
    np.testing.assert_allclose(part, full[s0:s1], atol=2e-3)
    assert set(find_clicks(part).tolist()) == {p - s0 for p in find_clicks(full) if s0 <= p < s1}


def test_start_time_offsets(tmp_path: Path) -> None:
    fps = Fraction(25)
    # Video starts 0.2 s after the audio: audio before the first frame is dropped.
    late_video = tmp_path / "late_video.mp4"
    write_video(late_video, n=20, fps=fps, video_pts0=5)
    video = VideoFile(late_video)
    assert video.timestamps[0] == 0.0
    assert probe_audio(late_video).offset == pytest.approx(-0.2, abs=1e-3)
    # Clicks were written at (audio time) k / fps = video time k / fps - 0.2: still on frame starts.
    peaks = find_clicks(load_audio(late_video))
    for k in range(1, 15):
        s, _ = audio_span(video.timestamps, [k], video.fps)
        assert abs(nearest(peaks, s) - s) <= 1

    # Audio starts 0.3 s after the video: zeros first, then clicks shifted by 0.3 s. (AAC's first
    # frame begins 1024 samples early, with pre-echo of the first click: check up to 0.2 s.)
    late_audio = tmp_path / "late_audio.mp4"
    write_video(late_audio, n=20, fps=fps, audio_pts0=int(0.3 * SR))
    audio = load_audio(late_audio)
    assert np.abs(audio[: int(0.2 * SR)]).max() == 0.0
    peaks = find_clicks(audio)
    for k in range(1, 20):
        assert abs(nearest(peaks, int(0.3 * SR) + k * SR // 25) - (int(0.3 * SR) + k * SR // 25)) <= 1


def test_wav_and_flac_through_soundfile(tmp_path: Path) -> None:
    rate = 22050
    x = np.zeros(rate, np.float32)
    x[[2205, 11025, 20000]] = 0.8
    stereo = np.stack([x, x], axis=1)
    for suffix in (".wav", ".flac"):
        path = tmp_path / f"a{suffix}"
        sf.write(str(path), stereo, rate)
        y = load_audio(path)
        assert y.shape == (SR,)
        assert [nearest(find_clicks(y, 0.1), t) for t in (1600, 8000, 14512)] == [1600, 8000, 14512]
        assert has_audio(path)
        part = load_audio(path, start=0.5, end=0.75)
        assert part.shape == (4000,)
        np.testing.assert_allclose(part, y[8000:12000], atol=1e-3)


def test_slice_audio_pads_with_zeros() -> None:
    a = np.arange(1, 6, dtype=np.float32)
    assert slice_audio(a, -2, 3).tolist() == [0, 0, 1, 2, 3]
    assert slice_audio(a, 3, 8).tolist() == [4, 5, 0, 0, 0]


def test_audio_span_uses_timestamps_not_fps() -> None:
    ts = np.array([0.0, 0.04, 0.1, 0.2])  # variable frame rate
    assert audio_span(ts, [1, 2], fps=25.0) == (640, 3200)
    assert audio_span(ts, [3], fps=25.0) == (3200, 3840)
    assert audio_span(ts, [3], last_frame_end=0.25) == (3200, 4000)
    with pytest.raises(ValueError, match="last frame"):
        audio_span(ts, [3])
    with pytest.raises(IndexError, match="outside"):
        audio_span(ts, [4], fps=25.0)


def test_variable_frame_rate_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "vfr.mp4"
    pts = [0, 40, 80, 100, 150, 160, 240, 280, 300, 400]  # milliseconds
    write_video(path, n=10, fps=Fraction(25), pts=pts, time_base=Fraction(1, 1000), audio_rate=None)
    video = VideoFile(path)
    np.testing.assert_allclose(video.timestamps, np.array(pts) / 1000, atol=1e-6)
    assert video.is_variable_frame_rate
    assert [read_index(f) for f in video.get_batch(range(10))] == list(range(10))


def test_resize_in_decoder_and_pickling(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    write_video(path, n=12, audio_rate=None)
    video = VideoFile(path, width=32, height=24)
    assert video.get_batch([0, 5]).shape == (2, 24, 32, 3)
    clone = pickle.loads(pickle.dumps(video))  # an opened reader is not pickled
    assert clone._reader is None
    assert clone.get_batch([3]).shape == (1, 24, 32, 3)
    with pytest.raises(ValueError, match="both width and height"):
        VideoFile(path, width=32)


def _read_in_child(video: VideoFile) -> list[int]:
    return [read_index(f) for f in video.get_batch([7, 2])]


def test_reader_reopened_after_fork(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    write_video(path, n=12, audio_rate=None)
    video = VideoFile(path)
    video.get_batch([0])  # opened in the parent
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        assert pool.apply(_read_in_child, (video,)) == [7, 2]
    assert video._pid is not None


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------
def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        len(VideoFile(tmp_path / "nope.mp4"))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoDecodeError, match=r"empty\.mp4: empty file \(0 bytes\)"):
        VideoFile(empty).get_batch([0])
    with pytest.raises(AudioDecodeError, match=r"empty\.mp4: empty file"):
        load_audio(empty)


def test_truncated_and_garbage_files(tmp_path: Path) -> None:
    good = tmp_path / "good.mp4"
    write_video(good, n=40)
    data = good.read_bytes()
    cut = tmp_path / "cut.mp4"  # moov atom at the end: the cut file has no index at all
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoDecodeError, match=r"cut\.mp4: not a readable video file \(corrupt or truncated"):
        len(VideoFile(cut))
    with pytest.raises(AudioDecodeError, match=r"cut\.mp4: not a readable media file"):
        load_audio(cut)

    fast = tmp_path / "fast.mp4"  # moov first: the header promises frames the file lacks
    write_video(fast, n=40, audio_rate=None, container_options={"movflags": "faststart"})
    data = fast.read_bytes()
    cut_fast = tmp_path / "cut_fast.mp4"
    cut_fast.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(VideoDecodeError, match=r"cut_fast\.mp4: the video stream is truncated or corrupt"):
        VideoFile(cut_fast).timestamps

    text = tmp_path / "text.mp4"
    text.write_text("not a video " * 50)
    with pytest.raises(VideoDecodeError, match=r"text\.mp4: not a readable video file"):
        len(VideoFile(text))


def test_corrupt_frames_raise_or_are_masked(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    rng = np.random.default_rng(0)
    # Noise frames make large packets, so the damage below lands inside frame data.
    frames = [np.ascontiguousarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)) for _ in range(40)]
    write_video(path, frames=frames, audio_rate=None)
    data = bytearray(path.read_bytes())
    third = len(data) // 3
    data[third : third + 3000] = b"\xff" * 3000
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    video = VideoFile(bad)
    assert len(video) == 40
    with pytest.raises(VideoDecodeError, match=r"bad\.mp4: cannot decode frames 0\.\.39"):
        video.get_batch(range(40))
    with pytest.warns(RuntimeWarning, match=r"bad\.mp4: \d+ frame\(s\) could not be decoded and are masked"):
        out, valid = video.get_batch_masked(range(40))
    assert out.shape == (40, H, W, 3)
    assert valid[:5].all() and not valid.all()
    assert (out[~valid] == 0).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per file
        _, valid2 = video.get_batch_masked(range(40))
    assert (valid2 == valid).all()
    # The undamaged start decodes as it does from the intact file.
    intact = VideoFile(path).get_batch(range(5))
    assert np.abs(out[:5].astype(int) - intact).max() <= 2


def test_no_video_stream(tmp_path: Path) -> None:
    path = tmp_path / "voice.m4a"
    with av.open(str(path), "w") as c:
        a = c.add_stream("aac", rate=SR)
        a.layout = "mono"
        af = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="flt", layout="mono")
        af.sample_rate, af.pts = SR, 0
        for p in list(a.encode(af)) + list(a.encode()):
            c.mux(p)
    with pytest.raises(NoVideoStreamError, match=r"voice\.m4a: no video stream in this file \(streams found: audio\)"):
        len(VideoFile(path))
    assert load_audio(path).shape[0] >= 1024  # an audio-only file is still good audio


def test_no_audio_stream(tmp_path: Path) -> None:
    path = tmp_path / "silent.mp4"
    write_video(path, n=5, audio_rate=None)
    assert not has_audio(path) and probe_audio(path) is None
    with pytest.raises(NoAudioStreamError, match=r"silent\.mp4: no audio stream in this file \(streams found: video\)"):
        load_audio(path)


def test_index_out_of_range(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    write_video(path, n=5, audio_rate=None)
    with pytest.raises(IndexError, match=r"clip\.mp4: frame index 5 out of range \(the source has 5 frames\)"):
        VideoFile(path).get_batch([0, 5])


def test_grayscale_and_odd_sized_video(tmp_path: Path) -> None:
    gray = tmp_path / "gray.mkv"
    write_video(gray, frames=[np.full((H, W), 10 * i, np.uint8) for i in range(6)], codec="ffv1", pix_fmt="gray", audio_rate=None)
    out = VideoFile(gray).get_batch([0, 5])
    assert out.shape == (2, H, W, 3) and out.dtype == np.uint8
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert abs(int(out[1, 0, 0, 0]) - 50) <= 1

    odd = tmp_path / "odd.mkv"
    write_video(odd, frames=[index_frame(i, 63, 47) for i in range(6)], codec="ffv1", pix_fmt="bgr0", audio_rate=None)
    out = VideoFile(odd).get_batch([4, 1])
    assert out.shape == (2, 47, 63, 3)
    assert [read_index(f) for f in out] == [4, 1]


# ------------------------------------------------------------------------------------------------
# Frame folders
# ------------------------------------------------------------------------------------------------
def test_frame_folder_sorting_and_timestamps(tmp_path: Path) -> None:
    for i in (0, 1, 2, 10, 11):
        cv2.imwrite(str(tmp_path / f"{i}.png"), cv2.cvtColor(index_frame(i), cv2.COLOR_RGB2BGR))
    (tmp_path / "notes.txt").write_text("ignored")
    assert [p.stem for p in list_frame_files(tmp_path)] == ["0", "1", "2", "10", "11"]
    # Frames are placed by their number: 3..9 are missing (masked, one warning), 10 and 11 keep
    # their own times instead of taking those of frames 3 and 4.
    with pytest.warns(RuntimeWarning, match=r"numbered 0\.\.11 but 7 number\(s\) are missing \(3, 4, 5, 6, 7, \.\.\.\)"):
        folder = open_frames(tmp_path, fps=30000 / 1001)
    assert isinstance(folder, FrameFolder) and len(folder) == 12
    np.testing.assert_allclose(folder.timestamps, np.arange(12) * 1001 / 30000)
    assert [read_index(f) for f in folder.get_batch([11, 0, 10])] == [11, 0, 10]
    out, valid = folder.get_batch_masked(list(range(12)))
    assert valid.tolist() == [True] * 3 + [False] * 7 + [True] * 2
    with pytest.raises(ValueError, match="needs fps"), pytest.warns(RuntimeWarning):
        FrameFolder(tmp_path)
    with pytest.warns(RuntimeWarning):
        resized = FrameFolder(tmp_path, fps=25, width=32, height=24)
    assert resized.get_batch([1]).shape == (1, 24, 32, 3)


def test_frame_folder_gray_alpha_and_odd_sizes(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "00000.png"), np.full((H, W), 77, np.uint8))  # grayscale
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 2], rgba[..., 3] = 200, 255
    cv2.imwrite(str(tmp_path / "00001.png"), rgba)  # BGRA, red
    cv2.imwrite(str(tmp_path / "00002.png"), np.zeros((47, 63, 3), np.uint8))  # odd, different size
    folder = FrameFolder(tmp_path, fps=25)
    with pytest.warns(RuntimeWarning, match=r"differ in size \(00002\.png is 63x47"):
        out = folder.get_batch([0, 1, 2])
    assert out.shape == (3, H, W, 3) and out.dtype == np.uint8
    assert (out[0] == 77).all()
    assert tuple(out[1, 0, 0]) == (200, 0, 0)  # RGB order


def test_frame_folder_unreadable_and_missing_frames(tmp_path: Path) -> None:
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"{i:05d}.jpg"), cv2.cvtColor(index_frame(i), cv2.COLOR_RGB2BGR))
    (tmp_path / "00002.jpg").write_bytes(b"\x00garbage")
    folder = FrameFolder(tmp_path, fps=25)
    with pytest.raises(VideoDecodeError, match=r"00002\.jpg: unreadable image .*frame 2"):
        folder.get_batch([1, 2])
    with pytest.warns(RuntimeWarning, match=r"00002\.jpg: unreadable image"):
        out, valid = folder.get_batch_masked([0, 1, 2, 3])
    assert valid.tolist() == [True, True, False, True] and (out[2] == 0).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        folder.get_batch_masked([2])

    # An explicit list with None for frames without an image (Aff-Wild2 crops with gaps).
    files = [tmp_path / "00000.jpg", None, tmp_path / "00003.jpg"]
    listed = FrameFolder(files, fps=25)
    out, valid = listed.get_batch_masked([0, 1, 2])
    assert valid.tolist() == [True, False, True]
    assert [read_index(out[0]), read_index(out[2])] == [0, 3]
    with pytest.raises(VideoDecodeError, match="frame 1 has no image file"):
        listed.get_batch([1])


def test_damaged_audio_packets_warn_and_keep_timing(tmp_path: Path) -> None:
    path = tmp_path / "voice.m4a"
    with av.open(str(path), "w", options={"movflags": "faststart"}) as c:
        a = c.add_stream("aac", rate=SR)
        a.layout = "mono"
        sig = (0.3 * np.sin(2 * np.pi * 440 * np.arange(2 * SR) / SR)).astype(np.float32)
        for s in range(0, sig.shape[0], 1024):
            af = av.AudioFrame.from_ndarray(sig[None, s : s + 1024].copy(), format="flt", layout="mono")
            af.sample_rate, af.pts = SR, s
            for p in a.encode(af):
                c.mux(p)
        for p in a.encode():
            c.mux(p)
    good = load_audio(path)
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 300] = np.random.default_rng(0).integers(0, 255, 300, dtype=np.uint8).tobytes()
    bad = tmp_path / "bad.m4a"
    bad.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match=r"bad\.m4a: \d+ damaged audio packet\(s\) skipped"):
        damaged = load_audio(bad)
    assert damaged.shape == good.shape  # later packets stay at their timestamps
    np.testing.assert_allclose(damaged[-4000:], good[-4000:], atol=1e-4)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_reader_used_after_fork_reopens_in_the_child(tmp_path):
    """A VideoFile opened in the parent and used in a forked child (a DataLoader worker) must reopen
    there: decord's inherited reader would hang or abort the child."""
    path = tmp_path / "fork.mp4"
    write_video(path, n=6)
    v = VideoFile(path)
    parent = v.get_batch([0, 1])
    pid = os.fork()
    if pid == 0:  # child: exit code 0 only if the frames decode and match the parent's view
        code = 2  # whatever happens here, the child leaves through os._exit: it must never return
        try:      # into the test runner it was forked from (under pytest-xdist it shares its pipes)
            code = 0 if np.array_equal(v.get_batch([0, 1]), parent) else 1
        except BaseException:
            code = 3
        finally:
            os._exit(code)
    deadline = time.time() + 30
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    pytest.fail("the forked child hung on an inherited decord reader")


MEDIA = os.environ.get("AVFUSION_TEST_MEDIA")


def _check_sequential(path, every: int = 1) -> int:
    """iter_batches (one PyAV pass, what predict uses) gives decord's frames, index for index."""
    import numpy as np

    from avfusion.data.video import VideoFile

    v = VideoFile(path)
    n = len(v)
    ref = v.get_batch(list(range(n)))
    for wanted in (np.arange(n), np.arange(3, n, 5)):
        got = list(v.iter_batches(wanted, 8))
        idx = np.concatenate([i for i, _, _ in got])
        frames = np.concatenate([f for _, f, _ in got])
        ok = np.concatenate([o for _, _, o in got])
        np.testing.assert_array_equal(idx, wanted)
        np.testing.assert_array_equal(frames[ok], ref[wanted][ok])
    return int((~ok).sum())


def test_sequential_pass_equals_random_access(tmp_path):
    from avfusion.synthetic.talking import write_talking_video

    write_talking_video(tmp_path / "t.mp4", seconds=1.0, width=96, height=64)
    assert _check_sequential(tmp_path / "t.mp4") == 0


@pytest.mark.skipif(not MEDIA, reason="AVFUSION_TEST_MEDIA (real face videos) not set")
@pytest.mark.parametrize("name", ["single_face.mp4", "no_face.mp4", "face_noface.mov"])
def test_sequential_pass_on_real_footage(name):
    """Real phone and camera files (one with an edit list hiding encoder pre-roll, where decord's
    first time is -0.125 s): every frame PyAV shows is the same picture decord gives."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # frames outside the edit list are masked
        assert _check_sequential(os.path.join(MEDIA, name)) <= 3
