"""Every weight file goes through here: unwrap, strip prefixes, filter, resize, strict load.

One filter function per checkpoint family (EmoNet, MAE ViT). Files are read with
``torch.load(weights_only=True)``; the few non-tensor types a family needs are allow-listed.
"""
from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

# --- EmoNet (emonet_8.pth / emonet_5.pth) -------------------------------------------------------
# The official files are plain state dicts saved from nn.DataParallel: every key starts "module.".

_EMONET_WRAPPERS = ("state_dict", "model", "net")


def emonet_filter_state_dict(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Unwrap a checkpoint dict and strip one leading ``module.`` from every key.

    Only the prefix goes: a ``module.`` later in a key is part of its name.
    """
    sd: Any = state_dict
    for wrapper in _EMONET_WRAPPERS:
        if isinstance(sd, Mapping) and isinstance(sd.get(wrapper), Mapping):
            sd = sd[wrapper]
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if not isinstance(key, str) or not torch.is_tensor(value):
            raise ValueError(f"EmoNet state dict entry {key!r} is not a (name, tensor) pair ({type(value).__name__})")
        name = key[len("module.") :] if key.startswith("module.") else key
        if name in out:
            raise ValueError(f"EmoNet state dict has {name!r} both with and without the 'module.' prefix")
        out[name] = value
    return out


def _read_weights(path: str | Path, family: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{family} weight file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt / non-weights files
        raise ValueError(
            f"{path}: cannot be read as a {family} weight file with torch.load(weights_only=True): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e


def _list_keys(keys: list[str], limit: int = 10) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_emonet_checkpoint(model: nn.Module, path_or_state_dict: str | Path | Mapping[str, Any]) -> nn.Module:
    """Load official EmoNet weights (or any EmoNet state dict) strictly into ``model``.

    ``model`` is an :class:`~avfusion.encoders.emonet.EmoNet` or an ``EmoNetEncoder`` (its ``net``
    is loaded). Raises a ValueError naming the source and listing missing, unexpected and
    wrongly shaped keys when the weights do not fit the architecture exactly.
    """
    from .encoders.emonet import EmoNetEncoder

    target = model.net if isinstance(model, EmoNetEncoder) else model
    if isinstance(path_or_state_dict, Mapping):
        source, raw = "EmoNet state dict", path_or_state_dict
    else:
        source, raw = str(path_or_state_dict), _read_weights(path_or_state_dict, "EmoNet")
        if not isinstance(raw, Mapping):
            raise ValueError(f"{source}: expected a state dict (a mapping of names to tensors), got {type(raw).__name__}")
    try:
        sd = emonet_filter_state_dict(raw)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from e

    expected = target.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [
        f"{k} {tuple(sd[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items() if k in sd and sd[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing key(s): {_list_keys(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected key(s): {_list_keys(unexpected)}")
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatch(es): {_list_keys(mismatched)}")
        hint = ""
        head = sd.get("emo_fc_2.3.weight")
        n_expr = getattr(target, "n_expression", None)
        if head is not None and n_expr is not None and head.shape[0] - 2 != n_expr:
            hint = f" The file has {head.shape[0] - 2} expression classes: build the model with n_expression={head.shape[0] - 2}."
        raise ValueError(f"{source} does not fit {type(target).__name__}: " + "; ".join(problems) + "." + hint)
    target.load_state_dict(sd, strict=True)
    return model


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
        with torch.serialization.safe_globals([argparse.Namespace]):
            raw = _read_weights(path, "MAE ViT")
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
            f"its keys begin {_list_keys(sorted(state_dict), 6)}"
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


def load_mae_checkpoint(model: nn.Module, path_or_state_dict: str | Path | Mapping[str, torch.Tensor]) -> set[str]:
    """Load an MAE ViT file (pre-training, encoder-only or fine-tuned) into a timm ViT.

    Strict except for the asserted expected-missing final LayerNorm (see above), which is set to
    the identity affine. Returns the set of keys that were missing from the file.
    """
    if isinstance(path_or_state_dict, Mapping):
        source, sd = "MAE state dict", dict(path_or_state_dict)
    else:
        source, sd = str(path_or_state_dict), read_mae_checkpoint(path_or_state_dict)
    sd, expected_missing = mae_filter_state_dict(sd, model, source)

    target = model.state_dict()
    missing = set(target) - set(sd)
    unexpected = sorted(set(sd) - set(target))
    mismatched = [f"{k} {tuple(v.shape)} vs model {tuple(target[k].shape)}" for k, v in sd.items() if k in target and v.shape != target[k].shape]
    if missing != expected_missing or unexpected or mismatched:
        problems = []
        if missing != expected_missing:
            problems.append(f"missing key(s) {_list_keys(sorted(missing))} (expected only {sorted(expected_missing) or 'none'})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected key(s): {_list_keys(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatch(es): {_list_keys(mismatched)}")
        raise ValueError(f"{source} does not fit the ViT: " + "; ".join(problems))
    for key in expected_missing:  # LayerNorm at the identity affine, where MAE fine-tuning starts
        sd[key] = torch.ones_like(target[key]) if key.endswith(".weight") else torch.zeros_like(target[key])
    model.load_state_dict(sd, strict=True)
    return missing
