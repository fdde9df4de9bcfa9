"""MAE ViT frame encoder: a timm Vision Transformer that loads facebookresearch/mae weights.

One pooled feature per face crop: the average of the patch tokens (MAE's fine-tuning recipe) or
the class token. Weight files go through :func:`avfusion.pretrained.load_mae_checkpoint`.
"""
from __future__ import annotations

from pathlib import Path

import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from ..config import VideoEncoderConfig
from ..pretrained import load_mae_checkpoint
from . import VideoEncoder

# MAE normalises with the ImageNet statistics (its pre-training and fine-tuning transforms) and
# resizes with bicubic interpolation.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_POOLS = {"avg": "avg", "cls": "token"}  # our name -> timm's global_pool
_RESERVED_KWARGS = ("pretrained", "num_classes", "global_pool")


class MAEViTEncoder(VideoEncoder):
    """A timm ViT (``vit_base_patch16_224``, ``vit_large_patch16_224``, ...) as a per-frame encoder.

    ``pool="avg"``: mean of the patch tokens, then timm's ``fc_norm`` (MAE fine-tuning);
    ``pool="cls"``: the class token after the final ``norm``. A frozen encoder has no trainable
    parameters and stays in eval() whatever its parent does.
    """

    def __init__(
        self,
        arch: str = "vit_base_patch16_224",
        pool: str = "avg",
        timm_kwargs: dict | None = None,
        frozen: bool = True,
    ) -> None:
        super().__init__()
        if pool not in _POOLS:
            raise ValueError(f"MAE ViT pool must be one of {sorted(_POOLS)}, got {pool!r}")
        kwargs = dict(timm_kwargs or {})
        reserved = [k for k in _RESERVED_KWARGS if k in kwargs]
        if reserved:
            raise ValueError(f"timm_kwargs may not set {reserved}: the encoder sets them (use `pool` for pooling)")
        self.vit = timm.create_model(arch, pretrained=False, num_classes=0, global_pool=_POOLS[pool], **kwargs)
        if not isinstance(self.vit, VisionTransformer):
            raise ValueError(f"{arch!r} is a timm {type(self.vit).__name__}, not a VisionTransformer: MAE weights need a ViT")
        self.arch = arch
        self.pool = pool
        self.num_features = int(self.vit.num_features)
        height, width = self.vit.patch_embed.img_size
        self.pretrained_cfg = {
            "input_size": (3, int(height), int(width)),
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
            "interpolation": "bicubic",
        }
        self.frozen = frozen
        if frozen:
            self.vit.requires_grad_(False)
            self.vit.eval()

    @classmethod
    def from_config(cls, cfg: VideoEncoderConfig) -> "MAEViTEncoder":
        """Build from ``cfg.arch / pool / timm_kwargs / frozen`` and load ``cfg.checkpoint`` if set."""
        encoder = cls(arch=cfg.arch, pool=cfg.pool, timm_kwargs=cfg.timm_kwargs, frozen=cfg.frozen)
        if cfg.checkpoint:
            encoder.load_checkpoint(cfg.checkpoint)
        return encoder

    def load_checkpoint(self, path: str | Path) -> set[str]:
        """Load an MAE pre-training, encoder-only or fine-tuned file; returns the keys it lacked."""
        return load_mae_checkpoint(self.vit, path)

    def train(self, mode: bool = True) -> "MAEViTEncoder":
        super().train(mode)
        if self.frozen:
            self.vit.eval()
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 3, H, W) normalised as ``pretrained_cfg`` says -> (N, num_features)."""
        expected = self.pretrained_cfg["input_size"]
        if x.ndim != 4 or (tuple(x.shape[1:]) != expected and not getattr(self.vit, "dynamic_img_size", False)):
            raise ValueError(f"MAE ViT expects images of shape (N, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            tokens = self.vit.forward_features(x)
            return self.vit.forward_head(tokens, pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)
