"""wav2vec2 audio encoder: 50 Hz features land on the video frame times; layers, freezing, folders."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import Wav2Vec2Config, Wav2Vec2Model

from avfusion.config import AudioEncoderConfig
from avfusion.encoders import create_audio_encoder
from avfusion.encoders.wav2vec2 import Wav2Vec2Encoder
from avfusion.timing import (
    CONV_KERNEL,
    CONV_STRIDE,
    conv_geometry,
    conv_output_length,
    feature_times,
    frame_centres,
    frame_times_from_fps,
    resample_to_frames,
    sample_features_at,
)

# Tiny, with the standard conv kernels and strides so the hop stays 320 samples.
TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(32,) * 7,
    conv_kernel=CONV_KERNEL,
    conv_stride=CONV_STRIDE,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
)
FPS = [25.0, 30000 / 1001, 30.0]


def make(layer: int | str = -1, frozen: bool = True, **hf) -> Wav2Vec2Encoder:
    torch.manual_seed(0)
    return create_audio_encoder(AudioEncoderConfig(hf_config={**TINY, **hf}, layer=layer, frozen=frozen))


def normalised(wave: torch.Tensor) -> torch.Tensor:
    mean = wave.mean(1, keepdim=True)
    return (wave - mean) / torch.sqrt(wave.var(1, unbiased=False, keepdim=True) + 1e-7)


def test_conv_geometry_and_feature_times() -> None:
    assert conv_geometry(CONV_KERNEL, CONV_STRIDE) == (320, 400)
    assert torch.allclose(feature_times(3), torch.tensor([0.0125, 0.0325, 0.0525], dtype=torch.float64))
    encoder = make()
    for n_samples in (400, 16000, 16319, 16320, 33333):
        feats, n_valid = encoder.hidden_states(torch.randn(1, n_samples))
        assert feats.shape[1] == n_valid.item() == conv_output_length(n_samples, CONV_KERNEL, CONV_STRIDE)
    assert conv_output_length(16000, CONV_KERNEL, CONV_STRIDE) == 49  # (16000 - 400) // 320 + 1


@pytest.mark.parametrize("fps", FPS)
def test_frame_times_from_fps(fps: float) -> None:
    n = math.floor(2.0 * fps)  # frames in 2 s: 50, 59, 60
    times = frame_times_from_fps(n, fps)
    assert times.shape == (n,) and times.dtype == torch.float64
    assert times[0].item() == 0.0  # frame k starts at k / fps
    assert times[-1].item() == pytest.approx((n - 1) / fps, abs=1e-12)
    assert torch.allclose(times.diff(), torch.full((n - 1,), 1 / fps, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(frame_times_from_fps(n, fps, start=1.5), times + 1.5, atol=1e-12)
    assert torch.allclose(frame_centres(times), times + 0.5 / fps, atol=1e-12)


@pytest.mark.parametrize("fps", FPS)
def test_resampled_time_of_every_frame(fps: float) -> None:
    """Features whose values are their own time, resampled: every frame gets exactly its centre time."""
    n_feat = 150  # 3 s at 50 Hz
    t = feature_times(n_feat)
    feats = torch.stack([t, 2 * t + 1], dim=-1)  # (N, 2), float64
    n_frames = math.floor(3.0 * fps) + 3  # every frame of the 3 s, plus three past the end
    out = resample_to_frames(feats, fps=fps, n_frames=n_frames)
    assert out.shape == (n_frames, 2)
    centres = (torch.arange(n_frames, dtype=torch.float64) + 0.5) / fps
    expected = centres.clamp(t[0].item(), t[-1].item())  # held at the ends
    assert torch.allclose(out[:, 0], expected, atol=1e-9)
    assert torch.allclose(out[:, 1], 2 * expected + 1, atol=1e-9)
    inside = (centres >= t[0]) & (centres <= t[-1])
    assert inside.sum() >= math.floor(3.0 * fps) - 1  # only the very edge may need clamping
    assert torch.equal(out[~inside][-1], feats[-1])
    # The same from the frames' start times, as the data pipeline's batches carry them.
    starts = frame_times_from_fps(n_frames, fps).float()
    assert torch.allclose(resample_to_frames(feats, starts)[:, 0], expected, atol=1e-6)


def test_explicit_timestamps_and_clamping() -> None:
    t = feature_times(50)
    feats = t[:, None]
    starts = [0.0, 0.04, 0.07, 0.12, 0.2]  # variable frame rate; the last frame lasts 0.08 like the one before
    centres = torch.tensor([0.02, 0.055, 0.095, 0.16, 0.24], dtype=torch.float64)
    assert torch.allclose(frame_centres(starts), centres, atol=1e-12)
    assert torch.allclose(resample_to_frames(feats, starts)[:, 0], centres, atol=1e-12)
    batched = resample_to_frames(feats[None].expand(2, -1, -1), torch.tensor(starts)[None].expand(2, -1))
    assert batched.shape == (2, 5, 1) and torch.allclose(batched[..., 0], centres.expand(2, -1), atol=1e-6)

    clamped = sample_features_at(feats[None], torch.tensor([[-0.1, 0.005, 0.5, 10.0]]))[0, :, 0]
    assert torch.allclose(clamped, torch.tensor([t[0], t[0], 0.5, t[-1]], dtype=torch.float64), atol=1e-12)
    # n_valid: past a row's last real feature frame, that frame is held (padding is never read).
    short = sample_features_at(feats[None], torch.tensor([[0.3, 0.9]]), n_valid=20)[0, :, 0]
    assert torch.allclose(short, torch.tensor([0.3, t[19]], dtype=torch.float64), atol=1e-12)

    # Padding with NaN or repeated times takes the row's median period; one frame needs fps.
    ragged = torch.tensor([[0.0, 0.04, 0.08, float("nan")], [0.0, 0.04, 0.08, 0.08]])
    assert torch.allclose(frame_centres(ragged)[:, :3], torch.tensor([0.02, 0.06, 0.1], dtype=torch.float64), atol=1e-9)
    assert frame_centres([1.0], fps=25).item() == pytest.approx(1.02)
    with pytest.warns(UserWarning, match="one frame"):
        assert frame_centres([1.0]).item() == 1.0
    with pytest.raises(ValueError, match="exactly one"):
        resample_to_frames(feats, starts, fps=25.0, n_frames=3)


@pytest.mark.parametrize("fps", FPS)
def test_encoder_output_frames_at_frame_times(fps: float) -> None:
    """forward_features on a padded batch: T frames, each the interpolation at its centre time."""
    encoder = make()
    torch.manual_seed(1)
    lengths = [24000, 14000]  # 1.5 s and 0.875 s of audio, zero padded to 1.5 s
    wave = torch.randn(2, 24000) * 0.1
    mask = torch.arange(24000)[None] < torch.tensor(lengths)[:, None]
    n_frames = math.floor(1.5 * fps)
    frame_times = frame_times_from_fps(n_frames, fps).float().expand(2, -1)  # start times, as batches carry
    out = encoder.forward_features(wave * mask, frame_times, mask)
    assert out.shape == (2, n_frames, 32)

    feats, n_valid = encoder.hidden_states(wave * mask, mask)
    assert n_valid.tolist() == [(n - 400) // 320 + 1 for n in lengths]
    for row in range(2):
        for k in range(n_frames):
            pos = ((k + 0.5) / fps - 0.0125) / 0.02  # frame centre; wav2vec2 frame j sits at 0.02 j + 0.0125 s
            pos = min(max(pos, 0.0), n_valid[row].item() - 1)
            j, w = int(pos), pos - int(pos)
            nxt = min(j + 1, n_valid[row].item() - 1)
            expected = feats[row, j] * (1 - w) + feats[row, nxt] * w
            assert torch.allclose(out[row, k], expected, atol=1e-5), (row, k)


def test_padding_does_not_change_features_with_attention_mask() -> None:
    """Layer-norm feature encoders take the mask: a row's features ignore what lies past its end."""
    encoder = make(feat_extract_norm="layer", do_stable_layer_norm=True)
    assert encoder.use_attention_mask
    torch.manual_seed(2)
    clip = torch.randn(1, 8000) * 0.1
    times = frame_times_from_fps(12, 25.0).float()[None]  # 0.48 s, inside the clip's 0.5 s
    alone = encoder.forward_features(clip, times)
    padded = torch.cat([clip, torch.randn(1, 8000)], dim=1)  # junk (not zeros) after the end
    mask = torch.arange(16000)[None] < 8000
    batched = encoder.forward_features(padded, times, mask)
    assert torch.allclose(alone, batched, atol=1e-4)

    # A row without audio and padded frames with NaN times: finite features, no crash.
    empty = torch.zeros(2, 16000, dtype=torch.bool)
    empty[0, :8000] = True
    nan_times = torch.cat([times, torch.full((1, 2), float("nan"))], dim=1).expand(2, -1)
    out = encoder.forward_features(padded.expand(2, -1), nan_times, empty)
    assert out.shape == (2, 14, 32) and torch.isfinite(out).all()
    assert torch.allclose(out[0, :12], alone[0], atol=1e-4)


def test_layer_choice_and_weighted_sum() -> None:
    torch.manual_seed(3)
    wave = torch.randn(2, 16000) * 0.1
    times = (feature_times(49) - 0.01).float().expand(2, -1)  # 50 fps frames centred on the feature frames
    model = make().model
    with torch.no_grad():
        states = model(normalised(wave), output_hidden_states=True).hidden_states
    assert len(states) == 3

    outputs = {}
    for layer in (0, 1, 2, -1):
        outputs[layer] = make(layer=layer).forward_features(wave, times)
        assert torch.allclose(outputs[layer], states[layer], atol=1e-5), layer
    assert not torch.allclose(outputs[0], outputs[2], atol=1e-3)

    weighted = make(layer="weighted")
    with torch.no_grad():
        weighted.layer_weights.copy_(torch.tensor([1.0, -0.5, 2.0]))
    p = torch.softmax(torch.tensor([1.0, -0.5, 2.0]), 0)
    expected = p[0] * outputs[0] + p[1] * outputs[1] + p[2] * outputs[2]
    assert torch.allclose(weighted.forward_features(wave, times), expected, atol=1e-5)

    with pytest.raises(ValueError, match="layer"):
        make(layer=3)
    with pytest.raises(ValueError, match="layer"):
        make(layer="last")


def test_frozen_no_grads_stays_eval_weights_trainable() -> None:
    # SpecAugment on (mask_time_prob 0.5): only eval() keeps the features deterministic.
    encoder = make(layer="weighted", frozen=True, mask_time_prob=0.5, mask_time_length=2)
    parent = torch.nn.ModuleDict({"audio": encoder, "head": torch.nn.Linear(32, 2)})
    parent.train()
    assert not encoder.model.training and not any(m.training for m in encoder.model.modules())
    assert not any(p.requires_grad for p in encoder.model.parameters())
    assert encoder.layer_weights.requires_grad

    wave = torch.randn(2, 16000) * 0.1
    times = frame_times_from_fps(25, 25.0).float().expand(2, -1)
    first = encoder.forward_features(wave, times)
    assert torch.equal(first, encoder.forward_features(wave, times))
    parent["head"](first).sum().backward()
    assert all(p.grad is None for p in encoder.model.parameters())
    assert encoder.layer_weights.grad is not None and encoder.layer_weights.grad.abs().sum() > 0

    # The same encoder unfrozen in train mode really does mask (so the check above can fail).
    live = make(layer=-1, frozen=False, mask_time_prob=0.5, mask_time_length=2)
    live.train()
    assert live.model.training
    torch.manual_seed(4)
    a = live.forward_features(wave, times)
    b = live.forward_features(wave, times)
    assert not torch.allclose(a, b)
    a.sum().backward()
    assert live.model.feature_projection.projection.weight.grad is not None


def test_from_pretrained_folder_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(5)
    source = Wav2Vec2Model(Wav2Vec2Config(**TINY))
    folder = tmp_path / "wav2vec2-tiny"
    source.save_pretrained(folder)
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()

    encoder = create_audio_encoder(AudioEncoderConfig(path=str(folder), layer=1))
    for (name, p), q in zip(source.state_dict().items(), encoder.model.state_dict().values()):
        assert torch.equal(p, q), name
    assert encoder.num_features == 32 and encoder.normalize and not encoder.use_attention_mask

    wave = torch.randn(1, 16000) * 0.1
    times = (feature_times(49) - 0.01).float()[None]  # 50 fps frames centred on the feature frames
    source.eval()
    with torch.no_grad():
        expected = source(normalised(wave), output_hidden_states=True).hidden_states[1]
    assert torch.allclose(encoder.forward_features(wave, times), expected, atol=1e-5)

    # The folder's preprocessor_config.json decides normalisation and the attention mask.
    (folder / "preprocessor_config.json").write_text(json.dumps({"do_normalize": False, "return_attention_mask": True}))
    configured = Wav2Vec2Encoder.from_pretrained(folder)
    assert not configured.normalize and configured.use_attention_mask

    with pytest.raises(FileNotFoundError, match="no config.json"):
        Wav2Vec2Encoder.from_pretrained(tmp_path / "nowhere")
    # Weights that do not cover the architecture are an error, not a silent random init.
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(ValueError, match=r"wav2vec2-tiny: weights do not fit .*encoder\.layers\.2"):
        Wav2Vec2Encoder.from_pretrained(folder)
