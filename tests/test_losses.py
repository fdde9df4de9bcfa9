"""Losses: agreement with the numpy metrics, masks, degenerate batches, EmoNet's shake-shake weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from avfusion import metrics as M
from avfusion.losses import CCCLoss, EmoNetLoss, build_loss, masked_ccc


def _batch(seed: int = 0, b: int = 3, t: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(b, t, 2, generator=g) * 2 - 1
    pred = (0.6 * target + 0.4 * (torch.rand(b, t, 2, generator=g) * 2 - 1)).clamp(-1, 1)
    mask = torch.rand(b, t, generator=g) > 0.3
    return pred, target, mask


def test_ccc_loss_matches_numpy_metric() -> None:
    pred, target, mask = _batch()
    out = CCCLoss()(pred, target, mask)
    m = mask.numpy()
    ref = [M.ccc(pred[..., i].numpy()[m], target[..., i].numpy()[m]) for i in range(2)]
    assert out["ccc_valence"].item() == pytest.approx(ref[0], abs=1e-5)
    assert out["ccc_arousal"].item() == pytest.approx(ref[1], abs=1e-5)
    assert out["loss"].item() == pytest.approx(1 - (ref[0] + ref[1]) / 2, abs=1e-5)
    assert out["n_valid"].item() == m.sum()


def test_ccc_loss_hand_example_and_weights() -> None:
    # Valence: the 4-frame example of test_metrics (CCC 0.8); arousal: a perfect prediction.
    t = torch.tensor([-0.4, -0.2, 0.2, 0.4])
    p = torch.tensor([-0.2, 0.0, 0.0, 0.6])
    pred = torch.stack([p, t], -1)[None]
    target = torch.stack([t, t], -1)[None]
    c = masked_ccc(pred, target)
    assert c.tolist() == pytest.approx([0.8, 1.0], abs=1e-6)
    assert CCCLoss()(pred, target)["loss"].item() == pytest.approx(1 - 0.9, abs=1e-6)
    # Weights are normalised: (3, 1) means 0.75 * (1 - 0.8) + 0.25 * 0.
    assert CCCLoss(weights=(3.0, 1.0))(pred, target)["loss"].item() == pytest.approx(0.15, abs=1e-6)
    assert CCCLoss()(-target, target)["loss"].item() == pytest.approx(2.0, abs=1e-6)
    with pytest.raises(ValueError, match="weights"):
        CCCLoss(weights=(0.0, 0.0))


def test_masked_garbage_does_not_reach_loss_or_gradient() -> None:
    pred, target, mask = _batch(1)
    ref = CCCLoss()(pred, target, mask)["loss"]
    dirty_pred = torch.where(mask[..., None], pred, torch.full_like(pred, float("nan"))).requires_grad_(True)
    dirty_target = torch.where(mask[..., None], target, torch.full_like(target, -5.0))
    out = CCCLoss()(dirty_pred, dirty_target, mask)
    assert out["loss"].item() == pytest.approx(ref.item(), abs=1e-6)
    out["loss"].backward()
    assert torch.isfinite(dirty_pred.grad).all()
    assert (dirty_pred.grad[~mask] == 0).all()


@pytest.mark.parametrize("n_valid", [0, 1, 2])
def test_gradients_finite_with_nearly_empty_mask(n_valid: int) -> None:
    pred, target, _ = _batch(2)
    pred.requires_grad_(True)
    mask = torch.zeros(pred.shape[:2], dtype=torch.bool)
    mask.view(-1)[:n_valid] = True
    for loss_fn in (CCCLoss(), EmoNetLoss(generator=torch.Generator().manual_seed(0))):
        pred.grad = None
        out = loss_fn(pred, target, mask)
        assert torch.isfinite(out["loss"])
        out["loss"].backward()
        assert torch.isfinite(pred.grad).all()


def test_constant_batch_gives_zero_ccc_not_nan() -> None:
    target = torch.full((2, 5, 2), 0.3)
    pred = torch.full((2, 5, 2), 0.3, requires_grad=True)
    out = CCCLoss()(pred, target)
    assert out["ccc_valence"].item() == 0.0 and out["loss"].item() == pytest.approx(1.0)
    out["loss"].backward()
    assert torch.isfinite(pred.grad).all()


def test_emonet_loss_reproducible_and_weights_sum_to_one() -> None:
    pred, target, mask = _batch(3)
    logits = torch.randn(*mask.shape, 8, generator=torch.Generator().manual_seed(4))
    labels = torch.randint(0, 8, mask.shape, generator=torch.Generator().manual_seed(5))
    labels[0, :3] = -1
    runs = []
    for _ in range(2):
        loss_fn = build_loss("emonet", generator=torch.Generator().manual_seed(123)).train()
        runs.append([loss_fn(pred, target, mask, logits, labels) for _ in range(3)])
    for a, b in zip(*runs):
        assert a["loss"].item() == b["loss"].item()
        w = torch.stack([a["weight_rmse"], a["weight_pcc"], a["weight_ccc"]])
        assert w.sum().item() == pytest.approx(1.0, abs=1e-6) and (w >= 0).all()
    # A new draw at every step.
    assert runs[0][0]["weight_rmse"].item() != runs[0][1]["weight_rmse"].item()

    out = runs[0][0]
    keep = labels.view(-1) != -1
    ce = torch.nn.functional.cross_entropy(logits.view(-1, 8)[keep], labels.view(-1)[keep])
    assert out["ce"].item() == pytest.approx(ce.item(), abs=1e-5)
    m = mask.numpy()
    rmse = np.mean([M.rmse(pred[..., i].numpy()[m], target[..., i].numpy()[m]) for i in range(2)])
    pcc = np.mean([M.pcc(pred[..., i].numpy()[m], target[..., i].numpy()[m]) for i in range(2)])
    ccc = np.mean([M.ccc(pred[..., i].numpy()[m], target[..., i].numpy()[m]) for i in range(2)])
    assert out["rmse"].item() == pytest.approx(rmse, abs=1e-5)
    assert out["pcc"].item() == pytest.approx(pcc, abs=1e-5)
    assert out["ccc"].item() == pytest.approx(ccc, abs=1e-5)
    expected = ce + out["weight_rmse"] * rmse + out["weight_pcc"] * (1 - pcc) + out["weight_ccc"] * (1 - ccc)
    assert out["loss"].item() == pytest.approx(expected.item(), abs=1e-5)


def test_emonet_loss_eval_weights_and_missing_labels() -> None:
    pred, target, mask = _batch(6)
    loss_fn = EmoNetLoss().eval()
    out = loss_fn(pred, target, mask)
    assert [out[k].item() for k in ("weight_rmse", "weight_pcc", "weight_ccc")] == pytest.approx([1 / 3] * 3)
    assert out["ce"].item() == 0.0
    # Every expression label missing: CE is 0, not NaN.
    logits = torch.randn(*mask.shape, 5)
    out = loss_fn(pred, target, mask, logits, torch.full(mask.shape, -1))
    assert out["ce"].item() == 0.0 and torch.isfinite(out["loss"])
    assert out["loss"].item() == pytest.approx(loss_fn(pred, target, mask)["loss"].item())


def test_build_loss_and_shape_errors() -> None:
    assert isinstance(build_loss("ccc", weights=(1.0, 2.0)), CCCLoss)
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("mse")
    pred, target, mask = _batch()
    with pytest.raises(ValueError, match="boolean"):
        CCCLoss()(pred, target, mask.float())
    with pytest.raises(ValueError, match="mask has shape"):
        CCCLoss()(pred, target, mask[:, :-1])
    with pytest.raises(ValueError, match="target"):
        CCCLoss()(pred, target[:, :-1])
