"""Optimiser, learning-rate schedule and training loss of an experiment."""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from ..losses import build_loss
from .experiment import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters in two AdamW groups: decayed and not.

    Decay shrinks weight matrices towards zero, which regularises linear maps; applied to norm
    gains, biases, embeddings or learned tokens it only pulls them towards an arbitrary origin. So
    only the weights of Linear/Conv layers, attention's input projection and recurrent layers' matrices are decayed;
    everything else (norms, biases, embeddings, modality/time embeddings, placeholder tokens) is not.
    """
    decay_types = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    decay, no_decay = [], []
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            is_matrix = (isinstance(module, decay_types) and name == "weight") or (
                isinstance(module, nn.MultiheadAttention) and name.endswith("proj_weight")) or (
                isinstance(module, nn.RNNBase) and name.startswith("weight_"))
            (decay if is_matrix else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameter (is every part frozen?)")
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (see :func:`param_groups`)."""
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas))


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> Callable[[int], float]:
    """LR multiplier for step ``s``: linear from ~0 to 1 over ``warmup_steps``, then cosine to ``min_ratio``."""
    total_steps = max(1, int(total_steps))
    warmup_steps = min(max(0, int(warmup_steps)), total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup + cosine decay over ``total_steps`` scheduler steps."""
    warmup = cfg.warmup_steps if cfg.warmup_steps > 0 else int(round(cfg.warmup_ratio * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, warmup, cfg.min_lr_ratio))


def build_loss_fn(cfg: TrainConfig) -> nn.Module:
    """The training loss the config names (see :mod:`avfusion.losses`); returns a dict with ``loss``."""
    if cfg.loss == "ccc":
        return build_loss("ccc", weights=tuple(cfg.loss_weights))
    # No private generator: the shake-shake weights come from torch's global RNG, which
    # accelerator.save_state saves and load_state restores, so a resumed run draws the same ones.
    return build_loss("emonet")


__all__ = ["param_groups", "build_optimizer", "warmup_cosine", "build_scheduler", "build_loss_fn"]
