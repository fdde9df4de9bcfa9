"""Shared test fixtures and models."""
import json
import math
import zlib
from pathlib import Path

import atexit
import os
import shutil
import tempfile

import pytest
import torch

# The tests pick their runtime where it matters (tests/test_runtime.py); everywhere else the torch
# runtime keeps results the same on every CPU and no test converts a network for OpenVINO. Downloads
# and converted-model caches go to a folder of this session, never the user's ~/.cache.
os.environ.setdefault("AVFUSION_RUNTIME", "torch")
if "AVFUSION_HOME" not in os.environ:
    _SESSION_HOME = tempfile.mkdtemp(prefix="avfusion-test-home-")
    os.environ["AVFUSION_HOME"] = _SESSION_HOME
    atexit.register(shutil.rmtree, _SESSION_HOME, ignore_errors=True)
# Under pytest-xdist (README's test command: a worker per core) each worker computes on one
# thread, so two workers do not fight over two cores with four threads.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

# Layout, weight recipe, input recipe and outputs of the official EmoNet (from its parity reference).
EMONET_REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "emonet_reference.json").read_text())

# A small neural audio-visual model (random weights: EmoNet at width 16, a 2-layer wav2vec2), written
# out here so that tests do not follow changes of the named "tiny" config.
NEURAL_AV = {
    "mode": "av",
    "video": {"name": "emonet", "n_expression": 8, "width": 16, "num_modules": 1, "n_blocks": 1, "frozen": True},
    "audio": {"name": "wav2vec2", "layer": -1, "frozen": True, "hf_config": {
        "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "conv_dim": [32] * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4}},
    "fusion": {"d_model": 32, "n_layers": 1, "n_heads": 4, "dropout": 0.0, "max_len": 64,
               "modality_dropout": 0.0},
}


@pytest.fixture
def one_thread():
    """Tiny models on a shared 2-core machine: a second intra-op thread mostly waits for the other
    (10x slower steps measured under load), so tests that use this run single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def grey_level(k: int) -> int:
    """Grey level of frame k in the videos of :func:`write_grey_video`: frames identify themselves."""
    return 16 + 12 * k


def write_grey_video(path, n: int, fps=25, audio: bool = True, size: int = 32, sample_rate: int = 16000,
                     ramp: bool = False):
    """A tiny video whose frame k is a flat grey of :func:`grey_level` (k), with a 440 Hz tone
    (``ramp``: its amplitude grows with time, so audio samples tell their time). H.264 + AAC, or
    MPEG-4 part 2 for an ``.avi`` path."""
    from fractions import Fraction
    from pathlib import Path

    import av
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w") as c:
        vs = c.add_stream("mpeg4" if path.suffix == ".avi" else "libx264", rate=rate)
        vs.width = vs.height = size
        vs.pix_fmt = "yuv420p"
        if audio:
            ast = c.add_stream("aac", rate=sample_rate)
            ast.layout = "mono"
        for k in range(n):
            fr = av.VideoFrame.from_ndarray(np.full((size, size, 3), grey_level(k), np.uint8), format="rgb24")
            fr.pts = k
            for p in vs.encode(fr):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        if audio:
            t = np.arange(int(n / float(rate) * sample_rate)) / sample_rate
            pcm = (0.3 * np.sin(2 * np.pi * 440 * t) * ((1 + t) if ramp else 1)).astype(np.float32)
            for s in range(0, len(pcm), 1024):
                af = av.AudioFrame.from_ndarray(pcm[None, s:s + 1024].copy(), format="flt", layout="mono")
                af.sample_rate, af.pts = sample_rate, s
                for p in ast.encode(af):
                    c.mux(p)
            for p in ast.encode():
                c.mux(p)
    return path


def synthetic_state_dict(layout: list, prefix: str = "") -> dict[str, torch.Tensor]:
    """EMONET_REFERENCE's weight recipe, applied in its key order (``layout``: [key, shape, dtype])."""
    sd = {}
    for key, shape, dtype in layout:
        g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        s = tuple(shape)
        if key.endswith("num_batches_tracked"):
            t = torch.tensor(0)
        elif key.endswith("running_var"):
            t = 0.5 + torch.rand(s, generator=g)
        elif key.endswith("running_mean"):
            t = 0.1 * torch.randn(s, generator=g)
        elif key.endswith("weight") and len(s) == 1:
            t = 1 + 0.1 * torch.randn(s, generator=g)
        elif key.endswith("bias"):
            t = 0.01 * torch.randn(s, generator=g)
        else:
            t = torch.randn(s, generator=g) / math.sqrt(math.prod(s[1:]))
        assert str(t.dtype) == f"torch.{dtype}", key
        sd[prefix + key] = t
    return sd


class Command:
    """One ``avfusion`` command run in-process, returning what its ``run`` returns (results dicts)."""

    def __init__(self, name: str) -> None:
        import importlib

        self.module = importlib.import_module(f"avfusion.cli.{name}")

    def main(self, argv):
        return self.module.run(self.module.parse_args(list(argv)))


def command(name: str) -> Command:
    return Command(name)


# OpenVINO's thread pool does not survive fork(): a test that forks (DataLoader workers, a fork
# pool) after OpenVINO ran in this process dies with a segfault. The modules that run OpenVINO
# in-process therefore run last.
_OPENVINO_MODULES = ("test_bench.py", "test_runtime.py")


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: Path(str(item.fspath)).name in _OPENVINO_MODULES)
