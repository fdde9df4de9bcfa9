"""Training losses for per-frame valence/arousal: masked CCC loss and EmoNet's shake-shake loss.

Both take ``pred: (..., 2)`` and ``target: (..., 2)`` (valence, arousal; typically ``(B, T, 2)``)
and ``mask: (...)`` bool (typically ``(B, T)``, True = labelled real frame). Statistics run over all
valid frames of the batch at once, as the metric runs over the whole split. Masked positions may
hold anything (padding, -5, NaN): they are replaced before any arithmetic, so they cannot reach the
loss or its gradient. Every loss returns a dict with a ``loss`` entry plus detached terms for logging.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _check(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The mask as a bool tensor of ``pred.shape[:-1]`` (all True when None)."""
    if pred.shape != target.shape:
        raise ValueError(f"pred has shape {tuple(pred.shape)} but target has {tuple(target.shape)}")
    if pred.shape[-1] != 2:
        raise ValueError(f"pred must end in 2 (valence, arousal), got shape {tuple(pred.shape)}")
    if mask is None:
        return torch.ones(pred.shape[:-1], dtype=torch.bool, device=pred.device)
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be boolean (True = valid frame), got {mask.dtype}")
    if mask.shape != pred.shape[:-1]:
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {tuple(pred.shape[:-1])}")
    return mask


def masked_moments(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Population means, variances, covariance and mean squared error per dimension.

    pred, target: ``(..., 2)``; mask: ``(...)``. Returns ``(2,)`` float32 tensors ``mean_pred``,
    ``mean_target``, ``var_pred``, ``var_target``, ``cov``, ``mse`` and the scalar count ``n``.
    An empty mask gives zeros everywhere (and zero gradients), never NaN.
    """
    mask = _check(pred, target, mask)
    # bf16/fp16 under autocast lose too much in these sums.
    p = pred.float().reshape(-1, 2)
    t = target.float().reshape(-1, 2)
    m = mask.reshape(-1, 1)
    # torch.where, not multiplication by the mask: 0 * NaN would still be NaN.
    p = torch.where(m, p, torch.zeros((), device=p.device))
    t = torch.where(m, t, torch.zeros((), device=t.device))
    n = m.sum().to(p.dtype)
    denom = n.clamp_min(1.0)
    mp = p.sum(0) / denom
    mt = t.sum(0) / denom
    dp = torch.where(m, p - mp, torch.zeros((), device=p.device))
    dt = torch.where(m, t - mt, torch.zeros((), device=t.device))
    return {
        "mean_pred": mp,
        "mean_target": mt,
        "var_pred": (dp * dp).sum(0) / denom,
        "var_target": (dt * dt).sum(0) / denom,
        "cov": (dp * dt).sum(0) / denom,
        "mse": ((p - t) ** 2).sum(0) / denom,
        "n": n,
    }


def _ccc(s: dict[str, torch.Tensor], eps: float) -> torch.Tensor:
    # eps keeps the quotient finite when both sides are constant (or a single frame is valid).
    den = s["var_pred"] + s["var_target"] + (s["mean_pred"] - s["mean_target"]) ** 2 + eps
    return 2.0 * s["cov"] / den


def _pcc(s: dict[str, torch.Tensor], eps: float) -> torch.Tensor:
    return s["cov"] / torch.sqrt((s["var_pred"] + eps) * (s["var_target"] + eps))


def _rmse(s: dict[str, torch.Tensor], eps: float) -> torch.Tensor:
    # sqrt has an infinite slope at 0: a perfect prediction would give NaN gradients without eps.
    return torch.sqrt(s["mse"] + eps)


def masked_ccc(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-8
) -> torch.Tensor:
    """Differentiable CCC per dimension over the valid frames: ``(2,)`` (valence, arousal).

    pred, target: ``(..., 2)``; mask: ``(...)``. Population statistics, as in :func:`avfusion.metrics.ccc`;
    ``eps`` in the denominator makes degenerate batches give 0 instead of NaN.
    """
    return _ccc(masked_moments(pred, target, mask), eps)


class CCCLoss(nn.Module):
    """``sum_d w_d (1 - CCC_d)`` over valence and arousal, weights normalised to sum to 1.

    With the default equal weights this is ``1 - mean CCC``: 0 for a perfect prediction, 1 for an
    uncorrelated or constant one, 2 for a negated one. A batch without any valid frame gives 1 with
    zero gradients.
    """

    def __init__(self, weights: tuple[float, float] = (1.0, 1.0), eps: float = 1e-8) -> None:
        super().__init__()
        w = torch.as_tensor(weights, dtype=torch.float32)
        if w.shape != (2,) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(
                f"weights must be two non-negative numbers (valence, arousal), not both 0: {weights}"
            )
        self.register_buffer("weights", w / w.sum(), persistent=False)
        self.eps = eps

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """pred, target: ``(B, T, 2)`` (or any ``(..., 2)``); mask: ``(B, T)``."""
        s = masked_moments(pred, target, mask)
        c = _ccc(s, self.eps)
        loss = (self.weights.to(c.device) * (1.0 - c)).sum()
        return {
            "loss": loss,
            "ccc_valence": c[0].detach(),
            "ccc_arousal": c[1].detach(),
            "n_valid": s["n"].detach(),
        }


class EmoNetLoss(nn.Module):
    """EmoNet's training loss (Toisoul et al. 2021):
    ``CE(expression) + a RMSE + b (1 - PCC) + c (1 - CCC)``.

    In training, ``a, b, c`` are drawn from U[0, 1] at every call and normalised to sum to 1
    ("shake-shake"), from ``generator`` when given (a CPU ``torch.Generator``) for reproducible runs.
    In eval mode they are fixed at 1/3 each -- our choice, so that validation losses are
    deterministic and comparable between epochs. The regression terms are averaged over valence and
    arousal and computed over the valid frames; the expression term is a mean cross-entropy over
    frames whose label is not ``ignore_index`` (0 when no logits or no labelled frame are given).
    """

    def __init__(
        self, generator: torch.Generator | None = None, ignore_index: int = -1, eps: float = 1e-8
    ) -> None:
        super().__init__()
        if generator is not None and generator.device.type != "cpu":
            raise ValueError("generator must be a CPU torch.Generator (the weights are drawn on the CPU)")
        self.generator = generator
        self.ignore_index = ignore_index
        self.eps = eps

    def draw_weights(self) -> torch.Tensor:
        """``(3,)`` weights (a, b, c) for RMSE, 1 - PCC and 1 - CCC, summing to 1."""
        if not self.training:
            return torch.full((3,), 1.0 / 3.0)
        w = torch.rand(3, generator=self.generator)
        return w / w.sum().clamp_min(1e-12)

    def forward(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor | None = None,
        expression_logits: torch.Tensor | None = None,
        expression_target: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """pred, target: ``(B, T, 2)``; mask: ``(B, T)``; expression_logits: ``(B, T, K)``;
        expression_target: ``(B, T)`` int64 class indices, ``ignore_index`` where unknown."""
        s = masked_moments(pred, target, mask)
        rmse = _rmse(s, self.eps).mean()
        pcc = _pcc(s, self.eps).mean()
        cccs = _ccc(s, self.eps)
        ccc = cccs.mean()
        if expression_logits is not None:
            if expression_target is None:
                raise ValueError("expression_logits given without expression_target")
            if expression_logits.shape[:-1] != expression_target.shape:
                raise ValueError(
                    f"expression_logits {tuple(expression_logits.shape)} do not match expression_target "
                    f"{tuple(expression_target.shape)}"
                )
            logits = expression_logits.float().reshape(-1, expression_logits.shape[-1])
            labels = expression_target.reshape(-1).long()
            n_lab = (labels != self.ignore_index).sum().clamp_min(1)
            # Sum / count instead of reduction="mean": with every label ignored the mean is NaN.
            ce = F.cross_entropy(logits, labels, ignore_index=self.ignore_index, reduction="sum") / n_lab
        else:
            ce = pred.new_zeros((), dtype=torch.float32)
        w = self.draw_weights().to(pred.device)
        loss = ce + w[0] * rmse + w[1] * (1.0 - pcc) + w[2] * (1.0 - ccc)
        return {
            "loss": loss,
            "ce": ce.detach(),
            "rmse": rmse.detach(),
            "pcc": pcc.detach(),
            "ccc": ccc.detach(),
            "ccc_valence": cccs[0].detach(),
            "ccc_arousal": cccs[1].detach(),
            "weight_rmse": w[0],
            "weight_pcc": w[1],
            "weight_ccc": w[2],
            "n_valid": s["n"].detach(),
        }


_LOSSES: dict[str, type[nn.Module]] = {"ccc": CCCLoss, "emonet": EmoNetLoss}


def build_loss(name: str, **kwargs: Any) -> nn.Module:
    """The loss a name stands for: ``"ccc"`` (:class:`CCCLoss`) or ``"emonet"`` (:class:`EmoNetLoss`);
    keyword arguments go to its constructor."""
    if name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(_LOSSES)}")
    return _LOSSES[name](**kwargs)


__all__ = ["CCCLoss", "EmoNetLoss", "build_loss", "masked_ccc", "masked_moments"]
