"""Fusion model: modes, masks, missing modalities, export round trip (cached-feature encoders)."""
import pytest
import torch

from avfusion import create_model, from_pretrained, save_pretrained
from avfusion.config import ModelConfig, FusionConfig, VideoEncoderConfig, AudioEncoderConfig

TINY_FUSION = {"d_model": 32, "n_layers": 2, "n_heads": 2, "dropout": 0.0, "max_len": 64}


def feature_model(mode: str, **fusion) -> torch.nn.Module:
    cfg = ModelConfig(
        mode=mode,
        video=VideoEncoderConfig(name="features", dim=12),
        audio=AudioEncoderConfig(name="features", dim=10),
        fusion=FusionConfig(**{**TINY_FUSION, **fusion}),
    )
    return create_model(cfg)


def feats(B=3, T=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, 12, generator=g), torch.randn(B, T, 10, generator=g)


@pytest.mark.parametrize("mode", ["av", "video", "audio"])
def test_modes_forward_backward(mode):
    torch.manual_seed(0)
    model = feature_model(mode)
    v, a = feats()
    mask = torch.ones(3, 8, dtype=torch.bool)
    mask[1, 5:] = False
    out = model(video_feats=v, audio_feats=a, mask=mask)
    assert out["valence"].shape == (3, 8) and out["arousal"].shape == (3, 8)
    assert out["valence"].abs().max() <= 1 and torch.isfinite(out["arousal"]).all()
    (out["valence"].sum() + out["arousal"].sum()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_padding_does_not_change_real_frames():
    torch.manual_seed(0)
    model = feature_model("av").eval()
    v, a = feats(B=1, T=8)
    mask = torch.ones(1, 8, dtype=torch.bool)
    mask[0, 6:] = False
    full = model(video_feats=v, audio_feats=a, mask=mask)
    v2, a2 = v.clone(), a.clone()
    v2[0, 6:] = 1e3  # garbage in the padding must not leak into real frames
    a2[0, 6:] = -1e3
    out = model(video_feats=v2, audio_feats=a2, mask=mask)
    torch.testing.assert_close(out["valence"][0, :6], full["valence"][0, :6])


def test_missing_faces_and_audio_are_masked_not_read():
    torch.manual_seed(0)
    model = feature_model("av").eval()
    v, a = feats(B=2, T=8)
    face = torch.ones(2, 8, dtype=torch.bool)
    face[0, 2:4] = False
    has_audio = torch.tensor([True, False])
    ref = model(video_feats=v, audio_feats=a, face_mask=face, audio_valid=has_audio)
    v2, a2 = v.clone(), a.clone()
    v2[0, 2:4] = 99.0   # a frame without a face: whatever is in its feature slot is ignored
    a2[1] = 42.0         # a clip without audio: its audio features are ignored
    out = model(video_feats=v2, audio_feats=a2, face_mask=face, audio_valid=has_audio)
    torch.testing.assert_close(out["valence"], ref["valence"])
    torch.testing.assert_close(out["arousal"], ref["arousal"])


def test_clip_without_any_face_in_video_mode_is_finite():
    model = feature_model("video").eval()
    v, _ = feats(B=1, T=8)
    out = model(video_feats=v, face_mask=torch.zeros(1, 8, dtype=torch.bool))
    assert torch.isfinite(out["valence"]).all()


def test_modality_dropout_only_in_training():
    torch.manual_seed(0)
    model = feature_model("av", modality_dropout=1.0)
    v, a = feats(B=4, T=8)
    model.eval()
    e1 = model(video_feats=v, audio_feats=a)["valence"]
    e2 = model(video_feats=v, audio_feats=a)["valence"]
    torch.testing.assert_close(e1, e2)
    model.train()
    g = torch.Generator().manual_seed(1)
    t = model(video_feats=v, audio_feats=a, generator=g)["valence"]
    assert not torch.allclose(t, e1)


def test_expression_head_and_window_limit():
    model = feature_model("av", n_expression=7)
    v, a = feats(B=2, T=8)
    assert model(video_feats=v, audio_feats=a)["expression"].shape == (2, 8, 7)
    with pytest.raises(ValueError, match="max_len"):
        model(video_feats=torch.randn(1, 65, 12), audio_feats=torch.randn(1, 65, 10))


def test_save_and_load_pretrained_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = feature_model("av").eval()
    v, a = feats()
    ref = model(video_feats=v, audio_feats=a)
    save_pretrained(model, tmp_path / "export")
    assert (tmp_path / "export" / "config.json").is_file()
    loaded = from_pretrained(tmp_path / "export").eval()
    out = loaded(video_feats=v, audio_feats=a)
    torch.testing.assert_close(out["valence"], ref["valence"])
    # A weight file that does not match its config is refused with the file named.
    bad = feature_model("av", d_model=16, n_heads=2)
    save_pretrained(bad, tmp_path / "bad")
    (tmp_path / "bad" / "config.json").write_text((tmp_path / "export" / "config.json").read_text())
    with pytest.raises(ValueError, match="model.safetensors"):
        from_pretrained(tmp_path / "bad")


def test_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match="unknown model"):
        create_model("no_such_model")
    with pytest.raises(ValueError, match="unknown key"):
        create_model("afew_emonet_video", fusion={"n_layayers": 2})
    with pytest.raises(ValueError, match="mode"):
        feature_model("audio-visual")
