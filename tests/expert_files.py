"""Writers of files in the published formats of the two expert networks, with deterministic
synthetic weights (no real weights anywhere): the tests of the encoders load them, and download tests
serve them from a local HTTP server.

Face expert ``enet_b0_8_va_mtl`` (EmotiEffLib): timm ``tf_efficientnet_b0`` with a 10-output classifier,
written as the pickled whole model (``torch.save(model)``), its ONNX export (opset 11 with the
TorchScript exporter, as EmotiEffLib's ``convert_pt_to_onnx.py`` does; BatchNorm folded into the convs)
or a safetensors state dict. Full size only (4 M parameters; a file is 16 MB).

Voice expert ``w2v2_msp_dim`` (audEERING ``wav2vec2-large-robust-12-ft-emotion-msp-dim``): a folder
with ``config.json``, ``preprocessor_config.json`` and ``model.safetensors`` or ``pytorch_model.bin``
with keys ``wav2vec2.*`` (``masked_spec_embed`` included) and ``classifier.dense|out_proj.*``; the
positional conv's weight norm as ``weight_g``/``weight_v`` ("old") or
``parametrizations.weight.original0/1`` ("new"). Full size (165 M parameters, 661 MB) or ``tiny``.

Everything here is built from timm / transformers directly, not from avfusion, so the files are an
independent reference for avfusion's loaders.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

ENET_ARCH = "tf_efficientnet_b0"
ENET_OUTPUTS = 10

# The published config.json of wav2vec2-large-robust-12-ft-emotion-msp-dim (architecture and training
# fields; the CTC / x-vector / codevector fields of its file do not change Wav2Vec2Model).
W2V2_MSP_DIM_CONFIG: dict = {
    "model_type": "wav2vec2",
    "architectures": ["Wav2Vec2ForSpeechClassification"],
    "activation_dropout": 0.1,
    "apply_spec_augment": True,
    "attention_dropout": 0.1,
    "conv_bias": True,
    "conv_dim": [512] * 7,
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "do_stable_layer_norm": True,
    "feat_extract_activation": "gelu",
    "feat_extract_dropout": 0.0,
    "feat_extract_norm": "layer",
    "feat_proj_dropout": 0.1,
    "final_dropout": 0.1,
    "finetuning_task": "wav2vec2_reg",
    "hidden_act": "gelu",
    "hidden_dropout": 0.1,
    "hidden_size": 1024,
    "id2label": {"0": "arousal", "1": "dominance", "2": "valence"},
    "label2id": {"arousal": 0, "dominance": 1, "valence": 2},
    "initializer_range": 0.02,
    "intermediate_size": 4096,
    "layer_norm_eps": 1e-05,
    "layerdrop": 0.1,
    "mask_feature_length": 10,
    "mask_feature_prob": 0.0,
    "mask_time_length": 10,
    "mask_time_prob": 0.05,
    "num_attention_heads": 16,
    "num_conv_pos_embedding_groups": 16,
    "num_conv_pos_embeddings": 128,
    "num_feat_extract_layers": 7,
    "num_hidden_layers": 12,
    "pooling_mode": "mean",
    "problem_type": "regression",
    "torch_dtype": "float32",
    "transformers_version": "4.17.0.dev0",
    "vocab_size": None,
}
# Same layout (stable layer norm, layer-norm conv stack with bias, weight-normed positional conv),
# small enough to build in milliseconds.
W2V2_TINY_OVERRIDES: dict = {
    "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
    "conv_dim": [32] * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4,
}
W2V2_PREPROCESSOR = {
    "do_normalize": True, "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1,
    "padding_side": "right", "padding_value": 0.0, "return_attention_mask": True, "sampling_rate": 16000,
}
_POS_CONV = "wav2vec2.encoder.pos_conv_embed.conv."


# --- face expert ----------------------------------------------------------------------------------


def _smooth_noise(g: torch.Generator, n: int, channels: int) -> torch.Tensor:
    import torch.nn.functional as F

    out = torch.zeros(n, channels, 224, 224)
    for side, weight in ((4, 1.0), (16, 0.5), (64, 0.25), (224, 0.1)):  # most energy at low frequencies
        noise = torch.randn(n, channels, side, side, generator=g)
        out += weight * F.interpolate(noise, size=(224, 224), mode="bilinear", align_corners=False)
    return out / out.std()


def enet_calibration_images(seed: int = 0, n: int = 4) -> torch.Tensor:
    """(n, 3, 224, 224) seeded image-like inputs (normalised scale): a shared luminance field with
    weaker colour, most energy at low spatial frequencies, per-image brightness."""
    g = torch.Generator().manual_seed(seed)
    return 1.2 * _smooth_noise(g, n, 1) + 0.3 * _smooth_noise(g, n, 3) + (torch.rand(n, 1, 1, 1, generator=g) - 0.5)


_ENET_CACHE: dict = {}  # seed -> the reference network; (seed, fold_bn) -> ONNX bytes (seconds each to make)


def enet_reference(seed: int = 0) -> nn.Module:
    """The same network for one ``seed`` in every test of a session (built once, :func:`_enet_reference`);
    callers must not change it."""
    if seed not in _ENET_CACHE:
        _ENET_CACHE[seed] = _enet_reference(seed)
    return _ENET_CACHE[seed]


def _enet_reference(seed: int = 0) -> nn.Module:
    """timm ``tf_efficientnet_b0`` (10 outputs) with synthetic weights from ``seed``, in eval().

    timm's initialisation of the convolutions; every BatchNorm its own seeded scale and shift, and
    running statistics measured on :func:`enet_calibration_images` (one train-mode pass). Random
    running statistics would leave the pooled feature almost independent of the image (a parity
    test would then prove nothing); measured ones keep it image-dependent with outputs of order 1.
    The statistics come from a forward pass, so the files are bitwise reproducible on one machine
    and library build, and agree to float rounding across them.
    """
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = timm.create_model(ENET_ARCH, pretrained=False, num_classes=ENET_OUTPUTS)
    g = torch.Generator().manual_seed(seed + 1)
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in norms:
            m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
            m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.reset_running_stats()
            m.momentum = None  # cumulative average: after one pass, that batch's statistics
        net.train()
        net(enet_calibration_images(seed))
        for m in norms:
            m.momentum = 0.1
            m.num_batches_tracked.fill_(1000)
        net.classifier.weight.copy_(0.05 * torch.randn(net.classifier.weight.shape, generator=g))
        net.classifier.weight[8:] *= 0.2  # valence, arousal: mostly inside [-1, 1], where nothing clips them
        net.classifier.bias.copy_(0.1 * torch.randn(ENET_OUTPUTS, generator=g))
    return net.eval()


def write_enet_pickle(path: Path | str, seed: int = 0, model: nn.Module | None = None) -> Path:
    """The published ``enet_b0_8_va_mtl.pt`` form: the whole model pickled with ``torch.save(model)``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model if model is not None else enet_reference(seed), path)
    return path


def write_enet_onnx(path: Path | str, seed: int = 0, model: nn.Module | None = None, fold_bn: bool = True) -> Path:
    """The published ``enet_b0_8_va_mtl.onnx`` form: opset 11, input ``input`` [N, 3, 224, 224], output
    ``output`` [N, 10], dynamic batch, constant folding (BatchNorm folded into the convolutions; with
    ``fold_bn=False`` BatchNormalization nodes are kept)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = (seed, fold_bn)
    if model is None and key in _ENET_CACHE:  # the session's export of the shared reference
        path.write_bytes(_ENET_CACHE[key])
        return path
    net = model if model is not None else enet_reference(seed)
    kwargs = {} if fold_bn else {"training": torch.onnx.TrainingMode.PRESERVE}
    with torch.no_grad():
        torch.onnx.export(
            net.eval(), torch.zeros(1, 3, 224, 224), str(path), opset_version=11, do_constant_folding=fold_bn,
            export_params=True, input_names=["input"], output_names=["output"],
            dynamic_axes={"input": {0: "batch_size"}, "output": {0: "batch_size"}}, dynamo=False, **kwargs,
        )
    if model is None or model is _ENET_CACHE.get(seed):
        _ENET_CACHE[key] = path.read_bytes()
    return path


def write_enet_safetensors(path: Path | str, seed: int = 0, model: nn.Module | None = None) -> Path:
    """A safetensors state dict with timm's key names (what ``avfusion download`` writes)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = model if model is not None else enet_reference(seed)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


# --- voice expert ---------------------------------------------------------------------------------


class W2V2Reference(nn.Module):
    """The audEERING model's layout: ``wav2vec2`` (transformers Wav2Vec2Model) + ``classifier``
    (dense -> tanh -> out_proj). Its state dict has exactly the published key names (new weight-norm
    naming in recent transformers)."""

    def __init__(self, config: dict) -> None:
        from transformers import Wav2Vec2Config, Wav2Vec2Model

        super().__init__()
        self.wav2vec2 = Wav2Vec2Model(Wav2Vec2Config(**config))
        hidden = config["hidden_size"]
        self.classifier = nn.Module()
        self.classifier.dense = nn.Linear(hidden, hidden)
        self.classifier.out_proj = nn.Linear(hidden, 3)


def w2v2_config(tiny: bool = False) -> dict:
    """The published config.json content (``tiny``: the same layout, small widths)."""
    cfg = copy.deepcopy(W2V2_MSP_DIM_CONFIG)
    if tiny:
        cfg.update(copy.deepcopy(W2V2_TINY_OVERRIDES))
    return cfg


def w2v2_reference(seed: int = 0, tiny: bool = False) -> W2V2Reference:
    """The voice expert's layout with synthetic weights from ``seed``, in eval(): transformers' own
    initialisation of the matrices, plus seeded noise on every vector (LayerNorms, biases, the
    positional conv's weight-norm gains, ``masked_spec_embed``) so that none is left at 0 or 1."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ref = W2V2Reference(w2v2_config(tiny))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if p.ndim == 1 or name.endswith("original0"):
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        # Outputs of order 0.1-1 at any width (transformers' std 0.02 would give ~0.05 at width 32).
        out = ref.classifier.out_proj.weight
        out.copy_(torch.randn(out.shape, generator=g) / out.shape[1] ** 0.5)
    return ref.eval()


def w2v2_published_state_dict(ref: W2V2Reference, weight_norm: str = "old") -> dict[str, torch.Tensor]:
    """The reference's state dict with the published key names, the weight norm named ``"old"``
    (``weight_g``/``weight_v``) or ``"new"`` (``parametrizations.weight.original0/1``)."""
    if weight_norm not in ("old", "new"):
        raise ValueError(f"weight_norm must be 'old' or 'new', got {weight_norm!r}")
    sd = {k: v.detach().clone().contiguous() for k, v in ref.state_dict().items()}
    g_new, v_new = _POS_CONV + "parametrizations.weight.original0", _POS_CONV + "parametrizations.weight.original1"
    if g_new not in sd:  # an old torch without parametrizations: already named weight_g / weight_v
        g_new, v_new = _POS_CONV + "weight_g", _POS_CONV + "weight_v"
    g_val, v_val = sd.pop(g_new), sd.pop(v_new)
    names = ("weight_g", "weight_v") if weight_norm == "old" else ("parametrizations.weight.original0",
                                                                   "parametrizations.weight.original1")
    sd[_POS_CONV + names[0]], sd[_POS_CONV + names[1]] = g_val, v_val
    return sd


def write_w2v2_folder(path: Path | str, seed: int = 0, weight_norm: str = "old", fmt: str = "safetensors",
                      tiny: bool = False, reference: W2V2Reference | None = None) -> Path:
    """Write the published folder layout: ``config.json``, ``preprocessor_config.json`` and
    ``model.safetensors`` (``fmt="safetensors"``) or ``pytorch_model.bin`` (``fmt="bin"``, a
    ``torch.save`` of the state dict). ``reference``: a model from :func:`w2v2_reference` to write
    instead of building one (its config must match ``tiny``). Returns the folder."""
    if fmt not in ("safetensors", "bin"):
        raise ValueError(f"fmt must be 'safetensors' or 'bin', got {fmt!r}")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    ref = reference if reference is not None else w2v2_reference(seed, tiny)
    sd = w2v2_published_state_dict(ref, weight_norm)
    (folder / "config.json").write_text(json.dumps(w2v2_config(tiny), indent=2))
    (folder / "preprocessor_config.json").write_text(json.dumps(W2V2_PREPROCESSOR, indent=2))
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(sd, folder / "pytorch_model.bin")
    return folder


def w2v2_reference_outputs(ref: W2V2Reference, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the published model card computes for unpadded (B, S) waveforms: per-row zero-mean
    unit-variance normalisation (variance + 1e-7), ``last_hidden_state`` mean-pooled over time, then
    dense -> tanh -> out_proj. Returns (pooled (B, hidden), outputs (B, 3): arousal, dominance, valence)."""
    x = wave.double()
    x = (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, unbiased=False, keepdim=True) + 1e-7)
    with torch.no_grad():
        hidden = ref.wav2vec2(x.float()).last_hidden_state
        pooled = hidden.mean(1)
        h = torch.tanh(pooled @ ref.classifier.dense.weight.T + ref.classifier.dense.bias)
        out = h @ ref.classifier.out_proj.weight.T + ref.classifier.out_proj.bias
    return pooled, out


__all__ = ["enet_reference", "enet_calibration_images", "write_enet_pickle", "write_enet_onnx",
           "write_enet_safetensors", "W2V2Reference", "w2v2_config", "w2v2_reference", "w2v2_published_state_dict",
           "write_w2v2_folder", "w2v2_reference_outputs", "W2V2_MSP_DIM_CONFIG", "W2V2_TINY_OVERRIDES",
           "W2V2_PREPROCESSOR"]
