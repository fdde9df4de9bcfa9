"""Face boxes and square face crops for every frame of a clip.

A :class:`FaceDetector` answers one question per frame: where are the faces. Four backends
(:func:`create_detector`):

- ``yunet``: the YuNet ONNX model (OpenVINO, or OpenCV's ``cv2.FaceDetectorYN``), for arbitrary video.
  OpenCV 5 has no Haar cascades any more, so this is the only detector that needs no extra
  package; it needs the model file (:func:`resolve_yunet_model`; ``avfusion download yunet`` fetches it).
- ``landmarks``: the box of per-frame dataset landmarks (AFEW-VA ships 68 points per frame).
- ``precropped``: frames that already are aligned face crops (Aff-Wild2 ``cropped_aligned``).
- ``full``: the whole frame is used as the face.

:class:`FaceCropper` turns the detections of a clip into one square crop per frame: the chosen
face (largest or most confident), a margin around it, a box smoothed over time, padding where
the box leaves the image, and a mask of the frames where no face was found. Frames without a
face are kept (masked), never dropped, so crops stay aligned with labels.
"""
from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import cv2
import numpy as np

from ..sources import SOURCES, avfusion_home

# Name the resolver and the downloader give the YuNet file, whatever its upstream version.
YUNET_FILENAME = SOURCES["yunet"].target  # face_detection_yunet.onnx

# Known upstream YuNet files: {filename: (urls tried in order, sha256)}, read from the one
# registry of weight files (avfusion.sources, entry "yunet"; its first variant is the default).
YUNET_FILES: dict[str, tuple[tuple[str, ...], str]] = {
    f.name: (f.urls, f.digest) for v in SOURCES["yunet"].variants for f in v.files if f.digest
}
# The version the project is tested with (its output on skimage's astronaut is in the tests).
DEFAULT_YUNET_FILE = SOURCES["yunet"].variants[0].files[0].name

# ./pretrained (relative to the working directory): where a source checkout keeps weight files it
# does not commit; the installed package never looks inside itself or a clone around it.
PRETRAINED_DIR = "pretrained"
# YuNet's detection size: the longer side frames are shrunk to before detection (see YuNetDetector).
DETECT_SIZE = 320


# --- detections and detectors -------------------------------------------------------------------


@dataclass
class Detection:
    """One face in one frame, in pixel coordinates of that frame.

    ``box`` is ``(x, y, w, h)`` of the top-left corner and size. ``landmarks5`` ``(5, 2)`` are, when
    the backend gives them, YuNet's five points: right eye, left eye, nose tip, right and left mouth
    corner, where right and left are the person's (their right eye appears on the image's left).
    """

    box: tuple[float, float, float, float]
    score: float = 1.0
    landmarks5: np.ndarray | None = None

    @property
    def area(self) -> float:
        return float(self.box[2] * self.box[3])

    @property
    def center(self) -> tuple[float, float]:
        x, y, w, h = self.box
        return x + w / 2.0, y + h / 2.0


def _check_frame(frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3:
        shape = getattr(frame, "shape", type(frame).__name__)
        raise ValueError(f"face detection expects an RGB frame (H, W, 3), got {shape}")
    if frame.dtype != np.uint8:
        raise ValueError(f"face detection expects uint8 frames, got {frame.dtype}")


class FaceDetector:
    """Base class: ``detect`` one RGB uint8 frame ``(H, W, 3)``, or ``detect_batch`` ``(T, H, W, 3)``.

    ``landmarks`` (``(K, 2)`` per frame, ``(T, K, 2)`` per batch) is read only by backends that use
    dataset landmarks; the others ignore it. ``whole_frame`` backends return the whole image as the
    face, and the cropper adds no margin around it.
    """

    name: str = "base"
    whole_frame: bool = False

    def detect(self, frame: np.ndarray, landmarks: np.ndarray | None = None) -> list[Detection]:
        raise NotImplementedError

    def detect_batch(
        self, frames: np.ndarray, landmarks: np.ndarray | None = None
    ) -> list[list[Detection]]:
        if landmarks is not None and len(landmarks) != len(frames):
            raise ValueError(f"{len(frames)} frames but landmarks for {len(landmarks)}")
        return [
            self.detect(frame, None if landmarks is None else landmarks[t])
            for t, frame in enumerate(frames)
        ]


class FullFrameDetector(FaceDetector):
    """The whole frame is the face (video that is already framed on one face, or no face at all)."""

    name = "full"
    whole_frame = True

    def detect(self, frame: np.ndarray, landmarks: np.ndarray | None = None) -> list[Detection]:
        _check_frame(frame)
        h, w = frame.shape[:2]
        return [Detection((0.0, 0.0, float(w), float(h)), 1.0)]


class PrecroppedDetector(FullFrameDetector):
    """Frames already are aligned face crops (Aff-Wild2 ``cropped_aligned``): the image is the face.

    A missing crop is the dataset's business: it marks that frame invalid and the cropper masks it.
    """

    name = "precropped"


class LandmarkDetector(FaceDetector):
    """The face box is the bounding box of the frame's landmarks (AFEW-VA: iBUG-68 points).

    The 68 points start at the brows, so this box leaves out the forehead; the cropper's margin
    brings it back. A frame whose landmarks contain NaN/inf (or fewer than 2 points) has no face.
    """

    name = "landmarks"

    def detect(self, frame: np.ndarray, landmarks: np.ndarray | None = None) -> list[Detection]:
        if landmarks is None:
            raise ValueError(
                "the 'landmarks' face detector needs per-frame landmarks (T, K, 2); "
                "pass landmarks=... or choose another detector ('yunet', 'full')"
            )
        pts = np.asarray(landmarks, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise ValueError(f"landmarks of one frame must be (K, 2), got {pts.shape}")
        if len(pts) < 2 or not np.isfinite(pts).all():
            return []
        x0, y0 = pts.min(axis=0)
        x1, y1 = pts.max(axis=0)
        return [Detection((float(x0), float(y0), float(x1 - x0), float(y1 - y0)), 1.0)]


class YuNetDetector(FaceDetector):
    """The YuNet ONNX face detector, run by OpenVINO or by OpenCV's ``cv2.FaceDetectorYN``.

    Frames whose longer side exceeds ``max_side`` (default :data:`DETECT_SIZE`, 320: the input
    size of YuNet's own demo) are shrunk to it before detection and the boxes scaled back: on a
    2-core CPU YuNet takes ~3.5 ms at 320x180 against ~14 ms at 640x360, and the faces of a
    talking-face video stay far above its smallest (~10 px). Faces under ~1/30 of the frame's
    longer side (40 px at 720p) want a larger ``max_side`` (``--detect-size 640``; 0: the frame
    as it is). The shrinking halves the frame with area averaging while it is at least twice too
    big (OpenCV's fast path; one area resize of 720p to 320 costs 2.4 ms, the halvings 0.4 ms),
    then area-resizes the rest, and converts to BGR at the small size.

    ``runtime``: ``auto`` (OpenVINO when it is installed and the file has the outputs of YuNet
    2023mar and 2026may, ``cls_8`` ... ``kps_32``; else OpenCV), ``openvino`` or ``opencv``. Both give the
    same detections (tested on real footage: boxes and landmarks within 1e-3 px, scores 1e-4): the
    network's outputs are decoded here exactly as ``FaceDetectorYN`` decodes them (per stride 8,
    16 and 32: score sqrt(cls * obj), box centre (cell + offset) * stride, size exp(.) * stride,
    landmarks (cell + offset) * stride; then OpenCV's NMS), on the frame padded to multiples of 32
    as OpenCV pads it. OpenVINO on one thread costs ~2.4 ms of CPU per 320x180 frame against ~7.5
    for OpenCV on two (measured on the README's 2-core Xeon): the face pass runs beside the
    network, so CPU time is what counts. The runtime objects are created lazily and not pickled,
    so a detector built in the parent process works inside DataLoader workers (with OpenCV there).
    """

    name = "yunet"
    RUNTIMES = ("auto", "openvino", "opencv")
    # The outputs of YuNet 2023mar and 2026may that decode_yunet reads.
    OUTPUTS = tuple(f"{k}_{s}" for k in ("cls", "obj", "bbox", "kps") for s in (8, 16, 32))

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        score_threshold: float = 0.6,
        nms_threshold: float = 0.3,
        top_k: int = 5000,
        max_side: int | None = None,
        runtime: str = "auto",
    ) -> None:
        self.model_path = resolve_yunet_model(model_path)
        max_side = DETECT_SIZE if max_side is None else max_side
        if max_side is not None and int(max_side) < 0:
            raise ValueError(f"detect size must be >= 0 pixels (0: the frame as it is); got {max_side}")
        if runtime not in self.RUNTIMES:
            raise ValueError(f"YuNet runtime must be one of {', '.join(self.RUNTIMES)}; got {runtime!r}")
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.top_k = int(top_k)
        self.max_side = int(max_side) or None  # 0: no shrinking
        self._net: Any = None
        self._size: tuple[int, int] | None = None
        self._ov: Any = None  # (openvino Core, {(h, w): (request, output ports, input buffer)})
        self._pid = os.getpid()  # OpenVINO runs in this process only (see detect)
        self._detector((320, 320))  # a file OpenCV cannot load is a settings error, before any frame
        self.runtime = self._choose_runtime(runtime)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_net"], state["_size"], state["_ov"] = None, None, None
        return state

    def _choose_runtime(self, runtime: str) -> str:
        if runtime == "opencv":
            return "opencv"
        try:
            import openvino
        except ImportError:
            if runtime == "openvino":
                raise ValueError("YuNet runtime 'openvino' needs the openvino package, which is not installed: "
                                 'pip install "avfusion[openvino]"') from None
            return "opencv"
        try:
            model = openvino.Core().read_model(str(self.model_path))
            names = {n for o in model.outputs for n in o.get_names()}
        except Exception as e:  # openvino's own errors: a file it cannot read
            if runtime == "openvino":
                raise ValueError(f"{self.model_path}: OpenVINO could not read this YuNet model ({e})") from None
            return "opencv"
        if not set(self.OUTPUTS) <= names:
            if runtime == "openvino":
                raise ValueError(f"{self.model_path}: not a YuNet with outputs {', '.join(self.OUTPUTS)} (2023mar, 2026may); "
                                 "use runtime opencv")
            return "opencv"
        return "openvino"

    def _detector(self, size: tuple[int, int]) -> Any:
        if self._net is None:
            try:
                self._net = cv2.FaceDetectorYN.create(
                    str(self.model_path), "", size, self.score_threshold, self.nms_threshold,
                    self.top_k,
                )
            except cv2.error as e:
                raise ValueError(
                    f"{self.model_path}: OpenCV could not load this YuNet model ({_short_cv2_message(e)}); "
                    "give the official file (`avfusion download yunet`) or another --yunet-model"
                ) from None
            self._size = size
        elif self._size != size:
            # FaceDetectorYN runs at a fixed input size: it must match every frame.
            self._net.setInputSize(size)
            self._size = size
        return self._net

    def _openvino_request(self, h: int, w: int) -> Any:
        """The compiled network, its output ports and its zero-padded input buffer for ``h`` x ``w``
        images (one set per size: the padding stays zero, only the image's area is rewritten)."""
        import openvino

        if self._ov is None:
            self._ov = (openvino.Core(), {})
        core, compiled = self._ov
        if (h, w) not in compiled:
            ph, pw = -(-h // 32) * 32, -(-w // 32) * 32  # padded to multiples of 32, as OpenCV pads
            model = core.read_model(str(self.model_path))
            model.reshape([1, 3, ph, pw])
            # One thread, not pinned: the detector runs in the face pass, beside the network's threads.
            net = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1,
                                                    "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False})
            ports = {n: o for o in net.outputs for n in o.get_names() if n in self.OUTPUTS}
            compiled[(h, w)] = (net.create_infer_request(), ports, np.zeros((1, 3, ph, pw), dtype=np.float32))
        return compiled[(h, w)]

    def _detect_openvino(self, image: np.ndarray) -> np.ndarray:
        """``FaceDetectorYN.detect``'s rows (x, y, w, h, 5 landmarks, score) for a BGR image."""
        h, w = image.shape[:2]
        request, ports, blob = self._openvino_request(h, w)
        blob[0, :, :h, :w] = image.transpose(2, 0, 1)
        res = request.infer({0: blob})
        return decode_yunet({n: res[p][0] for n, p in ports.items()}, blob.shape[2], blob.shape[3],
                            self.score_threshold, self.nms_threshold, self.top_k)

    def detect(self, frame: np.ndarray, landmarks: np.ndarray | None = None) -> list[Detection]:
        _check_frame(frame)
        h, w = frame.shape[:2]
        image = frame
        if self.max_side is not None and max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            image = shrink(image, size)
            scale_x, scale_y = size[0] / w, size[1] / h
        else:
            scale_x = scale_y = 1.0
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)  # OpenCV models are trained on BGR
        # OpenVINO's thread pool does not survive a fork: another process (a DataLoader worker,
        # forked or given a pickled copy) detects with OpenCV, which gives the same detections.
        if self.runtime == "openvino" and self._pid == os.getpid():
            faces = self._detect_openvino(image)
        else:
            _, faces = self._detector((image.shape[1], image.shape[0])).detect(image)
        if faces is None:
            return []
        out = []
        for f in faces:
            x, y, bw, bh = (float(v) for v in f[:4])
            pts = np.array(f[4:14], dtype=np.float32).reshape(5, 2)
            pts /= np.array([scale_x, scale_y], dtype=np.float32)
            out.append(
                Detection((x / scale_x, y / scale_y, bw / scale_x, bh / scale_y), float(f[14]), pts)
            )
        return out


def decode_yunet(outputs: dict[str, np.ndarray], height: int, width: int, score_threshold: float,
                 nms_threshold: float, top_k: int) -> np.ndarray:
    """YuNet's raw outputs (2023mar, 2026may) for one ``height`` x ``width`` input (multiples of 32; per
    stride s: ``cls_s``, ``obj_s`` (cells, 1), ``bbox_s`` (cells, 4), ``kps_s`` (cells, 10), cells
    row-major) -> rows ``(x, y, w, h, 5 x (x, y), score)`` after non-maximum suppression, best first,
    as ``cv2.FaceDetectorYN`` returns them."""
    boxes, points, scores = [], [], []
    for s in (8, 16, 32):
        cols = width // s
        score = np.sqrt(np.clip(outputs[f"cls_{s}"][:, 0], 0, 1) * np.clip(outputs[f"obj_{s}"][:, 0], 0, 1))
        at = np.flatnonzero(score >= score_threshold)
        if not len(at):
            continue
        row, col = (at // cols).astype(np.float32), (at % cols).astype(np.float32)
        b = outputs[f"bbox_{s}"][at]
        cx, cy = (col + b[:, 0]) * s, (row + b[:, 1]) * s
        bw, bh = np.exp(b[:, 2]) * s, np.exp(b[:, 3]) * s
        boxes.append(np.stack([cx - bw / 2, cy - bh / 2, bw, bh], axis=1))
        k = outputs[f"kps_{s}"][at].reshape(-1, 5, 2)
        points.append(np.stack([(k[..., 0] + col[:, None]) * s, (k[..., 1] + row[:, None]) * s], axis=2).reshape(-1, 10))
        scores.append(score[at])
    if not boxes:
        return np.zeros((0, 15), dtype=np.float32)
    box, pts, score = np.concatenate(boxes), np.concatenate(points), np.concatenate(scores)
    keep = np.asarray(cv2.dnn.NMSBoxes(box.tolist(), score.tolist(), score_threshold, nms_threshold,
                                       top_k=top_k), dtype=np.int64).reshape(-1)
    return np.concatenate([box[keep], pts[keep], score[keep, None]], axis=1).astype(np.float32)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes."""
    ax0, ay0, aw, ah = a
    bx0, by0, bw, bh = b
    iw = min(ax0 + aw, bx0 + bw) - max(ax0, bx0)
    ih = min(ay0 + ah, by0 + bh) - max(ay0, by0)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return float(inter / (aw * ah + bw * bh - inter))


def shrink(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` area-resized down to ``size`` (width, height): halved while at least twice too big
    (INTER_AREA's fast exact-factor path), then resized the rest of the way."""
    while image.shape[1] >= 2 * size[0] and image.shape[0] >= 2 * size[1]:
        image = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
    if (image.shape[1], image.shape[0]) != tuple(size):
        image = cv2.resize(image, tuple(size), interpolation=cv2.INTER_AREA)
    return image


def _short_cv2_message(e: BaseException) -> str:
    """OpenCV's "OpenCV(4.x) /path/file.cpp:270: error: (-5:Bad argument) Can't read ONNX file: x in
    function 'f'" without the source location: "Bad argument: Can't read ONNX file"."""
    import re

    text = " ".join(str(e).split())
    m = re.search(r"error: \((-?\d+):([^)]*)\)\s*(.*?)(?: in function .*)?$", text)
    if not m:
        return re.sub(r"\S+\.(?:cpp|hpp|h|cc):\d+:?\s*", "", text).strip() or type(e).__name__
    detail = re.sub(r":\s*\S*$", "", m.group(3)).strip() if m.group(3) else ""
    return f"{m.group(2).strip()}: {detail}" if detail else m.group(2).strip()


_DETECTORS: dict[str, Callable[..., FaceDetector]] = {
    "yunet": YuNetDetector,
    "landmarks": LandmarkDetector,
    "precropped": PrecroppedDetector,
    "full": FullFrameDetector,
}


def create_detector(name: str, **kwargs: Any) -> FaceDetector:
    """Build a face detector by name: ``yunet``, ``landmarks``, ``precropped`` or ``full``.

    ``yunet`` takes ``model_path``, ``score_threshold`` (0.6), ``nms_threshold`` (0.3), ``top_k``,
    ``max_side`` (:data:`DETECT_SIZE`; 0: no shrinking) and ``runtime`` (``auto``, ``openvino``,
    ``opencv``); the others take no arguments.
    """
    if name not in _DETECTORS:
        raise ValueError(f"unknown face detector {name!r}; choose one of {sorted(_DETECTORS)}")
    return _DETECTORS[name](**kwargs)


# --- the YuNet model file -----------------------------------------------------------------------


def yunet_search_paths() -> list[Path]:
    """Where :func:`resolve_yunet_model` looks when no path is given, in order."""
    return [avfusion_home() / YUNET_FILENAME, Path.cwd() / PRETRAINED_DIR / YUNET_FILENAME]


def resolve_yunet_model(path: str | os.PathLike | None = None) -> Path:
    """The YuNet ONNX file: ``path`` if given, else ``$AVFUSION_HOME`` or ``./pretrained/``.

    Raises FileNotFoundError saying where to put the file when there is none.
    """
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(
                f"YuNet model file not found: {p}. Give the path of a YuNet ONNX file "
                f"(OpenCV model zoo, e.g. {DEFAULT_YUNET_FILE}), or run `avfusion download yunet`."
            )
        return p
    candidates = yunet_search_paths()
    for p in candidates:
        if p.is_file():
            return p
    looked = ", ".join(str(p) for p in candidates)
    raise FileNotFoundError(
        f"YuNet face detector model not found (looked for {looked}). Put the OpenCV model zoo file "
        f"{DEFAULT_YUNET_FILE} at {candidates[0]} (set AVFUSION_HOME to change the folder), pass "
        "model_path=..., or run `avfusion download yunet` on a machine with internet access. "
        "OpenCV 5 has no Haar cascades to fall back on; the 'landmarks', 'precropped' and 'full' "
        "detectors need no model file."
    )


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- square crops of a clip ---------------------------------------------------------------------


class FaceCropper:
    """One square face crop per frame of a clip, with a mask of the frames that have a face.

    Policy, frame by frame:

    1. Detections scoring below ``min_score`` are discarded; of the rest, ``select="largest"``
       keeps the biggest box (area), ``select="confident"`` the highest score.
    2. The box becomes a square centred on the face with side ``max(w, h) * (1 + 2 * margin)``:
       ``margin`` is the fraction of the face size added on each side (0.25 -> 1.5x the face).
       ``whole_frame`` detectors (``full``, ``precropped``) get no margin: the square is the
       frame's longer side, centred, so non-square frames are letterboxed, not stretched.
    3. Smoothing: a centred moving average of centre and side over ``smoothing`` frames (odd
       window, an even one acts as the next odd; 0 or 1 = off), taken over the frames of the window that have a face. A neighbour whose
       centre is more than ``max_jump`` times the frame's side away (a shot cut, another person)
       is left out, so a cut is not blurred into the frames around it. Smoothing works within the
       clip passed in.
    4. Frames without a face (none detected, ``valid`` False, or non-finite landmarks) get
       ``face_mask`` False and stay in the clip. Their crop is all ``pad_value`` when
       ``missing="zeros"``, or the crop at the box of the nearest frame with a face when
       ``missing="nearest"`` (a clip with no face at all gives ``pad_value`` crops either way).
    5. Parts of the square outside the image are filled with ``pad_value``, so the face stays
       centred; the square is resized to ``output_size`` with INTER_AREA when shrinking and
       INTER_LINEAR when enlarging.
    """

    def __init__(
        self,
        detector: FaceDetector | str = "full",
        margin: float = 0.25,
        output_size: int = 256,
        smoothing: int = 5,
        select: str = "largest",
        min_score: float = 0.0,
        missing: str = "zeros",
        pad_value: int = 0,
        max_jump: float = 0.5,
        detect_every: int = 1,
    ) -> None:
        self.detector = create_detector(detector) if isinstance(detector, str) else detector
        if int(detect_every) < 1:
            raise ValueError(f"detect_every must be >= 1 frame, got {detect_every}")
        self.detect_every = int(detect_every)
        if select not in ("largest", "confident"):
            raise ValueError(f"select must be 'largest' or 'confident', got {select!r}")
        if missing not in ("zeros", "nearest"):
            raise ValueError(f"missing must be 'zeros' or 'nearest', got {missing!r}")
        if margin < 0 or output_size < 1 or smoothing < 0:
            raise ValueError("margin must be >= 0, output_size >= 1 and smoothing >= 0")
        self.margin = float(margin)
        self.output_size = int(output_size)
        self.smoothing = int(smoothing)
        self.select = select
        self.min_score = float(min_score)
        self.missing = missing
        self.pad_value = int(pad_value)
        self.max_jump = float(max_jump)

    def __call__(
        self,
        frames: np.ndarray,
        landmarks: np.ndarray | None = None,
        valid: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """frames: (T, H, W, 3) uint8 RGB; landmarks: (T, K, 2) or None; valid: (T,) bool or None.

        Returns crops ``(T, S, S, 3)`` uint8 and face_mask ``(T,)`` bool.
        """
        boxes, face_mask = self.boxes(frames, landmarks, valid)
        return self.crop(frames, boxes, face_mask), face_mask

    def boxes(
        self,
        frames: np.ndarray,
        landmarks: np.ndarray | None = None,
        valid: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The smoothed square boxes ``(T, 3)`` as (centre x, centre y, side), and face_mask ``(T,)``.

        Boxes of frames without a face are NaN.
        """
        raw, face_mask = self.raw_boxes(frames, landmarks, valid)
        return self.smooth_boxes(raw, face_mask), face_mask

    def raw_boxes(
        self,
        frames: np.ndarray,
        landmarks: np.ndarray | None = None,
        valid: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Steps 1, 2 and 4 of the policy, frame by frame: the unsmoothed square boxes ``(T, 3)``
        (NaN without a face) and face_mask ``(T,)``. A stream of chunks is smoothed afterwards
        with :meth:`smooth_boxes` (see :class:`StreamingCropper`)."""
        raw, face_mask, _, _ = self.detections(frames, landmarks, valid)
        return raw, face_mask

    def detections(
        self,
        frames: np.ndarray,
        landmarks: np.ndarray | None = None,
        valid: np.ndarray | None = None,
        found: list | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`raw_boxes` plus the chosen detection of each frame: ``(squares (T, 3), face_mask
        (T,), boxes (T, 4) x, y, w, h, scores (T,))``, NaN without a face. ``found``: a list that
        gets every frame's detections (a list per frame, empty where not valid), e.g. for a tracker."""
        frames, landmarks, valid = check_chunk(frames, landmarks, valid)
        T = len(frames)
        idx = np.flatnonzero(valid)
        per_frame: list = [[] for _ in range(T)]
        if len(idx):
            every = len(idx) == T  # no copy of the chunk when every frame is read
            dets = self.detector.detect_batch(
                frames if every else frames[idx], None if landmarks is None else landmarks[idx]
            )
            for t, frame_dets in zip(idx, dets):
                per_frame[t] = list(frame_dets)
        if found is not None:
            found.extend(per_frame)
        return self.chosen(per_frame)

    def chosen(self, per_frame: list) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Steps 1, 2 and 4 on detections already made (a list per frame; None or empty: no
        face): ``(squares (T, 3), face_mask (T,), boxes (T, 4), scores (T,))`` as :meth:`detections`."""
        T = len(per_frame)
        raw = np.full((T, 3), np.nan)
        det_boxes, scores = np.full((T, 4), np.nan), np.full(T, np.nan)
        for t, frame_dets in enumerate(per_frame):
            best = self.choose(frame_dets or [])
            if best is not None:
                raw[t] = self.square(best)
                det_boxes[t], scores[t] = best.box, best.score
        face_mask = np.isfinite(raw).all(axis=1) & (raw[:, 2] > 0)
        raw[~face_mask] = np.nan
        det_boxes[~face_mask], scores[~face_mask] = np.nan, np.nan
        return raw, face_mask, det_boxes, scores

    def square(self, det: Detection) -> tuple[float, float, float]:
        """Step 2: the square (centre x, centre y, side) a detection is cropped with."""
        margin = 0.0 if self.detector.whole_frame else self.margin
        cx, cy = det.center
        return cx, cy, max(det.box[2], det.box[3]) * (1.0 + 2.0 * margin)

    def with_detector(self, detector: FaceDetector) -> "FaceCropper":
        """The same crop policy with another detector (e.g. the boxes of a face track)."""
        out = copy.copy(self)
        out.detector = detector
        return out

    def choose(self, dets: list[Detection]) -> Detection | None:
        """Step 1: the detection a frame is read from (None: no face)."""
        dets = [d for d in dets if d.score >= self.min_score and d.box[2] > 0 and d.box[3] > 0]
        if not dets:
            return None
        if self.select == "largest":
            return max(dets, key=lambda d: d.area)
        return max(dets, key=lambda d: d.score)

    @property
    def smoothing_reach(self) -> int:
        """Frames on each side that a frame's smoothed box depends on."""
        return self.smoothing // 2 if self.smoothing > 1 else 0

    def smooth_boxes(self, raw: np.ndarray, face_mask: np.ndarray, causal: bool = False) -> np.ndarray:
        """Step 3: the centred moving average of :meth:`raw_boxes` over ``smoothing`` frames, or
        with ``causal`` (live: no future frames) over the frame and the ``smoothing // 2`` before it."""
        if self.smoothing <= 1:
            return raw
        half = self.smoothing // 2
        out = raw.copy()
        for t in np.flatnonzero(face_mask):
            lo, hi = max(0, t - half), (t + 1 if causal else min(len(raw), t + half + 1))
            window = raw[lo:hi][face_mask[lo:hi]]
            near = np.hypot(*(window[:, :2] - raw[t, :2]).T) <= self.max_jump * raw[t, 2]
            out[t] = window[near].mean(axis=0)
        return out

    def crop(self, frames: np.ndarray, boxes: np.ndarray, face_mask: np.ndarray) -> np.ndarray:
        """Cut ``boxes`` (T, 3) out of ``frames`` (T, H, W, 3); returns (T, S, S, 3) uint8."""
        T, S = len(frames), self.output_size
        crops = np.full((T, S, S, 3), self.pad_value, dtype=np.uint8)
        have = np.flatnonzero(face_mask)
        for t in range(T):
            if face_mask[t]:
                box = boxes[t]
            elif self.missing == "nearest" and len(have):
                box = boxes[have[np.argmin(np.abs(have - t))]]
            else:
                continue
            crops[t] = crop_square(frames[t], box, S, self.pad_value)
        return crops


def check_chunk(
    frames: np.ndarray, landmarks: np.ndarray | None, valid: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """A chunk's frames (T, H, W, 3), landmarks (T, K, 2) or None and valid mask (T,) (None: all
    valid) as arrays, or a ValueError naming what is malformed."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f"frames must be (T, H, W, 3) RGB, got {frames.shape}")
    T = len(frames)
    valid = np.ones(T, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if valid.shape != (T,):
        raise ValueError(f"valid must be ({T},) for {T} frames, got {valid.shape}")
    if landmarks is not None:
        landmarks = np.asarray(landmarks)
        if landmarks.ndim != 3 or landmarks.shape[0] != T or landmarks.shape[2] != 2:
            raise ValueError(f"landmarks must be ({T}, K, 2) for {T} frames, got {landmarks.shape}")
    return frames, landmarks, valid


def crop_square(frame: np.ndarray, box: np.ndarray, size: int, pad_value: int = 0) -> np.ndarray:
    """Crop the square ``box`` (centre x, centre y, side) out of ``frame`` (H, W, 3), padding with
    ``pad_value`` where it leaves the image, and resize it to ``(size, size, 3)``."""
    cx, cy, side = (float(v) for v in box)
    h, w = frame.shape[:2]
    n = max(1, int(round(side)))
    x0, y0 = int(round(cx - n / 2.0)), int(round(cy - n / 2.0))
    x1, y1 = x0 + n, y0 + n
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if ix0 >= ix1 or iy0 >= iy1:
        return np.full((size, size, 3), pad_value, dtype=np.uint8)
    square = cv2.copyMakeBorder(
        np.ascontiguousarray(frame[iy0:iy1, ix0:ix1]),
        iy0 - y0, y1 - iy1, ix0 - x0, x1 - ix1,
        cv2.BORDER_CONSTANT, value=(pad_value,) * 3,
    )
    if n > size:  # area averaging (halvings first: OpenCV's fast path; 2.3x faster from 600 px to 224)
        return shrink(square, (size, size))
    return cv2.resize(square, (size, size), interpolation=cv2.INTER_LINEAR)


class FaceChunk(NamedTuple):
    """Crops of consecutive frames from :class:`StreamingCropper`: frame ``indices`` (T,),
    ``crops`` (T, S, S, 3) uint8, smoothed squares ``boxes`` (T, 3), ``face_mask`` (T,), and the
    chosen detections ``detections`` (T, 4) x, y, w, h with their ``scores`` (T,) (NaN without a face)."""

    indices: np.ndarray
    crops: np.ndarray
    boxes: np.ndarray
    face_mask: np.ndarray
    detections: np.ndarray
    scores: np.ndarray


class StreamingCropper:
    """The one face stage: detect -> choose -> smooth -> crop, over a stream of frames that
    arrives in chunks (a file, a live source), with boxes smoothed exactly as if the whole stream
    were one clip.

    :meth:`push` detects the faces of a chunk and returns the crops of the frames whose smoothed
    box is final (``smoothing_reach`` frames after them have been seen; ``causal``: at once, from
    past frames only, for live sources); :meth:`finish` returns the rest. Only those few pending
    frames are kept, so memory does not grow with the stream.

    With the cropper's ``detect_every`` K > 1 (files only; live sources detect every frame) the
    detector runs on one frame in K; a frame between two detections has no face when neither
    found one, takes their linear interpolation when both found exactly one face and the two
    boxes overlap (IoU >= 0.5, the same face a few frames apart), and is detected itself
    otherwise (a face that comes, goes or changes, several faces). Each frame's
    detections, made or interpolated, reach ``listener`` once, in order.
    """

    MIN_IOU = 0.5  # two detections K frames apart this similar are the same steady face

    def __init__(self, cropper: FaceCropper, causal: bool = False,
                 listener: Callable[[np.ndarray, list, np.ndarray], None] | None = None) -> None:
        self.cropper = cropper
        self.causal = bool(causal)
        # listener(indices, detections per frame, chosen boxes (T, 4)): sees every frame once, in
        # order (a face tracker running beside the crops: avfusion.predict's one pass).
        self.listener = listener
        self.reach = cropper.smoothing_reach
        self.every = 1 if self.causal else int(getattr(cropper, "detect_every", 1))
        self.detected_frames = 0  # frames the detector ran on (the rest were interpolated)
        self._hist_raw = np.zeros((0, 3))
        self._hist_mask = np.zeros(0, dtype=bool)
        self._idx = np.zeros(0, dtype=np.int64)
        self._frames: list[np.ndarray] = []  # pending frames, one array each (no copies of the chunk)
        self._lms: list = []  # per pending frame: its landmarks or None
        self._found: list = []  # per pending frame: its detections (None: not resolved yet)
        self._direct = np.zeros(0, dtype=bool)  # the detector ran on it
        self._raw = np.zeros((0, 3))
        self._mask = np.zeros(0, dtype=bool)
        self._det = np.zeros((0, 4))
        self._score = np.zeros(0)
        self._prev: tuple[int, list] | None = None  # the last emitted frame the detector ran on
        self._last_detected: int | None = None

    def push(
        self,
        indices: np.ndarray,
        frames: np.ndarray,
        landmarks: np.ndarray | None = None,
        valid: np.ndarray | None = None,
    ) -> FaceChunk | None:
        """Add a chunk: frame ``indices`` (T,), ``frames`` (T, H, W, 3) RGB uint8, optional
        landmarks (T, K, 2) and decoded-frame mask (T,). Returns a :class:`FaceChunk` of the
        frames now final, or None."""
        frames, landmarks, valid = check_chunk(frames, landmarks, valid)
        T = len(frames)
        idx = np.asarray(indices, dtype=np.int64)
        now = valid.copy()
        if self.every > 1:  # one valid frame in K now; the others once their neighbours are known
            for t in np.flatnonzero(valid):
                if self._last_detected is not None and idx[t] - self._last_detected < self.every:
                    now[t] = False
                else:
                    self._last_detected = int(idx[t])
        found: list = [[] if not valid[t] else None for t in range(T)]
        if now.any():
            at = np.flatnonzero(now)
            every = len(at) == T  # no copy of the chunk when every frame is detected
            dets = self.cropper.detector.detect_batch(
                frames if every else frames[at], None if landmarks is None else landmarks[at])
            for t, d in zip(at, dets):
                found[t] = list(d)
            self.detected_frames += len(at)
        n0 = len(self._idx)
        self._idx = np.concatenate([self._idx, idx])
        self._frames.extend(frames[t] for t in range(T))
        self._lms.extend([None if landmarks is None else landmarks[t] for t in range(T)])
        self._found.extend(found)
        self._direct = np.concatenate([self._direct, now])
        self._raw = np.concatenate([self._raw, np.full((T, 3), np.nan)])
        self._mask = np.concatenate([self._mask, np.zeros(T, dtype=bool)])
        self._det = np.concatenate([self._det, np.full((T, 4), np.nan)])
        self._score = np.concatenate([self._score, np.full(T, np.nan)])
        self._settle(n0, final=False)
        ready = self._ready()
        return self._emit(ready if self.causal else ready - self.reach)

    def finish(self) -> FaceChunk | None:
        """The crops of every frame still pending (the stream has ended)."""
        self._settle(0, final=True)
        return self._emit(len(self._idx))

    def _ready(self) -> int:
        """Pending frames from the first on whose detections are known."""
        for i, f in enumerate(self._found):
            if f is None:
                return i
        return len(self._found)

    def _settle(self, start: int, final: bool) -> None:
        """Resolve the pending frames without detections (interpolate or detect them; ``final``:
        the stream has ended, nothing comes after), then choose each new frame's face."""
        todo = [i for i, f in enumerate(self._found) if f is None]
        for i in todo:
            prev = self._direct_before(i)
            nxt = next((j for j in range(i + 1, len(self._found)) if self._direct[j]), None)
            if nxt is None and not final:
                break  # wait for the next detection
            between = None
            if prev is not None and nxt is not None:
                between = self._between(prev, (int(self._idx[nxt]), self._found[nxt]), int(self._idx[i]))
            if between is not None:
                self._found[i] = between
            else:  # a face that comes, goes or changes: detect this frame too
                lm = self._lms[i]
                self._found[i] = list(self.cropper.detector.detect_batch(
                    self._frames[i][None], None if lm is None else lm[None])[0])
                self._direct[i] = True
                self.detected_frames += 1
        new = [i for i in range(min(start, len(self._found)), len(self._found)) if self._found[i] is not None]
        new += [i for i in todo if i < start and self._found[i] is not None]
        if new:
            raw, mask, det, score = self.cropper.chosen([self._found[i] for i in new])
            self._raw[new], self._mask[new], self._det[new], self._score[new] = raw, mask, det, score

    def _direct_before(self, i: int) -> tuple[int, list] | None:
        for j in range(i - 1, -1, -1):
            if self._direct[j]:
                return int(self._idx[j]), self._found[j]
        return self._prev

    def _between(self, a: tuple[int, list], b: tuple[int, list], at: int) -> list | None:
        """The detections at frame ``at`` between frames ``a`` and ``b`` (frame, its detections):
        none where neither has a face, the interpolation where both have one and the same steady
        face; None (detect it) otherwise."""
        (ia, da), (ib, db) = a, b
        if not da and not db:
            return []
        if len(da) != 1 or len(db) != 1 or ib <= ia or iou(da[0].box, db[0].box) < self.MIN_IOU:
            return None
        w = (at - ia) / float(ib - ia)
        x, y = da[0], db[0]
        box = tuple(float((1 - w) * p + w * q) for p, q in zip(x.box, y.box))
        lm = None
        if x.landmarks5 is not None and y.landmarks5 is not None:
            lm = ((1 - w) * x.landmarks5 + w * y.landmarks5).astype(np.float32)
        return [Detection(box, float((1 - w) * x.score + w * y.score), lm)]  # type: ignore[arg-type]

    def _emit(self, k: int) -> FaceChunk | None:
        if k <= 0 or not self._frames:
            return None
        h = len(self._hist_raw)
        raw = np.concatenate([self._hist_raw, self._raw])
        mask = np.concatenate([self._hist_mask, self._mask])
        boxes = self.cropper.smooth_boxes(raw, mask, causal=self.causal)[h : h + k]
        crops = self.cropper.crop(self._frames[:k], boxes, self._mask[:k])
        out = FaceChunk(self._idx[:k], crops, boxes, self._mask[:k], self._det[:k], self._score[:k])
        if self.listener is not None:
            self.listener(self._idx[:k].copy(), self._found[:k], self._det[:k].copy())
        direct = np.flatnonzero(self._direct[:k])
        if len(direct):
            self._prev = (int(self._idx[direct[-1]]), self._found[direct[-1]])
        lo = max(0, h + k - self.reach)
        self._hist_raw, self._hist_mask = raw[lo : h + k], mask[lo : h + k]
        self._idx, self._frames = self._idx[k:], self._frames[k:]
        self._lms, self._found, self._direct = self._lms[k:], self._found[k:], self._direct[k:]
        self._raw, self._mask = self._raw[k:], self._mask[k:]
        self._det, self._score = self._det[k:], self._score[k:]
        return out


def build_cropper(
    backend: str | FaceDetector = "full",
    *,
    margin: float = 0.25,
    smoothing: int = 5,
    output_size: int = 256,
    yunet_model: str | os.PathLike | None = None,
    detect_size: int | None = None,
    detect_every: int = 1,
) -> FaceCropper:
    """The one way a face cropper is made (datasets, predict, live): a detector by name (``yunet``
    with its model file, ``landmarks``, ``precropped``, ``full``) or a detector object, and the
    crop policy of a serving spec (margin, smoothing, crop side). ``detect_size``: YuNet's
    detection size (see :class:`YuNetDetector`; None: :data:`DETECT_SIZE`); ``detect_every``:
    YuNet on one frame in K of a file, steady faces interpolated between (see
    :class:`StreamingCropper`; the other detectors cost nothing and read every frame)."""
    if isinstance(backend, str):
        detector = (create_detector("yunet", model_path=yunet_model, max_side=detect_size) if backend == "yunet"
                    else create_detector(backend))
    else:
        detector = backend
    every = int(detect_every) if isinstance(detector, YuNetDetector) else 1
    return FaceCropper(detector, margin=margin, output_size=output_size, smoothing=smoothing, detect_every=every)
