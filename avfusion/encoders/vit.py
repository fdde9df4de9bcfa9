"""MAE ViT frame encoder: a timm Vision Transformer that loads facebookresearch/mae weights.

One pooled feature per face crop: the average of the patch tokens (MAE's fine-tuning recipe) or
the class token. Weight files go through :func:`load_mae_checkpoint` (this module's filter +
:func:`avfusion.weights.load_strict`).
"""
from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Any, Mapping

import timm
import torch
from torch import nn
from timm.models.vision_transformer import VisionTransformer

from ..config import VideoEncoderConfig
from ..weights import list_keys, load_strict, read_weights
from .base import VideoEncoder

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


# --- MAE ViT (facebookresearch/mae pre-training, encoder-only and fine-tuned files) -------------
# Pre-training files are {"model", "optimizer", "epoch", "scaler", "args"} with `args` an
# argparse.Namespace; encoder-only files are the bare encoder state dict (often under "model");
# fine-tuned files add fc_norm.* (global-pool recipe, which has no norm.*) and head.*.
#
# The final LayerNorm. timm's ViT has two slots: `norm` (every token, before pooling: used with
# pool="cls") and `fc_norm` (the pooled feature: used with pool="avg", where `norm` is an Identity).
# MAE pre-training trains `norm`; MAE's global-pool fine-tuning drops it and starts a fresh `fc_norm`.
# We follow that recipe: the model's slot loads from the file when the file has that slot; otherwise
# the file's other LayerNorm is dropped and the model's slot is the one expected-missing pair,
# set to the identity affine (weight 1, bias 0), exactly where MAE fine-tuning starts. So a
# pre-training file into pool="avg" misses exactly {fc_norm.weight, fc_norm.bias}; into pool="cls"
# nothing. (Copying the per-token `norm` into `fc_norm` would apply an affine learnt for single tokens
# to the normalised mean of the tokens; we prefer MAE's own starting point.)

_MAE_DROP_KEYS = frozenset({"mask_token", "decoder_pos_embed"})
_MAE_DROP_PREFIXES = ("decoder_embed.", "decoder_blocks.", "decoder_norm.", "decoder_pred.", "head.")
_MAE_REQUIRED = ("cls_token", "pos_embed", "patch_embed.proj.weight")
_VIT_NAMES = {384: "ViT-S", 768: "ViT-B", 1024: "ViT-L", 1280: "ViT-H"}


def _vit_name(width: int) -> str:
    return f"{_VIT_NAMES.get(width, 'ViT')} (width {width})"


def _final_norm_slot(model: nn.Module) -> str:
    """'norm' or 'fc_norm': the LayerNorm the model actually applies to its output."""
    has_norm = not isinstance(getattr(model, "norm", nn.Identity()), nn.Identity)
    has_fc_norm = not isinstance(getattr(model, "fc_norm", nn.Identity()), nn.Identity)
    if has_norm == has_fc_norm:
        raise ValueError("expected a timm ViT with exactly one of norm / fc_norm (build it with num_classes=0)")
    return "norm" if has_norm else "fc_norm"


def read_mae_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an MAE-family file and return its (possibly still MAE-named) state dict.

    ``torch.load(weights_only=True)`` with only ``argparse.Namespace`` allow-listed, and only for
    this load (the pre-training files keep their command line in ``args``).
    """
    try:
        raw = read_weights(path, "MAE ViT weight", safe_globals=[argparse.Namespace])
    except ValueError as e:
        # torch's first line only says the load failed; the type it refused is further down.
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(e.__cause__ or ""))
        if refused is None:
            raise
        raise ValueError(
            f"{path}: holds a {refused.group(1)} object, which torch.load(weights_only=True) refuses; an "
            f"MAE checkpoint needs only tensors, plain containers and argparse.Namespace"
        ) from e
    sd: Any = raw
    if isinstance(sd, Mapping) and isinstance(sd.get("model"), Mapping):
        sd = sd["model"]
    if not isinstance(sd, Mapping) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in sd.items()):
        top = sorted(map(str, raw)) if isinstance(raw, Mapping) else type(raw).__name__
        raise ValueError(
            f"{path}: not an MAE ViT checkpoint: expected a state dict of tensors, or a dict with one "
            f"under 'model'; found {top}"
        )
    sd = dict(sd)
    if sd and all(k.startswith("module.") for k in sd):  # saved from DataParallel / DDP
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def mae_filter_state_dict(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module, source: str = "MAE state dict"
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Turn an MAE-family state dict into ``model``'s keys; return it and the expected-missing keys.

    ``model`` is a timm ``VisionTransformer`` built with ``num_classes=0``. Drops the decoder,
    ``mask_token``, ``head.*`` and the LayerNorm slot the model does not use (see the comment above),
    and resamples ``pos_embed`` (cls token kept) when the patch grid differs. Raises a ValueError
    naming ``source`` when the weights are not an MAE ViT or do not fit the model's width, depth
    or patch size.
    """
    from timm.layers import resample_abs_pos_embed

    absent = [k for k in _MAE_REQUIRED if k not in state_dict]
    if absent or not any(k.startswith("blocks.") for k in state_dict):
        raise ValueError(
            f"{source}: not an MAE ViT checkpoint: no {', '.join(absent) or 'blocks.*'} key(s); "
            f"its keys begin {list_keys(sorted(state_dict), 6)}"
        )
    width = int(state_dict["cls_token"].shape[-1])
    model_width = int(model.cls_token.shape[-1])
    if width != model_width:
        raise ValueError(
            f"{source}: the file is a {_vit_name(width)} but the model is a {_vit_name(model_width)}: "
            f"{width} vs {model_width}. Choose the matching arch (vit_base_patch16_224 for 768, "
            f"vit_large_patch16_224 for 1024)."
        )
    depth = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
    if depth != len(model.blocks):
        raise ValueError(f"{source}: the file has {depth} transformer blocks, the model {len(model.blocks)}")
    patch = tuple(state_dict["patch_embed.proj.weight"].shape[-2:])
    model_patch = tuple(model.patch_embed.proj.weight.shape[-2:])
    if patch != model_patch:
        raise ValueError(f"{source}: the file has {patch} patches, the model {model_patch}")

    slot = _final_norm_slot(model)
    other = "fc_norm" if slot == "norm" else "norm"
    file_has_slot = f"{slot}.weight" in state_dict
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key in _MAE_DROP_KEYS or key.startswith(_MAE_DROP_PREFIXES) or key.startswith(other + "."):
            continue
        out[key] = value
    expected_missing = set() if file_has_slot else {f"{slot}.weight", f"{slot}.bias"}

    pos = out["pos_embed"]
    n_prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
    if pos.shape != model.pos_embed.shape:
        n_old = pos.shape[1] - n_prefix
        side = math.isqrt(n_old)
        if side * side != n_old:
            raise ValueError(f"{source}: pos_embed holds {n_old} patch positions, not a square grid")
        out["pos_embed"] = resample_abs_pos_embed(
            pos, new_size=list(model.patch_embed.grid_size), old_size=[side, side], num_prefix_tokens=n_prefix
        )
    return out, expected_missing


def mae_filter_fn(raw: Any, model: nn.Module, source: str) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The MAE filter for :func:`avfusion.weights.load_strict`: the expected-missing final
    LayerNorm is supplied at the identity affine (weight 1, bias 0), where MAE fine-tuning starts."""
    sd, expected_missing = mae_filter_state_dict(raw, model, source)
    target = model.state_dict()
    missing = set(target) - set(sd)
    if missing != expected_missing:
        raise ValueError(f"{source} does not fit the ViT: missing key(s) {list_keys(sorted(missing))} "
                         f"(expected only {sorted(expected_missing) or 'none'})")
    for key in expected_missing:
        sd[key] = torch.ones_like(target[key]) if key.endswith(".weight") else torch.zeros_like(target[key])
    return sd, expected_missing


def load_mae_checkpoint(model: nn.Module, path_or_state_dict: str | Path | Mapping[str, torch.Tensor]) -> set[str]:
    """Load an MAE ViT file (pre-training, encoder-only or fine-tuned) into a timm ViT.

    Strict except for the asserted expected-missing final LayerNorm (see above), which is set to
    the identity affine. Returns the set of keys that were missing from the file.
    """
    if isinstance(path_or_state_dict, Mapping):
        source, sd = "MAE state dict", dict(path_or_state_dict)
    else:
        source, sd = str(path_or_state_dict), read_mae_checkpoint(path_or_state_dict)
    try:
        return load_strict(model, sd, lambda raw, m, _: mae_filter_fn(raw, m, source)).filled
    except ValueError as e:
        msg = str(e).replace("weight state dict does not fit", f"{source} does not fit")
        raise ValueError(msg) from None
