"""EmoNet: official layout, parity with the official outputs, checkpoint loading, encoder options.

The reference figures (tests/fixtures/emonet_reference.json) come from the official implementation
run on deterministic synthetic weights; the test rebuilds those weights from the recipe.
"""
from __future__ import annotations


from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from avfusion.config import VideoEncoderConfig
from avfusion.encoders import create_video_encoder
from avfusion.encoders.emonet import EmoNet, EmoNetEncoder, optimize_for_inference
from avfusion.encoders.emonet import emonet_filter_state_dict, load_emonet_checkpoint

from conftest import EMONET_REFERENCE as REFERENCE, synthetic_state_dict  # noqa: E402
MODELS = {"emonet_8": 8, "emonet_5": 5}
# The fixture's numbers come from float32 on the CPU; the issue asks for relative 1e-4.
PARITY_RTOL = 1e-4
# bf16 keeps ~3 significant digits per op; through ~100 conv layers on (untrained) synthetic
# weights the outputs drift by ~1-2 % of their largest magnitude on this face.
BF16_RTOL = 0.05




def layout_of(model: nn.Module) -> list:
    return [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]


@pytest.fixture(scope="module")
def face() -> torch.Tensor:
    """The fixture's input recipe: astronaut face crop, (1, 3, 256, 256) in [0, 1]."""
    from skimage import data

    img = data.astronaut()[20:220, 140:320]
    img = cv2.resize(img, (256, 256), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(img.astype(np.float32) / 255).permute(2, 0, 1)[None].contiguous()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Synthetic weights saved as the official files are: plain state dicts, keys ``module.*``."""
    folder = tmp_path_factory.mktemp("emonet")
    paths = {}
    for name in MODELS:
        paths[name] = folder / f"{name}.pth"
        torch.save(synthetic_state_dict(REFERENCE["models"][name]["state_dict"], "module."), paths[name])
    return paths


@pytest.fixture(scope="module")
def encoder8(checkpoints: dict[str, Path]) -> EmoNetEncoder:
    return EmoNetEncoder.from_config(VideoEncoderConfig(name="emonet", n_expression=8, checkpoint=str(checkpoints["emonet_8"])))


@pytest.mark.parametrize("name", list(MODELS))
def test_state_dict_layout_is_official(name: str) -> None:
    model = EmoNet(num_modules=2, n_expression=MODELS[name], n_reg=2, n_blocks=4, attention=True)
    assert layout_of(model) == REFERENCE["models"][name]["state_dict"]


@pytest.mark.parametrize("name", list(MODELS))
def test_reproduces_official_outputs(
    name: str, face: torch.Tensor, checkpoints: dict[str, Path], encoder8: EmoNetEncoder
) -> None:
    if name == "emonet_8":
        encoder = encoder8
    else:  # through the factory, as a config names it
        cfg = VideoEncoderConfig(name="emonet", n_expression=5, checkpoint=str(checkpoints[name]))
        encoder = create_video_encoder(cfg)
    ref = REFERENCE["models"][name]["outputs"]
    with torch.no_grad():
        out = encoder(face)

    def close(actual: torch.Tensor, expected: list | float) -> None:
        expected_t = torch.tensor(expected, dtype=torch.float64)
        rel = ((actual.double() - expected_t).abs() / expected_t.abs()).max().item()
        assert rel <= PARITY_RTOL, f"relative error {rel:.2e}: {actual.tolist()} vs {expected}"

    close(out["valence"][0], ref["valence"])
    close(out["arousal"][0], ref["arousal"])
    close(out["expression"][0], ref["expression"])
    heatmap = out["heatmap"]
    assert list(heatmap.shape) == ref["heatmap_shape"]
    assert heatmap.flatten(2).argmax(-1)[0].tolist() == ref["heatmap_argmax_per_landmark"]
    assert heatmap.double().sum().item() == pytest.approx(ref["heatmap_sum"], rel=PARITY_RTOL)
    assert heatmap.double().abs().mean().item() == pytest.approx(ref["heatmap_abs_mean"], rel=PARITY_RTOL)
    assert out["feature"].shape == (1, 256)
    assert torch.equal(encoder.forward_features(face), out["feature"])


def test_filter_strips_only_a_leading_module_prefix() -> None:
    t = torch.zeros(1)
    sd = {"state_dict": {"module.conv1.weight": t, "module.m0.module.x": t, "bn1.bias": t}}
    assert list(emonet_filter_state_dict(sd)) == ["conv1.weight", "m0.module.x", "bn1.bias"]
    with pytest.raises(ValueError, match="both with and without"):
        emonet_filter_state_dict({"module.a": t, "a": t})


def test_loading_errors_name_the_file_and_the_problem(tmp_path: Path) -> None:
    model = EmoNet(width=32)
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_emonet_checkpoint(model, missing)

    garbage = tmp_path / "garbage.pth"
    garbage.write_text("this is not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth"):
        load_emonet_checkpoint(model, garbage)

    wrong_classes = tmp_path / "five.pth"
    torch.save({"module." + k: v for k, v in EmoNet(width=32, n_expression=5).state_dict().items()}, wrong_classes)
    with pytest.raises(ValueError, match=r"five.pth.*emo_fc_2.3.weight.*n_expression=5"):
        load_emonet_checkpoint(model, wrong_classes)

    truncated = tmp_path / "truncated.pth"
    sd = {"module." + k: v for k, v in model.state_dict().items() if not k.startswith("emo_fc_2")}
    sd["module.extra.weight"] = torch.zeros(1)
    torch.save(sd, truncated)
    with pytest.raises(ValueError, match=r"truncated.pth.*missing key\(s\): emo_fc_2.0.weight.*unexpected key\(s\): extra.weight"):
        load_emonet_checkpoint(model, truncated)


def test_frozen_encoder_gets_no_gradients_and_stays_in_eval() -> None:
    torch.manual_seed(0)
    encoder = EmoNetEncoder(width=32, frozen=True)
    head = nn.Linear(encoder.num_features, 2)
    parent = nn.ModuleDict({"encoder": encoder, "head": head}).train()
    assert not any(m.training for m in encoder.modules())
    x = torch.rand(2, 3, 64, 64)
    head(encoder.forward_features(x)).sum().backward()
    assert all(not p.requires_grad and p.grad is None for p in encoder.parameters())
    assert head.weight.grad is not None
    assert parent.training


def test_frozen_trunk_trains_only_the_emotion_head() -> None:
    torch.manual_seed(0)
    encoder = EmoNetEncoder(width=32, frozen=False, freeze_trunk=True).train()
    fan = {id(p) for m in encoder.net.fan_modules() for p in m.parameters()}
    assert not any(m.training for fan_m in encoder.net.fan_modules() for m in fan_m.modules())
    assert encoder.net.emo_net_2.training and encoder.net.emo_fc_2.training
    out = encoder(torch.rand(2, 3, 64, 64))
    (out["feature"].sum() + out["valence"].sum() + out["arousal"].sum() + out["expression"].sum()).backward()
    for p in encoder.parameters():
        assert (p.grad is None) == (id(p) in fan)


def test_flip_average_matches_the_mirrored_mean() -> None:
    torch.manual_seed(0)
    plain = EmoNetEncoder(width=32, flip_average=False).eval()
    flipped = EmoNetEncoder(width=32, flip_average=True).eval()
    flipped.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b, out = plain(x), plain(x.flip(-1)), flipped(x)
        mirrored = flipped(x.flip(-1))
    for key in ("expression", "valence", "arousal", "feature"):
        torch.testing.assert_close(out[key], 0.5 * (a[key] + b[key]))
        torch.testing.assert_close(mirrored[key], out[key], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["heatmap"], a["heatmap"])


def test_tiny_width_runs_through_the_factory() -> None:
    encoder = create_video_encoder(VideoEncoderConfig(name="emonet", width=32, n_expression=5))
    assert encoder.num_features == 32
    assert encoder.pretrained_cfg["input_size"] == (3, 256, 256)
    assert encoder.pretrained_cfg["mean"] == (0.0, 0.0, 0.0) and encoder.pretrained_cfg["std"] == (1.0, 1.0, 1.0)
    with torch.no_grad():
        out = encoder(torch.rand(3, 3, 64, 64))
    assert out["heatmap"].shape == (3, 68, 16, 16)
    assert out["expression"].shape == (3, 5)
    assert out["valence"].shape == out["arousal"].shape == (3,)
    assert out["feature"].shape == (3, 32)
    with pytest.raises(ValueError, match="multiple of 16"):
        EmoNet(width=40)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        encoder(torch.rand(3, 64, 64))


def test_bf16_fast_path_agrees_with_float32(face: torch.Tensor, encoder8: EmoNetEncoder) -> None:
    with torch.no_grad():
        ref = encoder8(face)
    fast = optimize_for_inference(encoder8, dtype=torch.bfloat16, channels_last=True)
    assert next(fast.module.parameters()).dtype == torch.bfloat16
    assert next(encoder8.parameters()).dtype == torch.float32  # the original is untouched
    out = fast(face)
    ref_vec = torch.cat([ref["valence"], ref["arousal"], ref["expression"][0]])
    out_vec = torch.cat([out["valence"], out["arousal"], out["expression"][0]])
    assert out_vec.dtype == torch.float32
    deviation = ((out_vec - ref_vec).abs().max() / ref_vec.abs().max()).item()
    assert deviation < BF16_RTOL, f"bf16 deviates by {deviation:.3%} of the largest output"
    agree = (out["heatmap"].flatten(2).argmax(-1) == ref["heatmap"].flatten(2).argmax(-1)).float().mean().item()
    assert agree >= 0.8, f"only {agree:.0%} of the landmark argmaxes agree"


def test_fast_path_float32_channels_last_matches_eager() -> None:
    torch.manual_seed(0)
    encoder = EmoNetEncoder(width=32, flip_average=True)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = encoder(x)
    out = optimize_for_inference(encoder, dtype=None, channels_last=True)(x.double())
    for key, value in ref.items():
        torch.testing.assert_close(out[key], value, rtol=1e-4, atol=1e-4)
