"""Face detectors, the crop policy and the YuNet model file (download + sha256, resolution)."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from avfusion.data.faces import (
    Detection,
    FaceCropper,
    FaceDetector,
    YuNetDetector,
    create_detector,
    resolve_yunet_model,
)

# YuNet 2026may on skimage.data.astronaut() (512x512): /work/shared/models/README.md.
ASTRONAUT_FACE = (178.0, 63.0, 90.0, 113.0)
FACE_RGB = (250, 30, 30)


def _yunet_path() -> str:
    path = os.environ.get("AVFUSION_TEST_YUNET")
    if not path or not Path(path).is_file():
        pytest.skip("set AVFUSION_TEST_YUNET to the YuNet onnx file to run this test")
    return path


def _iou(a: tuple, b: tuple) -> float:
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax1, bx1) - max(a[0], b[0]))
    ih = max(0.0, min(ay1, by1) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _face_frame(h: int, w: int, cx: float, cy: float, ax: int, ay: int, bg: int = 128) -> np.ndarray:
    """A grey frame with a face-like filled ellipse (semi-axes ax, ay) centred at (cx, cy)."""
    frame = np.full((h, w, 3), bg, dtype=np.uint8)
    cv2.ellipse(frame, (int(round(cx)), int(round(cy))), (ax, ay), 0, 0, 360, FACE_RGB, -1)
    return frame


def _ellipse_landmarks(cx: float, cy: float, ax: float, ay: float, n: int = 68) -> np.ndarray:
    """n points on the ellipse; n divisible by 4 puts points on both axes, so the bbox is exact."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + ax * np.cos(t), cy + ay * np.sin(t)], axis=1)


def _face_stats(crop: np.ndarray) -> tuple[float, float, float, float]:
    """Centroid (x, y) and extent (width, height) of the ellipse's pixels in a crop."""
    m = (crop[..., 0] > 200) & (crop[..., 1] < 90) & (crop[..., 2] < 90)
    ys, xs = np.nonzero(m)
    assert len(xs) > 0, "no face pixels in the crop"
    return xs.mean(), ys.mean(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1


# --- yunet ----------------------------------------------------------------------------------------


def test_yunet_finds_astronaut_face_and_crop_contains_it() -> None:
    skimage_data = pytest.importorskip("skimage.data")
    detector = create_detector("yunet", model_path=_yunet_path())
    image = skimage_data.astronaut()

    dets = detector.detect(image)
    assert len(dets) >= 1
    best = max(dets, key=lambda d: d.score)
    assert _iou(best.box, ASTRONAUT_FACE) > 0.7
    assert best.score > 0.8
    assert best.landmarks5 is not None and best.landmarks5.shape == (5, 2)
    # The person's right eye appears on the image's left.
    assert best.landmarks5[0, 0] < best.landmarks5[1, 0]

    size = 128
    cropper = FaceCropper(detector, margin=0.25, output_size=size, smoothing=1)
    boxes, _ = cropper.boxes(image[None])
    crops, face_mask = cropper(image[None])
    assert crops.shape == (1, size, size, 3) and crops.dtype == np.uint8
    assert face_mask.tolist() == [True]
    # The known face region, mapped into crop pixels, lies inside the crop.
    cx, cy, side = boxes[0]
    scale = size / side
    x0 = (ASTRONAUT_FACE[0] - (cx - side / 2)) * scale
    y0 = (ASTRONAUT_FACE[1] - (cy - side / 2)) * scale
    x1, y1 = x0 + ASTRONAUT_FACE[2] * scale, y0 + ASTRONAUT_FACE[3] * scale
    assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
    # And the detector finds the face again in the crop, near its centre.
    again = detector.detect(crops[0])
    assert len(again) >= 1
    fx, fy = max(again, key=lambda d: d.score).center
    assert abs(fx - size / 2) < 0.15 * size and abs(fy - size / 2) < 0.15 * size


def test_yunet_large_frames_are_shrunk_and_boxes_scaled_back() -> None:
    skimage_data = pytest.importorskip("skimage.data")
    detector = create_detector("yunet", model_path=_yunet_path(), max_side=512)
    big = cv2.resize(skimage_data.astronaut(), (1024, 1024), interpolation=cv2.INTER_LINEAR)
    best = max(detector.detect(big), key=lambda d: d.score)
    assert _iou(best.box, tuple(2 * v for v in ASTRONAUT_FACE)) > 0.7
    x, y, w, h = best.box
    pts = best.landmarks5
    assert np.all((pts[:, 0] > x) & (pts[:, 0] < x + w) & (pts[:, 1] > y) & (pts[:, 1] < y + h))


def test_yunet_frame_without_face_is_masked_and_detector_pickles() -> None:
    skimage_data = pytest.importorskip("skimage.data")
    detector = create_detector("yunet", model_path=_yunet_path())
    image = skimage_data.astronaut()
    blank = np.full_like(image, 90)
    clip = np.stack([image, blank, image])

    # DataLoader workers receive the detector pickled: the OpenCV object must not travel.
    detector.detect(image)
    detector = pickle.loads(pickle.dumps(detector))
    crops, face_mask = FaceCropper(detector, output_size=64, smoothing=3)(clip)
    assert crops.shape == (3, 64, 64, 3)
    assert face_mask.tolist() == [True, False, True]
    assert (crops[1] == 0).all()
    assert crops[0].any()


def test_missing_yunet_model_error_says_where_to_put_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("AVFUSION_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)  # ./pretrained/ is searched too: here it does not exist
    with pytest.raises(FileNotFoundError) as err:
        create_detector("yunet")
    msg = str(err.value)
    assert str(tmp_path / "home" / "face_detection_yunet.onnx") in msg
    assert "avfusion download yunet" in msg

    missing = tmp_path / "nowhere.onnx"
    with pytest.raises(FileNotFoundError, match="nowhere.onnx"):
        create_detector("yunet", model_path=missing)


def test_yunet_model_resolution_order(tmp_path: Path, monkeypatch) -> None:
    home, repo = tmp_path / "home", tmp_path / "pretrained"
    repo.mkdir()
    (repo / "face_detection_yunet.onnx").write_bytes(b"repo")
    monkeypatch.setenv("AVFUSION_HOME", str(home))
    monkeypatch.chdir(tmp_path)  # a clone keeps weight files in ./pretrained/
    assert resolve_yunet_model().resolve() == (repo / "face_detection_yunet.onnx").resolve()
    home.mkdir()
    (home / "face_detection_yunet.onnx").write_bytes(b"home")
    assert resolve_yunet_model() == home / "face_detection_yunet.onnx"
    explicit = tmp_path / "mine.onnx"
    explicit.write_bytes(b"mine")
    assert resolve_yunet_model(explicit) == explicit


# --- the downloader's sha256 check ----------------------------------------------------------------


# --- landmarks, precropped, full ------------------------------------------------------------------


def test_landmark_crop_is_centred_on_the_face_with_the_margin() -> None:
    cx, cy, ax, ay = 100, 50, 20, 25
    frame = _face_frame(120, 160, cx, cy, ax, ay)
    lms = _ellipse_landmarks(cx, cy, ax, ay)[None]
    size, margin = 64, 0.25
    cropper = FaceCropper("landmarks", margin=margin, output_size=size, smoothing=1)
    boxes, _ = cropper.boxes(frame[None], lms)
    np.testing.assert_allclose(boxes[0], [cx, cy, 2 * ay * (1 + 2 * margin)], atol=1e-6)

    crops, face_mask = cropper(frame[None], lms)
    assert face_mask.tolist() == [True]
    fx, fy, fw, fh = _face_stats(crops[0])
    side = 2 * ay * (1 + 2 * margin)
    assert abs(fx - size / 2) < 1.5 and abs(fy - size / 2) < 1.5
    assert abs(fh - 2 * ay * size / side) < 2.5
    assert abs(fw - 2 * ax * size / side) < 2.5


def test_margin_sets_the_face_fraction_of_the_crop() -> None:
    frame = _face_frame(160, 160, 80, 80, 20, 20)
    lms = _ellipse_landmarks(80, 80, 20, 20)[None]
    widths = []
    for margin in (0.0, 0.5):
        crops, _ = FaceCropper("landmarks", margin=margin, output_size=96, smoothing=1)(frame[None], lms)
        widths.append(_face_stats(crops[0])[2])
    assert widths[0] == pytest.approx(96, abs=2)  # margin 0: the face fills the crop
    assert widths[0] / widths[1] == pytest.approx(2.0, rel=0.05)


def test_precropped_uses_the_whole_image() -> None:
    frame = _face_frame(112, 112, 40, 60, 20, 30)
    size = 64
    crops, face_mask = FaceCropper("precropped", margin=0.25, output_size=size)(frame[None])
    assert face_mask.tolist() == [True]
    # No margin, no re-centring: the crop is the image rescaled.
    fx, fy, _, fh = _face_stats(crops[0])
    s = size / 112
    assert abs(fx - 40 * s) < 1.0 and abs(fy - 60 * s) < 1.0
    assert abs(fh - 60 * s) < 2.0
    np.testing.assert_array_equal(crops[0], cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA))


def test_full_frame_is_letterboxed_not_stretched() -> None:
    frame = np.full((80, 120, 3), 200, dtype=np.uint8)
    crops, face_mask = FaceCropper("full", output_size=60)(frame[None])
    assert face_mask.tolist() == [True]
    # Square side 120 -> 20 rows of padding above and below -> 10 crop rows each.
    assert (crops[0, :9] == 0).all() and (crops[0, 51:] == 0).all()
    assert (crops[0, 11:49] == 200).all()


def test_crop_near_the_border_is_padded_and_stays_centred() -> None:
    frame = _face_frame(100, 100, 12, 10, 10, 12)
    lms = _ellipse_landmarks(12, 10, 10, 12)[None]
    size = 48
    crops, face_mask = FaceCropper("landmarks", margin=0.5, output_size=size, smoothing=1)(frame[None], lms)
    assert face_mask.tolist() == [True]
    fx, fy, _, _ = _face_stats(crops[0])
    assert abs(fx - size / 2) < 1.5 and abs(fy - size / 2) < 1.5
    # Square of side 48 centred at (12, 10): columns/rows left of and above the image are padding.
    assert (crops[0, :10, :10] == 0).all()
    assert (crops[0, -5:, -5:] == 128).all()


# --- the crop policy --------------------------------------------------------------------------------


def test_frames_without_a_face_are_masked_not_dropped() -> None:
    T, size = 5, 32
    frames = np.stack([_face_frame(64, 64, 32, 32, 10, 12)] * T)
    lms = np.repeat(_ellipse_landmarks(32, 32, 10, 12)[None], T, axis=0)
    lms[2] = np.nan  # the dataset had no landmarks for this frame
    valid = np.array([True, True, True, True, False])  # e.g. an unreadable frame

    crops, face_mask = FaceCropper("landmarks", output_size=size)(frames, lms, valid)
    assert crops.shape == (T, size, size, 3)
    assert face_mask.tolist() == [True, True, False, True, False]
    assert (crops[2] == 0).all() and (crops[4] == 0).all()
    assert crops[0].any()

    crops, face_mask = FaceCropper("landmarks", output_size=size, missing="nearest")(frames, lms, valid)
    assert face_mask.tolist() == [True, True, False, True, False]
    np.testing.assert_array_equal(crops[2], crops[1])
    np.testing.assert_array_equal(crops[4], crops[3])

    _, face_mask = FaceCropper("landmarks")(frames, lms * np.nan)
    assert not face_mask.any()


def test_smoothing_reduces_box_jitter_but_not_across_a_cut() -> None:
    rng = np.random.default_rng(0)
    T = 40
    true_c = np.tile([80.0, 48.0], (T, 1))
    true_c[20:, 0] = 30.0  # a shot cut: the face jumps 50 px (box side 54 px)
    centres = true_c + rng.normal(0, 2.0, size=(T, 2))
    lms = np.stack([_ellipse_landmarks(x, y, 15, 18) for x, y in centres])
    frames = np.zeros((T, 96, 128, 3), dtype=np.uint8)

    raw, m0 = FaceCropper("landmarks", smoothing=1).boxes(frames, lms)
    smooth, m1 = FaceCropper("landmarks", smoothing=7).boxes(frames, lms)
    assert m0.all() and m1.all()
    err_raw = np.sqrt(((raw[:, :2] - true_c) ** 2).mean())
    err_smooth = np.sqrt(((smooth[:, :2] - true_c) ** 2).mean())
    jitter_raw = np.abs(np.diff(raw[:20, :2], axis=0)).mean()
    jitter_smooth = np.abs(np.diff(smooth[:20, :2], axis=0)).mean()
    assert err_smooth < 0.6 * err_raw
    assert jitter_smooth < 0.5 * jitter_raw
    # The frames on each side of the cut are not pulled towards the other shot.
    assert np.abs(smooth[17:23, :2] - true_c[17:23]).max() < 6.0


class _TwoFaces(FaceDetector):
    """A small confident face at (20, 20) and a big, less confident one at (70, 50)."""

    name = "two_faces"

    def detect(self, frame: np.ndarray, landmarks: np.ndarray | None = None) -> list[Detection]:
        return [Detection((10, 10, 20, 20), 0.9), Detection((50, 30, 40, 40), 0.6)]


def test_largest_versus_most_confident_face() -> None:
    frames = np.zeros((2, 100, 100, 3), dtype=np.uint8)
    boxes, _ = FaceCropper(_TwoFaces(), select="largest", margin=0).boxes(frames)
    np.testing.assert_allclose(boxes[0], [70, 50, 40])
    boxes, _ = FaceCropper(_TwoFaces(), select="confident", margin=0).boxes(frames)
    np.testing.assert_allclose(boxes[0], [20, 20, 20])
    boxes, _ = FaceCropper(_TwoFaces(), select="largest", min_score=0.7, margin=0).boxes(frames)
    np.testing.assert_allclose(boxes[0], [20, 20, 20])
    _, face_mask = FaceCropper(_TwoFaces(), min_score=0.95).boxes(frames)
    assert not face_mask.any()


def test_clear_errors() -> None:
    frames = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="unknown face detector"):
        create_detector("haar")
    with pytest.raises(ValueError, match="needs per-frame landmarks"):
        FaceCropper("landmarks")(frames)
    with pytest.raises(ValueError, match=r"landmarks must be \(2, K, 2\)"):
        FaceCropper("landmarks")(frames, np.zeros((3, 68, 2)))
    with pytest.raises(ValueError, match="RGB"):
        FaceCropper("full")(frames[..., 0])


@pytest.mark.parametrize("name", ["single_face.mp4", "face_noface.mov"])
def test_detecting_one_frame_in_two_or_four_gives_the_same_faces(name):
    """``detect_every=2`` and ``4`` (the default) on real footage (a steady face; a face that
    leaves): YuNet runs on about half (a quarter) of the frames, the same frames have a face as when
    every frame is detected, the boxes stay within a few percent of the face's size, and the
    listener sees each frame once, in order."""
    from avfusion.data.faces import StreamingCropper, build_cropper
    from avfusion.data.video import VideoFile

    media = os.environ.get("AVFUSION_TEST_MEDIA")
    if not media:
        pytest.skip("set AVFUSION_TEST_MEDIA to run this test")
    video = VideoFile(Path(media) / name)
    batches = list(video.iter_batches(np.arange(len(video)), 8))  # decoded once, cropped twice
    runs = {}
    for every in (1, 2, 4):
        cropper = build_cropper("yunet", margin=0.0, smoothing=5, output_size=64, yunet_model=_yunet_path(),
                                detect_every=every)
        seen: list = []
        stream = StreamingCropper(cropper, listener=lambda i, found, boxes: seen.extend(i.tolist()))
        chunks = [stream.push(i, f, valid=ok) for i, f, ok in batches]
        chunks = [c for c in chunks + [stream.finish()] if c is not None]
        assert seen == list(range(len(video)))
        runs[every] = (np.concatenate([c.face_mask for c in chunks]), np.concatenate([c.boxes for c in chunks]),
                       stream.detected_frames)
    mask1, boxes1, n1 = runs[1]
    assert n1 == len(video)
    for every, most in ((2, 0.6), (4, 0.35)):
        mask2, boxes2, n2 = runs[every]
        assert n2 <= most * len(video)
        np.testing.assert_array_equal(mask2, mask1)
        both = mask1 & mask2
        assert both.sum() > 20
        err = np.abs(boxes2[both] - boxes1[both]).max(axis=1) / boxes1[both, 2]
        assert np.median(err) < 0.01 and err.max() < 0.05, (every, np.median(err), err.max())


def _real_frames(step: int = 7) -> list:
    """Every ``step``-th frame of the shared real clips (a face, a face that leaves, no face)."""
    from avfusion.data.video import VideoFile

    media = os.environ.get("AVFUSION_TEST_MEDIA")
    if not media:
        return []
    frames = []
    for name in ("single_face.mp4", "face_noface.mov", "no_face.mp4"):
        video = VideoFile(Path(media) / name)
        frames += list(video.get_batch(np.arange(0, len(video), step)))
    return frames


def test_yunet_on_openvino_finds_what_opencv_finds() -> None:
    """The detector's OpenVINO path decodes YuNet's outputs as cv2.FaceDetectorYN does: the same
    faces, boxes, landmarks and scores on the astronaut, a blank frame, a frame at a size that is
    no multiple of 32, and real footage with and without a face."""
    pytest.importorskip("openvino")
    skimage_data = pytest.importorskip("skimage.data")
    path = _yunet_path()
    real = _real_frames()
    frames = [skimage_data.astronaut(), np.full((200, 300, 3), 128, np.uint8),
              cv2.resize(skimage_data.astronaut(), (301, 250))] + real
    ov = YuNetDetector(model_path=path, runtime="openvino")
    cv = YuNetDetector(model_path=path, runtime="opencv")
    assert (ov.runtime, cv.runtime) == ("openvino", "opencv")
    assert YuNetDetector(model_path=path).runtime == "openvino"  # auto, with openvino installed
    found = 0
    for frame in frames:
        a, b = cv.detect(frame), ov.detect(frame)
        assert len(a) == len(b)
        for x, y in zip(sorted(a, key=lambda d: -d.score), sorted(b, key=lambda d: -d.score)):
            np.testing.assert_allclose(y.box, x.box, atol=1e-3)
            np.testing.assert_allclose(y.landmarks5, x.landmarks5, atol=1e-3)
            assert abs(y.score - x.score) < 1e-4
        found += len(a)
    assert found >= 2 + 10 * bool(real)  # the astronaut twice, and the real clips' faces when they are there


def test_yunet_openvino_runtime_without_the_package_is_one_line(monkeypatch) -> None:
    import builtins

    path = _yunet_path()
    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("no openvino")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    with pytest.raises(ValueError, match=r'pip install "avfusion\[openvino\]"'):
        YuNetDetector(model_path=path, runtime="openvino")
    assert YuNetDetector(model_path=path).runtime == "opencv"  # auto falls back


def test_yunet_detects_with_opencv_in_another_process(monkeypatch) -> None:
    """OpenVINO's threads do not survive a fork: a copy of the detector in another process (a
    DataLoader worker) runs OpenCV, with the same detections."""
    pytest.importorskip("openvino")
    skimage_data = pytest.importorskip("skimage.data")
    import avfusion.data.faces as faces

    det = YuNetDetector(model_path=_yunet_path(), runtime="openvino")
    image = skimage_data.astronaut()
    ref = det.detect(image)
    assert det._ov is not None and len(ref) == 1
    worker = pickle.loads(pickle.dumps(det))
    real_pid = os.getpid()
    monkeypatch.setattr(faces.os, "getpid", lambda: real_pid + 1)
    got = worker.detect(image)
    assert worker._ov is None  # OpenVINO was not touched in the "worker"
    assert len(got) == 1
    np.testing.assert_allclose(got[0].box, ref[0].box, atol=1e-3)
