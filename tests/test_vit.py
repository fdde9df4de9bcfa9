"""MAE ViT frame encoder: facebookresearch/mae files load strictly, pos_embed resizes, frozen stays frozen."""
from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

from avfusion.config import VideoEncoderConfig
from avfusion.encoders import create_video_encoder
from avfusion.encoders.vit import IMAGENET_MEAN, IMAGENET_STD, MAEViTEncoder
from avfusion.encoders.vit import load_mae_checkpoint

WIDTH, DEPTH, PATCH = 32, 2, 16


def tiny(img: int = 32) -> dict:
    return dict(embed_dim=WIDTH, depth=DEPTH, num_heads=2, img_size=img)


def encoder_state(img: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    """An MAE encoder state dict (timm ViT names, final `norm`, no head) with distinctive values."""
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, global_pool="token", **tiny(img))
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) for k, v in vit.state_dict().items()}


def decoder_state(img: int = 32, dec_width: int = 24) -> dict[str, torch.Tensor]:
    """MAE's decoder and mask token, as its pre-training files hold them."""
    n_tokens = 1 + (img // PATCH) ** 2
    sd = {
        "mask_token": torch.randn(1, 1, dec_width),
        "decoder_embed.weight": torch.randn(dec_width, WIDTH),
        "decoder_embed.bias": torch.randn(dec_width),
        "decoder_pos_embed": torch.randn(1, n_tokens, dec_width),
        "decoder_norm.weight": torch.randn(dec_width),
        "decoder_norm.bias": torch.randn(dec_width),
        "decoder_pred.weight": torch.randn(PATCH * PATCH * 3, dec_width),
        "decoder_pred.bias": torch.randn(PATCH * PATCH * 3),
    }
    for name, shape in [("norm1.weight", (dec_width,)), ("attn.qkv.weight", (3 * dec_width, dec_width)), ("mlp.fc1.weight", (2 * dec_width, dec_width))]:
        sd[f"decoder_blocks.0.{name}"] = torch.randn(shape)
    return sd


def pretrain_file(path: Path, img: int = 32) -> dict[str, torch.Tensor]:
    """A full MAE pre-training checkpoint as main_pretrain.py writes it; returns its encoder part."""
    enc = encoder_state(img)
    ckpt = {
        "model": {**enc, **decoder_state(img)},
        "optimizer": {"state": {}, "param_groups": [{"lr": 1.5e-4, "weight_decay": 0.05, "params": [0, 1, 2]}]},
        "epoch": 799,
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000},
        "args": argparse.Namespace(model="mae_vit_base_patch16", mask_ratio=0.75, norm_pix_loss=True, input_size=img, blr=1.5e-4),
    }
    torch.save(ckpt, path)
    return enc


def make(img: int = 32, pool: str = "avg", checkpoint: str | None = None, frozen: bool = True) -> MAEViTEncoder:
    cfg = VideoEncoderConfig(name="mae_vit", arch="vit_base_patch16_224", pool=pool, timm_kwargs=tiny(img), checkpoint=checkpoint, frozen=frozen)
    return create_video_encoder(cfg)


@pytest.mark.parametrize("pool", ["avg", "cls"])
def test_pretraining_checkpoint_loads_weights_only(tmp_path: Path, pool: str) -> None:
    path = tmp_path / "mae_pretrain_tiny.pth"
    enc_sd = pretrain_file(path)
    # The Namespace really is there: a plain weights_only load refuses the file ...
    with pytest.raises(Exception, match="Namespace"):
        torch.load(path, weights_only=True)

    encoder = make(pool=pool)
    missing = encoder.load_checkpoint(path)
    # ... and the allow-list was scoped to our load, not left on for the process.
    with pytest.raises(Exception, match="Namespace"):
        torch.load(path, weights_only=True)

    loaded = encoder.vit.state_dict()
    if pool == "avg":  # MAE's fine-tuning recipe: pre-training `norm` dropped, fresh `fc_norm`
        assert missing == {"fc_norm.weight", "fc_norm.bias"}
        assert set(loaded) == set(enc_sd) - {"norm.weight", "norm.bias"} | missing
        assert torch.equal(loaded["fc_norm.weight"], torch.ones(WIDTH))
        assert torch.equal(loaded["fc_norm.bias"], torch.zeros(WIDTH))
    else:
        assert missing == set()
        assert set(loaded) == set(enc_sd)
    for key, value in loaded.items():
        if key in enc_sd:
            assert torch.equal(value, enc_sd[key]), key
    assert not any(k.startswith("decoder") or k == "mask_token" for k in loaded)


def test_checkpoint_via_config_and_features(tmp_path: Path) -> None:
    path = tmp_path / "mae.pth"
    pretrain_file(path)
    encoder = make(pool="cls", checkpoint=str(path))
    x = torch.randn(3, 3, 32, 32)
    feats = encoder.forward_features(x)
    assert feats.shape == (3, WIDTH) == (3, encoder.num_features)
    # pool="cls" is the class token after the file's final norm.
    tokens = encoder.vit.forward_features(x)
    assert torch.allclose(feats, tokens[:, 0])


def test_encoder_only_file(tmp_path: Path) -> None:
    path = tmp_path / "encoder_only.pth"
    enc_sd = encoder_state(seed=3)
    torch.save(enc_sd, path)  # bare state dict, no "model" wrapper
    encoder = make(pool="cls")
    assert encoder.load_checkpoint(path) == set()
    for key, value in encoder.vit.state_dict().items():
        assert torch.equal(value, enc_sd[key]), key


def test_finetuned_file_matches_finetuned_model(tmp_path: Path) -> None:
    """A global-pool fine-tuned file (fc_norm + a 7-class head): the head goes, features = its pre-logits."""
    ft = {k: v for k, v in encoder_state(seed=5).items() if not k.startswith("norm.")}
    ft.update({"fc_norm.weight": torch.rand(WIDTH) + 0.5, "fc_norm.bias": torch.randn(WIDTH)})
    ft.update({"head.weight": torch.randn(7, WIDTH), "head.bias": torch.randn(7)})
    path = tmp_path / "finetuned.pth"
    torch.save({"model": ft}, path)

    encoder = make(pool="avg")
    assert encoder.load_checkpoint(path) == set()
    reference = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=7, global_pool="avg", **tiny())
    reference.load_state_dict(ft, strict=True)
    reference.eval()
    x = torch.randn(2, 3, 32, 32)
    expected = reference.forward_head(reference.forward_features(x), pre_logits=True)
    assert torch.allclose(encoder.forward_features(x), expected, atol=1e-6)

    # The same file into a class-token model: its fc_norm has no role there, norm is the expected gap.
    cls_encoder = make(pool="cls")
    assert cls_encoder.load_checkpoint(path) == {"norm.weight", "norm.bias"}


def test_grid_change_resizes_pos_embed(tmp_path: Path) -> None:
    path = tmp_path / "mae32.pth"
    enc_sd = pretrain_file(path, img=32)  # 2x2 patch grid
    encoder = make(img=48)  # 3x3 patch grid
    encoder.load_checkpoint(path)
    pos = encoder.vit.pos_embed.detach()
    assert pos.shape == (1, 1 + 9, WIDTH)
    old = enc_sd["pos_embed"]
    assert torch.equal(pos[:, 0], old[:, 0])  # the cls token's embedding is kept as it is
    grid = old[:, 1:].reshape(1, 2, 2, WIDTH).permute(0, 3, 1, 2)  # row-major patch order
    resized = F.interpolate(grid, size=(3, 3), mode="bicubic", align_corners=False, antialias=True)
    assert torch.allclose(pos[:, 1:], resized.permute(0, 2, 3, 1).reshape(1, 9, WIDTH), atol=1e-6)
    assert encoder.forward_features(torch.randn(1, 3, 48, 48)).shape == (1, WIDTH)
    assert encoder.pretrained_cfg["input_size"] == (3, 48, 48)


def test_wrong_files_give_clear_errors(tmp_path: Path) -> None:
    encoder = make()

    not_vit = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.randn(8, 3, 7, 7), "fc.weight": torch.randn(10, 8)}, not_vit)
    with pytest.raises(ValueError, match=r"resnet\.pth: not an MAE ViT checkpoint"):
        encoder.load_checkpoint(not_vit)

    text = tmp_path / "notes.pth"
    text.write_text("this is not a checkpoint")
    with pytest.raises(ValueError, match=r"notes\.pth: cannot be read"):
        encoder.load_checkpoint(text)

    pickled = tmp_path / "pickled.pth"
    with open(pickled, "wb") as f:  # a pickle of an arbitrary class: weights_only refuses it
        pickle.dump({"model": Path("x")}, f, protocol=2)
    with pytest.raises(ValueError, match=r"pickled\.pth: holds a pathlib\.PosixPath object"):
        encoder.load_checkpoint(pickled)

    with pytest.raises(FileNotFoundError, match="missing.pth"):
        encoder.load_checkpoint(tmp_path / "missing.pth")

    deep = {k.replace("blocks.1.", "blocks.2."): v for k, v in encoder_state().items()}
    deep.update({k: v for k, v in encoder_state().items() if k.startswith("blocks.1.")})
    with pytest.raises(ValueError, match="3 transformer blocks, the model 2"):
        load_mae_checkpoint(encoder.vit, deep)

    # A ViT-L file for a ViT-B model: caught before any weight is touched (model on meta, no 86M init).
    large = tmp_path / "mae_pretrain_vit_large.pth"
    torch.save(
        {
            "model": {
                "cls_token": torch.zeros(1, 1, 1024),
                "pos_embed": torch.zeros(1, 197, 1024),
                "patch_embed.proj.weight": torch.zeros(1024, 3, 16, 16),
                "blocks.0.norm1.weight": torch.zeros(1024),
            }
        },
        large,
    )
    with torch.device("meta"):
        base = MAEViTEncoder("vit_base_patch16_224")
    with pytest.raises(ValueError, match=r"mae_pretrain_vit_large\.pth: the file is a ViT-L .* ViT-B .*: 1024 vs 768"):
        base.load_checkpoint(large)


def test_frozen_has_no_grads_and_stays_eval() -> None:
    encoder = make(frozen=True)
    parent = torch.nn.ModuleDict({"video": encoder, "head": torch.nn.Linear(WIDTH, 2)})
    parent.train()
    assert not encoder.vit.training and not any(m.training for m in encoder.vit.modules())
    assert not any(p.requires_grad for p in encoder.parameters())
    x = torch.randn(2, 3, 32, 32)
    loss = parent["head"](encoder.forward_features(x)).sum()
    loss.backward()
    assert all(p.grad is None for p in encoder.parameters())
    assert parent["head"].weight.grad is not None

    trainable = make(frozen=False)
    trainable.train()
    assert trainable.vit.training
    trainable.forward_features(x).sum().backward()
    assert all(p.grad is not None for p in trainable.parameters())


def test_pretrained_cfg_and_input_check() -> None:
    encoder = make(img=64)
    cfg = encoder.pretrained_cfg
    assert cfg["input_size"] == (3, 64, 64)
    assert cfg["mean"] == IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert cfg["std"] == IMAGENET_STD == (0.229, 0.224, 0.225)
    assert cfg["interpolation"] == "bicubic"
    with pytest.raises(ValueError, match=r"\(N, 3, 64, 64\)"):
        encoder.forward_features(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="pool"):
        MAEViTEncoder(pool="max", timm_kwargs=tiny())


@pytest.mark.parametrize("arch, width", [("vit_base_patch16_224", 768), ("vit_large_patch16_224", 1024)])
def test_base_and_large_widths(arch: str, width: int) -> None:
    with torch.device("meta"):  # shapes only: no 86M / 304M parameter initialisation
        encoder = create_video_encoder(VideoEncoderConfig(name="mae_vit", arch=arch))
    assert encoder.num_features == width
    assert encoder.pretrained_cfg["input_size"] == (3, 224, 224)
    assert encoder.vit.pos_embed.shape == (1, 197, width)
    assert isinstance(encoder.vit.norm, torch.nn.Identity) and encoder.vit.fc_norm.weight.shape == (width,)
