"""The runner's runtimes: OpenVINO gives torch float32's values (f32: to rounding, bf16: within
bf16's deviation), keeps its converted network on disk and reuses it, and says in one line how to
install it when it is missing; ``auto`` picks it only where the bench measured it faster."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from conftest import NEURAL_AV

pytestmark = pytest.mark.usefixtures("one_thread")

FRAME_BY_FRAME = {"mode": "video", "video": {"name": "emonet", "n_expression": 8, "width": 16, "num_modules": 1,
                                             "n_blocks": 1, "frozen": True}, "audio": None, "fusion": None}
# What each runtime may deviate from torch float32, relative to the largest raw output (valence,
# arousal, logits or feature): f32 differs by rounding order only; bf16 keeps 8 bits of mantissa.
TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2}


def make(cfg: dict, seed: int = 0):
    import avfusion
    from avfusion.config import ModelConfig, from_dict

    torch.manual_seed(seed)
    return avfusion.create_model(from_dict(ModelConfig, cfg)).eval()


def face_crops(n: int = 3) -> torch.Tensor:
    """The astronaut's face and two shifted crops of it: (n, 3, 256, 256) in [0, 1]."""
    import cv2
    from skimage import data

    img = data.astronaut()
    crops = [cv2.resize(img[20 + 8 * k : 220 + 8 * k, 140:320], (256, 256)) for k in range(n)]
    return torch.from_numpy(np.stack(crops).astype(np.float32) / 255).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One cache for the tests that only compare values: each model is converted once."""
    return tmp_path_factory.mktemp("openvino_cache")


def rel_dev(a: dict, b: dict) -> float:
    return max(float(np.abs(a[k] - b[k]).max() / np.abs(b[k]).max()) for k in b)


@pytest.mark.parametrize("cfg", [FRAME_BY_FRAME, NEURAL_AV], ids=["frame_by_frame", "temporal_feature"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_openvino_matches_torch_fp32(cfg, precision, shared_cache):
    pytest.importorskip("openvino")
    from avfusion.inference.runner import FrameRunner

    model, x = make(cfg), face_crops()
    ref = FrameRunner(model, "fp32", runtime="torch")
    ov = FrameRunner(model, precision, runtime="openvino", cache_dir=shared_cache, batch_size=2)  # 2 + 1: a short batch
    assert ov.runtime == "openvino" and ov.module is None and "openvino" in ov.description
    assert rel_dev(ov.raw(x), ref.raw(x)) < TOLERANCE[precision]
    out, want = ov(x), ref(x)
    assert sorted(out) == sorted(want) and all(out[k].shape == want[k].shape for k in want)
    if "va" in out:  # the same post-processing as torch: clipped, probabilities
        assert np.abs(out["va"]).max() <= 1 and np.allclose(out["expression"].sum(axis=1), 1, atol=1e-5)


def test_openvino_flip_averaging_matches_torch(shared_cache):
    pytest.importorskip("openvino")
    from avfusion.inference.runner import FrameRunner

    model, x = make(FRAME_BY_FRAME), face_crops(2)
    ov = FrameRunner(model, "fp32", flip=True, runtime="openvino", cache_dir=shared_cache)
    ref = FrameRunner(model, "fp32", flip=True, runtime="torch")
    assert ov.flip and "flip-averaged" in ov.description
    dev = rel_dev(ov.raw(x), ref.raw(x))
    assert dev < TOLERANCE["fp32"]
    # The mirrored half is in the converted graph: unflipped torch is much further away.
    assert rel_dev(ov.raw(x), FrameRunner(model, "fp32", runtime="torch").raw(x)) > 10 * dev


def test_second_runner_reuses_the_converted_network(tmp_path, monkeypatch):
    """The second construction reads the cache (no conversion: convert_model would fail) and gives
    the same values; other weights are another cache entry."""
    openvino = pytest.importorskip("openvino")
    from avfusion.inference.runner import FrameRunner

    model, x = make(FRAME_BY_FRAME), face_crops(2)
    first = FrameRunner(model, "bf16", runtime="openvino", cache_dir=tmp_path)
    assert first.openvino.converted
    xml = first.openvino.cache_folder / "model.xml"
    mtime = xml.stat().st_mtime_ns

    def no_conversion(*args, **kwargs):
        raise AssertionError("convert_model called although the cache holds the network")

    monkeypatch.setattr(openvino, "convert_model", no_conversion)
    second = FrameRunner(model, "bf16", runtime="openvino", cache_dir=tmp_path)
    assert not second.openvino.converted and second.openvino.cache_folder == first.openvino.cache_folder
    assert xml.stat().st_mtime_ns == mtime
    assert np.array_equal(second.raw(x)["va"], first.raw(x)["va"])
    # fp32 reads the same converted graph (the precision is applied when OpenVINO compiles it).
    assert not FrameRunner(model, "fp32", runtime="openvino", cache_dir=tmp_path).openvino.converted
    other = make(FRAME_BY_FRAME, seed=1)
    with pytest.raises(AssertionError, match="convert_model called"):
        FrameRunner(other, "bf16", runtime="openvino", cache_dir=tmp_path)


def test_missing_openvino_is_one_line_naming_the_install(monkeypatch):
    from avfusion.inference.runner import FrameRunner

    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    with pytest.raises(ValueError, match=r'pip install "avfusion\[openvino\]"') as e:
        FrameRunner(make(FRAME_BY_FRAME), "fp32", runtime="openvino")
    assert "\n" not in str(e.value)
    assert FrameRunner(make(FRAME_BY_FRAME), "bf16", runtime="auto").runtime == "torch"


def test_auto_follows_the_measured_table(monkeypatch):
    import avfusion.inference.runner as runner

    monkeypatch.setattr(runner, "cpu_class", lambda: "amx")
    monkeypatch.setattr(runner, "OPENVINO_SPEEDUP", {("amx", "bf16", "emonet"): 2.0, ("amx", "fp32", "emonet"): 1.05})
    monkeypatch.setattr("avfusion.inference.openvino_net.openvino_available", lambda: True)
    assert runner.resolve_runtime("auto", "cpu", "bf16", network="emonet") == "openvino"
    assert runner.resolve_runtime("auto", "cpu", "fp32", network="emonet") == "torch"  # measured, not enough faster
    assert runner.resolve_runtime("auto", "cpu", "bf16", network="vit") == "torch"  # not measured
    assert runner.resolve_runtime("auto", "cuda", "bf16", network="emonet") == "torch"
    assert runner.resolve_runtime("auto", "cpu", "bf16", compile=True, network="emonet") == "torch"
    assert runner.resolve_runtime("auto", "cpu", "bf16", convertible=False, network="emonet") == "torch"
    assert runner.network_kind(make(FRAME_BY_FRAME).video_encoder) == "emonet"
    monkeypatch.setattr(runner, "cpu_class", lambda: "other")  # not measured there
    assert runner.resolve_runtime("auto", "cpu", "bf16", network="emonet") == "torch"


def test_non_finite_openvino_outputs_are_refused(shared_cache, monkeypatch):
    """openvino 2026.4 in bf16 gives NaN for some networks (the MAE ViT, wav2vec2): the runner
    refuses to run rather than fill a table with NaN. (The shared cache: the check is on the
    outputs, whether the graph was just converted or read back.)"""
    pytest.importorskip("openvino")
    from avfusion.inference import openvino_net
    from avfusion.inference.runner import FrameRunner

    def nan_outputs(self, x):
        return {"va": np.full((len(x), 2), np.nan, dtype=np.float32)}

    monkeypatch.setattr(openvino_net.OpenVINONet, "__call__", nan_outputs)
    with pytest.raises(ValueError, match="non-finite outputs for EmoNetEncoder; use precision fp32 or runtime torch"):
        FrameRunner(make(FRAME_BY_FRAME), "bf16", runtime="openvino", cache_dir=shared_cache)


def test_runtime_errors_are_one_line():
    import avfusion
    from avfusion.inference.runner import FrameRunner, resolve_runtime

    with pytest.raises(ValueError, match="runtime must be one of auto, torch, openvino"):
        resolve_runtime("onnx", "cpu")
    with pytest.raises(ValueError, match="CPU"):
        resolve_runtime("openvino", "cuda")
    with pytest.raises(ValueError, match="compile"):
        FrameRunner(make(FRAME_BY_FRAME), "fp32", compile=True, runtime="openvino")
    with pytest.raises(ValueError, match="no weights|has none"):  # HOG features
        FrameRunner(avfusion.create_model("tiny"), "fp32", runtime="openvino")
    assert "torch" in FrameRunner(avfusion.create_model("tiny"), runtime="auto").description


@pytest.fixture(scope="module")
def voice_expert(tmp_path_factory):
    """The voice expert (tiny audEERING layout) and an OpenVINO cache holding its graph: the first
    runner converts it, once for both precisions (the graph is float32; the precision is applied
    when OpenVINO compiles it)."""
    pytest.importorskip("openvino")
    from expert_files import w2v2_reference, write_w2v2_folder

    from avfusion.encoders.voice_expert import VoiceExpertEncoder
    from avfusion.inference.runner import UtteranceRunner

    tmp = tmp_path_factory.mktemp("voice_expert")
    enc = VoiceExpertEncoder.from_pretrained(write_w2v2_folder(tmp / "w", tiny=True,
                                                               reference=w2v2_reference(seed=1, tiny=True)))
    first = UtteranceRunner(enc, "fp32", runtime="openvino", cache_dir=tmp / "cache", window=0.5)
    assert first.runtime == "openvino" and first.openvino.converted
    return enc, tmp / "cache", first


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_voice_expert_under_openvino_matches_torch(precision, voice_expert):
    """The voice expert (tiny audEERING layout) through UtteranceRunner: OpenVINO's outputs equal
    torch's at the same precision within the runtime's deviation (bf16: the tiny random network
    moves ~20 % from float32 under torch's bf16 as under OpenVINO's, so bf16 is held to torch
    bf16), on waves of the traced length and of another (the converted graph takes any length);
    runners after the first (the fixture's, which converts) read the cached graph."""
    from avfusion.inference.hardware import cpu_has_fast_bf16
    from avfusion.inference.runner import UtteranceRunner

    if precision == "bf16" and not cpu_has_fast_bf16():
        pytest.skip("bf16 needs a CPU that computes it natively")
    enc, cache, first = voice_expert
    ref = UtteranceRunner(enc, precision, runtime="torch")
    ov = UtteranceRunner(enc, precision, runtime="openvino", cache_dir=cache, window=0.5)
    assert ov.runtime == "openvino" and not ov.openvino.converted
    g = torch.Generator().manual_seed(3)
    for samples in (8000, 5600):
        wave = torch.randn(2, samples, generator=g) * 0.2
        want = ref.utterance(wave)
        # The runner that converted (fp32) and the one that read the cache, at this precision.
        for runner in ([first, ov] if precision == "fp32" else [ov]):
            got = runner.utterance(wave)
            dev = max(float((got[k] - want[k]).abs().max() / want[k].abs().max()) for k in ("arousal", "valence"))
            assert dev < TOLERANCE[precision], (samples, dev)
    again = UtteranceRunner(enc, precision, runtime="openvino", cache_dir=cache, window=0.5)
    assert not again.openvino.converted
