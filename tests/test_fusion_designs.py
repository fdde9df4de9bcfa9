"""Fusion designs (gated vs joint) and temporal modules (transformer, GRU, LSTM): what each promises."""
import numpy as np
import pytest
import torch

from avfusion import create_model
from avfusion.config import AudioEncoderConfig, FusionConfig, ModelConfig, VideoEncoderConfig
from avfusion.losses import CCCLoss
from avfusion.fusion import fit_mix
from avfusion.train.loop import loss_weights, training_loss

BASE = {"d_model": 16, "n_layers": 2, "n_heads": 2, "dropout": 0.0, "max_len": 32, "modality_dropout": 0.0}
KINDS = [(d, t) for d in ("gated", "joint") for t in ("transformer", "gru", "lstm")]


def model_of(mode="av", **fusion):
    torch.manual_seed(0)
    return create_model(ModelConfig(mode=mode, video=VideoEncoderConfig(name="features", dim=12),
                                    audio=AudioEncoderConfig(name="features", dim=10),
                                    fusion=FusionConfig(**{**BASE, **fusion})))


def inputs(B=2, T=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"video_feats": torch.randn(B, T, 12, generator=g), "audio_feats": torch.randn(B, T, 10, generator=g)}


@pytest.mark.parametrize("design,temporal", KINDS)
def test_padding_at_the_end_of_a_window_changes_nothing(design, temporal):
    """A window padded to the batch's length gives its real frames the values it has alone
    (recurrent layers pack the padding away; attention masks it)."""
    model = model_of(design=design, temporal=temporal).eval()
    x = inputs(B=1, T=10)
    alone = model(**{k: v[:, :7] for k, v in x.items()})
    padded = {k: v.clone() for k, v in x.items()}
    padded["video_feats"][:, 7:] = 1e3
    mask = torch.zeros(1, 10, dtype=torch.bool)
    mask[:, :7] = True
    out = model(**padded, mask=mask)
    for key in ("valence", "arousal"):
        torch.testing.assert_close(out[key][:, :7], alone[key], atol=1e-5, rtol=1e-5)
        assert out[key].abs().max() <= 1


@pytest.mark.parametrize("temporal", ["transformer", "gru", "lstm"])
def test_gated_model_without_one_sense_is_its_other_senses_branch(temporal):
    """With the audio hidden, the gated model's output is exactly its video head (no joint head, no
    audio head in the mix); with the video hidden, exactly its audio head."""
    model = model_of(design="gated", temporal=temporal).eval()
    fusion = model.fusion
    x = inputs()
    pad = torch.ones(2, 10, dtype=torch.bool)
    for hidden, kept in (("audio", "video"), ("video", "audio")):
        kwargs = dict(x)
        if hidden == "audio":
            kwargs["audio_valid"] = torch.zeros(2, dtype=torch.bool)
        else:
            kwargs["face_mask"] = torch.zeros(2, 10, dtype=torch.bool)
        out = model(**kwargs)
        i = fusion.modalities.index(kept)
        tok = fusion.proj[kept](x[f"{kept}_feats"]) + fusion.modality_emb[i] + fusion.time_emb[:10]
        branch = fusion.branches[kept]([tok], [pad], pad)[0]
        expected = torch.tanh(fusion.branch_heads[kept](branch))
        torch.testing.assert_close(out["valence"], expected[..., 0])
        torch.testing.assert_close(out["arousal"], expected[..., 1])
        gate = out["gate"]  # (B, T, 2, sources): video, audio, joint
        assert torch.all(gate[..., fusion.modalities.index(hidden)] == 0) and torch.all(gate[..., -1] == 0)


@pytest.mark.parametrize("gate", ["validation", "learned"])
def test_gate_is_a_per_dimension_mix_and_heads_get_their_own_loss(gate):
    model = model_of(design="gated", gate=gate)
    x = inputs()
    out = model(**x)
    weights = out["gate"]
    assert weights.shape == (2, 10, 2, 3)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 10, 2))
    torch.testing.assert_close((weights * out["heads"]).sum(-1), torch.stack([out["valence"], out["arousal"]], -1))
    assert set(out["aux"]) == {"video", "audio", "joint"}
    batch = {"valence": torch.rand(2, 10) * 2 - 1, "arousal": torch.rand(2, 10) * 2 - 1,
             "mask": torch.ones(2, 10, dtype=torch.bool)}
    target = torch.stack([batch["valence"], batch["arousal"]], -1)
    loss_fn = CCCLoss()
    final = loss_fn(torch.stack([out["valence"], out["arousal"]], -1), target, batch["mask"])["loss"]
    heads = torch.stack([loss_fn(p, target, m)["loss"] for p, m in out["aux"].values()]).mean()
    w = loss_weights(model)
    assert w == ((0.0, 1.0) if gate == "validation" else (1.0, 1.0))
    loss = training_loss(loss_fn, out, batch, w)
    torch.testing.assert_close(loss, w[0] * final + w[1] * heads)
    loss.backward()  # every head learns from its own loss
    for m in ("video", "audio"):
        assert model.fusion.branch_heads[m].weight.grad.abs().sum() > 0
    # in evaluation mode there is no auxiliary output
    assert "aux" not in model.eval()(**x)


def test_validation_fitted_mix_takes_each_dimension_from_the_head_that_knows_it():
    """Stacking on held-out frames: valence from the head that predicts it, arousal from the other;
    the fitted weights are part of the saved model."""
    rng = np.random.default_rng(0)
    y = rng.uniform(-1, 1, (400, 2))
    noise = rng.normal(0, 1, (400, 2))
    heads = np.stack([np.stack([y[:, 0], noise[:, 0]], -1),      # head 0 knows valence only
                      np.stack([noise[:, 1], y[:, 1]], -1),      # head 1 knows arousal only
                      0.5 * y + 0.5 * noise], axis=-1)           # head 2 half of each
    present = np.ones((400, 3), dtype=bool)
    w = fit_mix(heads, present, y)
    np.testing.assert_allclose(w, [[1, 0, 0], [0, 1, 0]])
    # a head missing at some frames: the mix renormalises over the heads present
    present[:200, 0] = False
    w2 = fit_mix(heads, present, y)
    assert w2[0, 0] >= 0.9 and w2.sum(1) == pytest.approx([1, 1])
    model = model_of(design="gated").eval()
    model.fusion.set_mix(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
    out = model(**inputs())
    torch.testing.assert_close(out["valence"], out["heads"][..., 0, 0])
    torch.testing.assert_close(out["arousal"], out["heads"][..., 1, 1])
    assert "fusion.mix" in model.state_dict()
    with pytest.raises(ValueError, match="non-negative"):
        model.fusion.set_mix(torch.tensor([[1.0, -1, 0], [0, 1.0, 0]]))


def test_single_sense_models_and_bad_options():
    for mode in ("video", "audio"):
        out = model_of(mode, design="gated")(**inputs())
        assert out["valence"].shape == (2, 10) and not out.get("aux")
    with pytest.raises(ValueError, match="fusion.temporal must be one of transformer, gru, lstm"):
        model_of(temporal="tcn")
    with pytest.raises(ValueError, match="fusion.design must be one of"):
        model_of(design="late")
    with pytest.raises(ValueError, match="even"):
        model_of(temporal="gru", d_model=15, n_heads=1)


def test_gaps_to_each_sense_and_the_trust_they_give():
    from avfusion.fusion import reliability, source_gaps

    pad = torch.tensor([[True] * 8 + [False] * 2])
    seen = torch.tensor([[True, True, False, False, False, True, True, True, True, True]])
    never = torch.zeros(1, 10, dtype=torch.bool)
    gap = source_gaps([seen, never], pad)
    assert gap[0, :, 0].tolist()[:8] == [0, 0, 1, 2, 1, 0, 0, 0]  # to the nearest frame it is seen
    assert torch.isinf(gap[0, :, 1]).all()  # nowhere in the window
    trust = reliability(gap, torch.tensor([[0.0, 4.0], [2.0, 4.0]]))  # (B, T, 2 dims, S)
    assert trust[0, 3, 0, 0] == 0 and trust[0, 0, 0, 0] == 1  # decay 0: only where present
    assert trust[0, 3, 1, 0] == pytest.approx(np.exp(-2 / 2.0))
    assert (trust[0, :, :, 1] == 0).all()


def test_fitted_decay_lets_a_head_cover_the_gaps_of_its_sense_when_it_knows_them():
    """Two heads that each know arousal about as well, one of them also through its sense's pauses
    (its context: a recurrent audio branch across a pause): averaging them is best, in the pauses
    too, which only a decay allows; without one the mix drops the voice head there."""
    from avfusion.fusion import fit_mix_decay, mix_weights_numpy

    rng = np.random.default_rng(0)
    N = 1000  # ~400 pause frames: the fitted decay, the weights and the pause mix hold for other seeds too
    y = rng.uniform(-1, 1, (N, 2))
    gap = np.zeros((N, 3))
    gap[:, 1] = np.where(rng.random(N) < 0.4, rng.integers(1, 6, N), 0)  # the voice pauses
    gap[:, 2] = np.maximum(gap[:, 0], gap[:, 1])
    heads = y[:, :, None] + 0.4 * rng.normal(0, 1, (N, 2, 3))  # independent errors
    heads[:, :, 2] = rng.normal(0, 1, (N, 2))  # a joint head that knows nothing
    w, decay = fit_mix_decay(heads, gap, y)
    assert decay[1, 1] > 0 and w[1, 2] <= 0.1
    pauses = gap[:, 1] > 0
    assert mix_weights_numpy(w, gap, decay)[pauses, 1, 1].mean() > 0.3  # the voice head heard in its pauses
    assert mix_weights_numpy(w, gap, np.zeros((2, 3)))[pauses, 1, 1].max() == 0  # not without a decay
    model = model_of(design="gated", reliability=True).eval()
    model.fusion.set_mix(torch.from_numpy(w), torch.from_numpy(decay))
    assert "fusion.decay" in model.state_dict()
    with pytest.raises(ValueError, match="decays"):
        model.fusion.set_mix(torch.from_numpy(w), torch.full((2, 3), -1.0))


def test_frame_dropout_hides_one_sense_over_a_stretch_never_both():
    from avfusion.fusion import frame_dropout

    B, T = 64, 20
    avail = {"video": torch.ones(B, T, dtype=torch.bool), "audio": torch.ones(B, T, dtype=torch.bool)}
    avail["audio"][:8, 5:10] = False  # a real pause: the face is never hidden there
    out = frame_dropout(avail, 1.0, torch.Generator().manual_seed(0))
    assert (out["video"] | out["audio"]).all()  # at every frame one sense stays
    assert out["video"][:8, 5:10].all()
    lost = {m: avail[m] & ~out[m] for m in avail}
    n_lost = lost["video"].sum(1) + lost["audio"].sum(1)
    assert (n_lost > 0).all() and not (lost["video"].any(1) & lost["audio"].any(1)).any()  # one sense per clip
    for b in range(8, B):  # a single run of 20-50 % of the window
        m = lost["video"][b] | lost["audio"][b]
        idx = torch.nonzero(m).squeeze(1)
        assert 4 <= len(idx) <= 10 and int(idx[-1] - idx[0]) + 1 == len(idx)
    assert frame_dropout(avail, 0.0) is avail


def test_a_sense_alone_is_heard_even_where_the_mix_never_picked_it():
    """Valence fitted to the joint head alone: where the face is missing the joint head is not
    there, and the output is the voice head (the sense present), not a mix over absent heads."""
    model = model_of(design="gated").eval()
    model.fusion.set_mix(torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))
    x = inputs()
    face = torch.ones(2, 10, dtype=torch.bool)
    face[:, 3:7] = False
    out = model(**x, face_mask=face)
    torch.testing.assert_close(out["valence"][:, 3:7], out["heads"][:, 3:7, 0, 1])  # the voice head
    torch.testing.assert_close(out["valence"][:, :3], out["heads"][:, :3, 0, 2])    # the joint head
    none = model(**x, face_mask=face, audio_valid=torch.zeros(2, dtype=torch.bool))
    torch.testing.assert_close(none["valence"][:, 3:7], none["heads"][:, 3:7, 0, 2])  # nothing present: the mix
