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


# -- every named config, at tiny widths, from raw frames and audio ------------------------------
from avfusion import list_models, get_model_config  # noqa: E402

TINY_W2V = {
    "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32,
    "conv_dim": [16] * 7, "num_conv_pos_embeddings": 8, "num_conv_pos_embedding_groups": 2,
}
TINY_VIT = {"embed_dim": 32, "depth": 1, "num_heads": 2, "img_size": 32}


def tiny_overrides(name: str) -> dict:
    cfg = get_model_config(name)
    over: dict = {}
    if cfg.video is not None and cfg.mode in ("av", "video"):
        over["video"] = {"width": 32} if cfg.video.name == "emonet" else {"timm_kwargs": TINY_VIT}
    if cfg.audio is not None and cfg.mode in ("av", "audio"):
        over["audio"] = {"hf_config": TINY_W2V, "path": None}
    if cfg.fusion is not None:
        over["fusion"] = {"d_model": 32, "n_layers": 1, "n_heads": 2}
    return over


def raw_inputs(model, B=2, T=4, seconds_per_frame=0.04):
    g = torch.Generator().manual_seed(0)
    _, H, W = model.pretrained_cfg["input_size"] if model.pretrained_cfg else (3, 8, 8)
    video = torch.rand(B, T, 3, H, W, generator=g)
    S = int(T * seconds_per_frame * 16000)
    audio = torch.randn(B, S, generator=g) * 0.1
    frame_times = torch.arange(T).float()[None].repeat(B, 1) * seconds_per_frame
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, -1] = False
    face = torch.ones(B, T, dtype=torch.bool)
    face[0, 1] = False
    return dict(video=video, audio=audio, frame_times=frame_times, audio_lengths=torch.tensor([S, S - 160]),
                mask=mask, face_mask=face, audio_valid=torch.tensor([True, False]))


def test_named_configs_exist():
    assert {"emonet_8", "emonet_5", "afew_emonet_video", "av_emonet_wav2vec2", "av_mae_vitb_wav2vec2",
            "tiny"} <= set(list_models())


@pytest.mark.parametrize("name", list_models())
def test_named_config_forward_backward_at_tiny_width(name):
    torch.manual_seed(0)
    model = create_model(name, **tiny_overrides(name))
    model.train()
    if model.fusion is None and model.use_audio:  # experts with a voice expert: the engine runs them
        with pytest.raises(ValueError, match="inference engine"):
            model(**raw_inputs(model))
        return
    out = model(**raw_inputs(model))
    assert out["valence"].shape == (2, 4)
    assert out["valence"].abs().max() <= 1 and torch.isfinite(out["arousal"]).all()
    if model.fusion is None:  # frame-by-frame EmoNet: nothing trains
        assert out["valence"][0, 1] == 0  # no face -> no prediction
        return
    (out["valence"].sum() + out["arousal"].sum()).backward()
    for enc in (model.video_encoder, model.audio_encoder):
        if enc is None:
            continue
        assert not enc.training, "frozen encoders stay in eval() under model.train()"
        # Named configs freeze their encoders (weight-free ones have nothing to freeze); the learned
        # layer weights of a "weighted" wav2vec2 still train.
        assert all(p.grad is None for p in enc.parameters() if not p.requires_grad)
        trainable = [n for n, p in enc.named_parameters() if p.requires_grad]
        assert set(trainable) <= {"layer_weights"}, trainable
    fusion_grads = [p.grad for p in model.fusion.parameters()]
    assert all(g is not None for g in fusion_grads[:4])
    assert sum(float(g.abs().sum()) for g in fusion_grads if g is not None) > 0


def test_export_of_model_with_wav2vec2_folder_is_self_contained(tmp_path):
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    folder = tmp_path / "w2v"
    Wav2Vec2Model(Wav2Vec2Config(**TINY_W2V)).save_pretrained(folder)
    over = tiny_overrides("av_emonet_wav2vec2")
    over["audio"]["path"] = str(folder)
    model = create_model("av_emonet_wav2vec2", **over).eval()
    x = {k: v[:1] for k, v in raw_inputs(model).items()}
    ref = model(**x)
    save_pretrained(model, tmp_path / "export")
    import shutil
    shutil.rmtree(folder)  # the export must not need the original folder
    out = from_pretrained(tmp_path / "export").eval()(**x)
    torch.testing.assert_close(out["arousal"], ref["arousal"])
