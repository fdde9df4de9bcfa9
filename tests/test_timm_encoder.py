"""`video.name: timm`: any timm CNN as the per-frame encoder, weights from a local file."""
import pytest
import torch

from avfusion import create_model
from avfusion.encoders.timm_cnn import TimmEncoder

TINY = {"arch": "resnet18", "timm_kwargs": {}}


def _file_state(enc: TimmEncoder, wrap: str | None, prefix: str) -> dict:
    """A weight file as training code writes it: the model's keys plus a 10-class classifier."""
    torch.manual_seed(1)
    sd = {prefix + k: torch.randn_like(v) if v.is_floating_point() else v for k, v in enc.net.state_dict().items()}
    sd[prefix + "fc.weight"] = torch.randn(10, enc.num_features)
    sd[prefix + "fc.bias"] = torch.randn(10)
    return {wrap: sd, "epoch": 3} if wrap else sd


@pytest.mark.parametrize("wrap,prefix,suffix", [(None, "", ".safetensors"), ("state_dict", "module.", ".pth"),
                                                ("model", "", ".pth")])
def test_timm_weights_load_from_local_file(tmp_path, wrap, prefix, suffix):
    enc = TimmEncoder("resnet18")
    raw = _file_state(enc, wrap, prefix)
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(raw, str(path))
    else:
        torch.save(raw, path)
    dropped = enc.load_checkpoint(path)
    assert dropped == {"fc.weight", "fc.bias"}
    flat = raw[wrap] if wrap else raw
    for k, v in enc.net.state_dict().items():
        assert torch.equal(v, flat[prefix + k]), k


def test_timm_checkpoint_that_does_not_fit_names_the_file(tmp_path):
    enc = TimmEncoder("resnet18")
    sd = enc.net.state_dict()
    sd.pop("layer1.0.conv1.weight")
    path = tmp_path / "partial.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"partial\.pth.*missing key.*layer1\.0\.conv1\.weight"):
        enc.load_checkpoint(path)
    with pytest.raises(ValueError, match="not a timm model"):
        TimmEncoder("no_such_net_42")


def test_timm_encoder_in_an_av_model_uses_its_pretrained_cfg(tmp_path):
    over = {"mode": "video", "video": {"name": "timm", "arch": "resnet18"},
            "fusion": {"d_model": 16, "n_layers": 1, "n_heads": 2, "temporal": "gru"}}
    model = create_model("tiny", **over).eval()
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["mean"] == pytest.approx((0.485, 0.456, 0.406))
    x = torch.randn(2, 3, 3, 224, 224)
    out = model(video=x)
    assert out["valence"].shape == (2, 3) and torch.isfinite(out["valence"]).all()
    # frozen: no trainable weights in the CNN, and it stays in eval mode while the fusion trains
    model.train()
    assert not model.video_encoder.net.training
    assert not any(p.requires_grad for p in model.video_encoder.parameters())


def test_nested_classifier_keys_are_dropped(tmp_path):
    """ConvNeXt's classifier is `head.fc` (beside `head.norm`, which the encoder keeps)."""
    enc = TimmEncoder("convnext_atto")
    sd = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in enc.net.state_dict().items()}
    assert any(k.startswith("head.norm.") for k in sd)
    sd["head.fc.weight"], sd["head.fc.bias"] = torch.randn(7, enc.num_features), torch.randn(7)
    torch.save(sd, tmp_path / "convnext.pth")
    assert enc.load_checkpoint(tmp_path / "convnext.pth") == {"head.fc.weight", "head.fc.bias"}
    torch.testing.assert_close(enc.net.state_dict()["head.norm.weight"], sd["head.norm.weight"])
