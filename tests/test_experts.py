"""The published face and voice experts (enet_b0_8_va_mtl, w2v2_msp_dim): their architectures, every
published file format (written by tests/expert_files.py with synthetic weights), parity with timm /
transformers run independently, and one-line errors for wrong files. Offline; no real weights."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from avfusion import create_model
from avfusion.config import AudioEncoderConfig, VideoEncoderConfig
from avfusion.encoders import create_audio_encoder, create_video_encoder
from avfusion.encoders.face_expert import EXPRESSIONS, FaceExpertEncoder, convert_face_expert
from avfusion.encoders.voice_expert import (MSP_DIM_CONFIG, OUTPUTS, VoiceExpertEncoder, convert_voice_expert,
                                            msp_dim_hf_config)
from avfusion.factory import get_model_config
from expert_files import (W2V2_MSP_DIM_CONFIG, W2V2_TINY_OVERRIDES, enet_reference, w2v2_published_state_dict,
                          w2v2_reference, write_enet_onnx, write_enet_pickle, write_enet_safetensors,
                          write_w2v2_folder)

MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
POS_CONV = "wav2vec2.encoder.pos_conv_embed.conv."


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def one_line_error(excinfo: pytest.ExceptionInfo, path: Path) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """One intra-op thread (as conftest's one_thread): on the shared 2-core machine a second thread
    mostly spins waiting for the first; measured here, single-threaded runs are faster under load."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def crops() -> torch.Tensor:
    """The astronaut's face, tight box, 224x224 bilinear, /255, ImageNet mean/std; and its mirror image."""
    from skimage import data

    face = torch.from_numpy(data.astronaut()[30:230, 150:330].copy()).permute(2, 0, 1)[None].float() / 255
    face = F.interpolate(face, size=(224, 224), mode="bilinear", align_corners=False)
    x = (face - MEAN) / STD
    return torch.cat([x, x.flip(-1)])


@pytest.fixture(scope="module")
def enet(tmp_path_factory, crops: torch.Tensor) -> dict:
    """The synthetic source model, its outputs on the crops and its three published-format files."""
    folder = tmp_path_factory.mktemp("enet")
    net = enet_reference(seed=0)
    with torch.inference_mode():
        feature = net.forward_head(net.forward_features(crops), pre_logits=True)
        logits = net.classifier(feature)
    return {"net": net, "logits": logits, "feature": feature,
            "pt": write_enet_pickle(folder / "enet_b0_8_va_mtl.pt", model=net),
            "onnx": write_enet_onnx(folder / "enet_b0_8_va_mtl.onnx", model=net),
            "safetensors": write_enet_safetensors(folder / "enet_b0_8_va_mtl.safetensors", model=net)}


def assert_matches_source(enc: FaceExpertEncoder, enet: dict, x: torch.Tensor) -> None:
    """The encoder's outputs on the (first) crop are timm's: logits split, valence/arousal clipped."""
    want = enet["logits"][:1]
    with torch.inference_mode():
        got = enc(x[:1])  # one crop: a forward costs ~0.3 CPU-s here
    assert got["expression"].shape == (1, len(EXPRESSIONS)) and got["valence"].shape == (1,)
    assert rel_err(got["expression"], want[:, :8]) < 1e-5
    assert rel_err(got["valence"], want[:, 8].clamp(-1, 1)) < 1e-5
    assert rel_err(got["arousal"], want[:, 9].clamp(-1, 1)) < 1e-5
    assert rel_err(got["feature"], enet["feature"][:1]) < 1e-5


# --- face expert ----------------------------------------------------------------------------------


def test_face_expert_has_the_published_architecture() -> None:
    enc = create_video_encoder(VideoEncoderConfig(name="enet_b0_va"))
    assert isinstance(enc, FaceExpertEncoder) and enc.has_va_head
    sd = enc.net.state_dict()
    assert len(sd) == 360 and sum(p.numel() for p in enc.net.parameters()) == 4_020_358
    assert tuple(sd["classifier.weight"].shape) == (10, 1280) and enc.num_features == 1280
    # The TF port: "same" padding of strided convs, BatchNorm eps 1e-3 (efficientnet_b0: 1e-5).
    assert type(enc.net.conv_stem).__name__ == "Conv2dSame" and enc.net.bn1.eps == pytest.approx(1e-3)
    assert enc.pretrained_cfg == {"input_size": (3, 224, 224), "mean": (0.485, 0.456, 0.406),
                                  "std": (0.229, 0.224, 0.225), "interpolation": "bilinear", "crop_margin": 0.0}
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.net.training  # frozen: BatchNorm statistics stay those of the weights


@pytest.mark.parametrize("fmt", ["pt", "onnx", "safetensors"])
def test_face_expert_loads_each_published_format(fmt: str, enet: dict, crops: torch.Tensor) -> None:
    enc = create_video_encoder(VideoEncoderConfig(name="enet_b0_va", checkpoint=str(enet[fmt])))
    assert_matches_source(enc, enet, crops)
    if fmt == "pt":
        with torch.inference_mode():
            assert rel_err(enc.forward_features(crops[:1]), enet["feature"][:1]) < 1e-5
    sd = convert_face_expert(enet[fmt])
    assert len(sd) == 360 and set(sd) == set(enet["net"].state_dict())
    if fmt != "onnx":  # the ONNX export folds BatchNorm: same outputs, other tensors
        assert all(torch.equal(sd[k], v) for k, v in enet["net"].state_dict().items())


def test_face_expert_reads_pickles_of_older_timm_layouts(tmp_path: Path, enet: dict,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Older saves name other classes (timm.models.layers.*), keep functions as attributes (timm
    0.4.5's SqueezeExcite.gate_fn) and OrderedDicts of submodules; none of that is run or needed."""
    import copy
    import sys
    import types
    from collections import OrderedDict

    from timm.layers.activations import sigmoid
    from timm.layers.conv2d_same import Conv2dSame

    net = copy.deepcopy(enet["net"])
    old = types.ModuleType("timm.models.layers.conv2d_same")
    old.Conv2dSame = Conv2dSame
    monkeypatch.setitem(sys.modules, old.__name__, old)
    monkeypatch.setattr(Conv2dSame, "__module__", old.__name__)
    for m in net.modules():
        for attr in ("_parameters", "_buffers", "_modules"):
            object.__setattr__(m, attr, OrderedDict(getattr(m, attr)))
        if type(m).__name__ == "SqueezeExcite":
            object.__setattr__(m, "gate_fn", sigmoid)
    path = tmp_path / "old_timm.pt"
    torch.save(net, path)
    monkeypatch.undo()
    names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    assert "timm.models.layers.conv2d_same.Conv2dSame" in names and "timm.layers.activations.sigmoid" in names
    sd = convert_face_expert(path)
    assert sd.keys() == net.state_dict().keys() and all(torch.equal(sd[k], v) for k, v in net.state_dict().items())


def test_face_expert_parity_is_not_vacuous(enet: dict, crops: torch.Tensor) -> None:
    """The synthetic weights make the outputs depend on the image, stay mostly inside [-1, 1], and
    tell tf_efficientnet_b0 from efficientnet_b0 (same keys, other padding and eps)."""
    import timm

    plain = timm.create_model("efficientnet_b0", pretrained=False, num_classes=10).eval()
    plain.load_state_dict(enet["net"].state_dict())
    with torch.inference_mode():
        out, other = enet["logits"], plain(crops)
    assert (out[0] - out[1]).abs().max() > 1e-2  # the mirrored face gives other outputs
    assert out[:, 8:].abs().max() < 1  # valence/arousal not clipped: the comparison sees them
    assert rel_err(other, out) > 1e-2


def test_face_expert_onnx_with_batch_norm_nodes(tmp_path: Path, enet: dict, crops: torch.Tensor) -> None:
    path = write_enet_onnx(tmp_path / "unfolded.onnx", model=enet["net"], fold_bn=False)
    enc = FaceExpertEncoder().load_checkpoint(path)
    assert_matches_source(enc, enet, crops)


def test_face_expert_runs_frame_by_frame(enet: dict, crops: torch.Tensor) -> None:
    from avfusion.inference.runner import FrameRunner

    model = create_model("enet_b0_8_va_mtl", video={"checkpoint": str(enet["safetensors"])}).eval()
    assert model.fusion is None and model.serving.face_margin == 0.0 and model.serving.crop_size == 224
    want = enet["logits"].clamp(-1, 1)
    with torch.inference_mode():
        out = model(video=crops[None])  # (B=1, T=2, 3, 224, 224)
    assert rel_err(out["valence"][0], want[:, 8]) < 1e-5 and rel_err(out["arousal"][0], want[:, 9]) < 1e-5
    res = FrameRunner(model, precision="fp32", device="cpu")(crops)
    assert np.allclose(res["va"], want[:, 8:].numpy(), rtol=1e-5, atol=1e-6)
    assert res["expression"].shape == (2, 8) and np.allclose(res["expression"].sum(1), 1, atol=1e-5)


def test_face_expert_wrong_files_are_one_line_errors(tmp_path: Path, enet: dict) -> None:
    import onnx

    def fails(path: Path, match: str) -> None:
        with pytest.raises(ValueError) as e:
            convert_face_expert(path)
        assert match in one_line_error(e, path)
        with pytest.raises(ValueError) as e:  # the encoder's loader says the same
            FaceExpertEncoder().load_checkpoint(path)
        one_line_error(e, path)

    for fmt in ("pt", "onnx", "safetensors"):
        data = enet[fmt].read_bytes()
        cut = tmp_path / f"truncated{enet[fmt].suffix}"
        cut.write_bytes(data[: len(data) // 2])
        fails(cut, "")
    sd = dict(enet["net"].state_dict())
    sd["classifier.weight"] = sd["classifier.weight"][:8]
    sd["head.fc.bias"] = sd.pop("classifier.bias")
    torch.save(sd, tmp_path / "wrong_keys.pth")
    fails(tmp_path / "wrong_keys.pth", "does not fit tf_efficientnet_b0")
    torch.save(nn.Sequential(nn.Linear(2, 2)), tmp_path / "other_model.pt")
    fails(tmp_path / "other_model.pt", "not a timm EfficientNet")
    (tmp_path / "notes.pt").write_text("not weights")
    fails(tmp_path / "notes.pt", "not a face expert weight file")
    # plain efficientnet_b0's export: symmetric padding of the stride-2 stem, no Pad node before it
    graph = onnx.load(str(enet["onnx"]))
    stem = next(n for n in graph.graph.node if n.op_type == "Conv")
    pad = next(n for n in graph.graph.node if n.output[0] == stem.input[0])
    stem.input[0] = pad.input[0]
    next(a for a in stem.attribute if a.name == "pads").ints[:] = [1, 1, 1, 1]
    onnx.save(graph, str(tmp_path / "plain_b0.onnx"))
    fails(tmp_path / "plain_b0.onnx", "looks like efficientnet_b0")
    with pytest.raises(FileNotFoundError):
        convert_face_expert(tmp_path / "missing.pt")


# --- voice expert ---------------------------------------------------------------------------------


def waves(n_samples: int = 16000) -> torch.Tensor:
    """Two 1 s 16 kHz rows: noise, and a 220 Hz tone with a little noise (different loudness)."""
    g = torch.Generator().manual_seed(7)
    t = torch.arange(n_samples) / 16000
    return torch.stack([0.1 * torch.randn(n_samples, generator=g),
                        0.3 * torch.sin(2 * torch.pi * 220 * t) + 0.01 * torch.randn(n_samples, generator=g)])


def independent_outputs(wav2vec2: nn.Module, head: dict, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model card's computation written out: per-row normalisation, last_hidden_state averaged
    over time, dense -> tanh -> out_proj. Returns (last_hidden_state, outputs (B, 3))."""
    x = wave.double()
    x = ((x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, unbiased=False, keepdim=True) + 1e-7)).float()
    with torch.inference_mode():
        hidden = wav2vec2(x).last_hidden_state
        h = torch.tanh(hidden.mean(1) @ head["dense.weight"].T + head["dense.bias"])
        return hidden, h @ head["out_proj.weight"].T + head["out_proj.bias"]


def head_of(ref: nn.Module) -> dict:
    return {k: v.detach() for k, v in ref.classifier.state_dict().items()}


def utterance_matrix(enc: VoiceExpertEncoder, wave: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    with torch.inference_mode():
        out = enc.utterance(wave, mask)
    return torch.stack([out[k] for k in OUTPUTS], -1)


def test_voice_expert_full_size_matches_an_independent_forward(tmp_path: Path) -> None:
    ref = w2v2_reference(seed=0)
    assert sum(p.numel() for p in ref.parameters()) == 165_336_707  # published: 165.3 M
    wave = waves(8000)  # 0.5 s: the full-size network's cost is in its width, not in the audio's length
    hidden, want = independent_outputs(ref.wav2vec2, head_of(ref), wave)
    folder = write_w2v2_folder(tmp_path / "msp_dim", weight_norm="old", fmt="safetensors", reference=ref)
    del ref
    cfg = get_model_config("w2v2_msp_dim").audio  # the shipped config, pointed at the folder
    cfg.path = str(folder)
    enc = create_audio_encoder(cfg)
    assert isinstance(enc, VoiceExpertEncoder) and enc.num_features == 1024
    with torch.inference_mode():
        out = enc.utterance(wave)
    got = torch.stack([out[k] for k in OUTPUTS], -1)
    assert rel_err(got, want) < 1e-5 and (want[0] - want[1]).abs().max() > 1e-3
    # The embedding is last_hidden_state (after the final LayerNorm) averaged over the 24 frames;
    # the features at the video frames are tested on the tiny model.
    assert hidden.shape == (2, 24, 1024) and rel_err(out["pooled"], hidden.mean(1)) < 1e-5


@pytest.fixture(scope="module")
def tiny_ref() -> nn.Module:
    return w2v2_reference(seed=1, tiny=True)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("weight_norm", ["old", "new"])
def test_voice_expert_loads_each_published_folder(fmt: str, weight_norm: str, tiny_ref: nn.Module,
                                                  tmp_path: Path) -> None:
    folder = write_w2v2_folder(tmp_path / "src", fmt=fmt, weight_norm=weight_norm, tiny=True, reference=tiny_ref)
    wave = waves()
    hidden, want = independent_outputs(tiny_ref.wav2vec2, head_of(tiny_ref), wave)
    enc = VoiceExpertEncoder.from_pretrained(folder)
    assert rel_err(utterance_matrix(enc, wave), want) < 1e-5
    with torch.inference_mode():
        feats, n_valid = enc.hidden_states(wave)
    assert rel_err(feats, hidden) < 1e-5 and n_valid.tolist() == [49, 49]

    # One canonical naming whatever the file had; written back as config.json + model.safetensors
    # (what `avfusion download` does), it loads to the same model.
    hf_config, sd = convert_voice_expert(folder)
    assert hf_config == json.loads((folder / "config.json").read_text())
    assert POS_CONV + "parametrizations.weight.original0" in sd and POS_CONV + "weight_g" not in sd
    assert "wav2vec2.masked_spec_embed" in sd and all(v.dtype == torch.float32 for v in sd.values())
    from safetensors.torch import save_file

    out = tmp_path / "converted"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(hf_config))
    save_file(sd, str(out / "model.safetensors"))
    assert rel_err(utterance_matrix(VoiceExpertEncoder.from_pretrained(out), wave), want) < 1e-5


def test_voice_expert_padded_rows_match_rows_alone(tiny_ref: nn.Module, tmp_path: Path) -> None:
    enc = VoiceExpertEncoder.from_pretrained(write_w2v2_folder(tmp_path, tiny=True, reference=tiny_ref))
    wave = waves()
    mask = torch.ones_like(wave, dtype=torch.bool)
    mask[1, 9000:] = False
    both = utterance_matrix(enc, wave, mask)
    assert rel_err(both[1], utterance_matrix(enc, wave[1:, :9000])[0]) < 1e-5
    assert rel_err(both[0], utterance_matrix(enc, wave[:1])[0]) < 1e-5


def test_voice_expert_layers_and_export_config(tiny_ref: nn.Module, tmp_path: Path) -> None:
    folder = write_w2v2_folder(tmp_path, tiny=True, reference=tiny_ref)
    wave, times = waves(8000), torch.arange(12.0)[None].repeat(2, 1) / 25
    states = {}
    for layer in ("output", -1, 0, "weighted"):
        enc = VoiceExpertEncoder.from_pretrained(folder, layer=layer)
        with torch.no_grad():
            states[layer] = enc.forward_features(wave, times)
        assert states[layer].shape == (2, 12, 32)
    assert not torch.allclose(states["output"], states[-1])  # -1: before the final LayerNorm
    assert [n for n, p in enc.named_parameters() if p.requires_grad] == ["layer_weights"]
    # The export path rebuilds the architecture from hf_config_dict over the published defaults.
    rebuilt = VoiceExpertEncoder.from_config(AudioEncoderConfig(name="w2v2_msp_dim", layer="weighted",
                                                                hf_config=enc.hf_config_dict()))
    assert rebuilt.state_dict().keys() == enc.state_dict().keys()
    assert all(rebuilt.state_dict()[k].shape == v.shape for k, v in enc.state_dict().items())
    rebuilt.load_published(w2v2_published_state_dict(tiny_ref, "new"))
    assert torch.allclose(utterance_matrix(rebuilt, wave), utterance_matrix(enc, wave), atol=1e-6)


def test_voice_expert_wrong_files_are_one_line_errors(tiny_ref: nn.Module, tmp_path: Path) -> None:
    def fails(folder: Path, named: Path, match: str = "") -> None:
        with pytest.raises(ValueError) as e:
            VoiceExpertEncoder.from_pretrained(folder)
        assert match in one_line_error(e, named)

    for fmt in ("safetensors", "bin"):
        folder = write_w2v2_folder(tmp_path / f"cut_{fmt}", fmt=fmt, tiny=True, reference=tiny_ref)
        weights = next(p for p in folder.iterdir() if p.stem in ("model", "pytorch_model"))
        weights.write_bytes(weights.read_bytes()[:5000])
        fails(folder, weights)
    folder = write_w2v2_folder(tmp_path / "keys", fmt="bin", tiny=True, reference=tiny_ref)
    sd = w2v2_published_state_dict(tiny_ref)
    del sd["wav2vec2.encoder.layers.1.final_layer_norm.weight"]
    torch.save(sd, folder / "pytorch_model.bin")
    fails(folder, folder / "pytorch_model.bin", "final_layer_norm.weight")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["id2label"] = {"0": "valence", "1": "arousal", "2": "dominance"}
    (folder / "config.json").write_text(json.dumps(cfg))
    fails(folder, folder / "config.json", "published order")
    (folder / "config.json").write_text("{not json")
    fails(folder, folder / "config.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        convert_voice_expert(empty)
    (empty / "config.json").write_text(json.dumps(cfg | {"id2label": None}))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        convert_voice_expert(empty)


# --- the shipped model configs --------------------------------------------------------------------


def test_expert_model_configs() -> None:
    face = get_model_config("enet_b0_8_va_mtl")
    assert face.mode == "video" and face.fusion is None and face.audio is None
    assert face.video.name == "enet_b0_va" and face.serving.face_margin == 0.0
    voice = get_model_config("w2v2_msp_dim")
    assert voice.mode == "audio" and voice.fusion is None and voice.video is None
    assert voice.audio.name == "w2v2_msp_dim" and voice.audio.layer == "output"
    # The YAML, the encoder's defaults and the independent transcription of the published
    # config.json in tests/expert_files.py agree on the architecture.
    assert msp_dim_hf_config(voice.audio.hf_config) == MSP_DIM_CONFIG
    assert {k: W2V2_MSP_DIM_CONFIG[k] for k in MSP_DIM_CONFIG} == MSP_DIM_CONFIG
    model = create_model("w2v2_msp_dim", audio={"hf_config": W2V2_TINY_OVERRIDES})
    assert isinstance(model.audio_encoder, VoiceExpertEncoder) and model.audio_encoder.num_features == 32
