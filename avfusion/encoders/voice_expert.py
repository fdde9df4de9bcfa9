"""The published voice expert ``w2v2_msp_dim`` (audEERING ``wav2vec2-large-robust-12-ft-emotion-msp-dim``,
CC BY-NC-SA 4.0; wav2vec2-large-robust pruned to 12 layers, fine-tuned on MSP-Podcast) as an audio
encoder (``audio.name: w2v2_msp_dim``).

Model: ``wav2vec2`` = transformers ``Wav2Vec2Model`` (hidden 1024, 12 stable-layer-norm layers, 16
heads, FFN 4096, a layer-norm conv stack with bias, a weight-normed positional conv of kernel 128 in
16 groups; :data:`MSP_DIM_CONFIG`) and ``classifier`` = dense 1024->1024, tanh, out_proj 1024->3
over ``last_hidden_state.mean(1)``. Input: 16 kHz mono, each input normalised to zero mean and unit
variance (variance + 1e-7), as Wav2Vec2FeatureExtractor with do_normalize. Outputs
:data:`OUTPUTS` = arousal, dominance, valence, roughly in 0..1.

Files: the published folder (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``, keys
``wav2vec2.*`` with an unused ``masked_spec_embed`` and ``classifier.dense|out_proj.*``; the
positional conv's weight norm as ``weight_g``/``weight_v`` in old saves,
``parametrizations.weight.original0/1`` in new ones). :func:`convert_voice_expert` reads either into
one naming (the published prefixes, the weight norm as the installed transformers names it), which
is also what ``avfusion download`` writes back as ``config.json`` + ``model.safetensors``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..config import AudioEncoderConfig
from ..timing import conv_output_length
from ..weights import key_problems, load_strict, read_weights
from .wav2vec2 import Wav2Vec2Encoder, wave_lengths

OUTPUTS = ("arousal", "dominance", "valence")
# The architecture fields of the published config.json (transformers 4.17): what Wav2Vec2Model and
# the head are built from when no folder is given; `audio.hf_config` overrides single fields.
MSP_DIM_CONFIG: dict = {
    "model_type": "wav2vec2",
    "hidden_size": 1024,
    "num_hidden_layers": 12,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "hidden_act": "gelu",
    "do_stable_layer_norm": True,
    "feat_extract_norm": "layer",
    "feat_extract_activation": "gelu",
    "conv_bias": True,
    "conv_dim": [512] * 7,
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "num_feat_extract_layers": 7,
    "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16,
    "layer_norm_eps": 1e-5,
    "activation_dropout": 0.1,
    "attention_dropout": 0.1,
    "hidden_dropout": 0.1,
    "feat_proj_dropout": 0.1,
    "final_dropout": 0.1,
    "layerdrop": 0.1,
    "apply_spec_augment": True,
    "mask_time_prob": 0.05,
    "mask_time_length": 10,
    "mask_feature_prob": 0.0,
    "mask_feature_length": 10,
    "id2label": {"0": "arousal", "1": "dominance", "2": "valence"},
    "label2id": {"arousal": 0, "dominance": 1, "valence": 2},
}
# `layer: output`: the encoder's last_hidden_state (after the final LayerNorm of stable-layer-norm
# models), the sequence the published head mean-pools. `hidden_states[-1]` is before that LayerNorm.
OUTPUT_LAYER = "output"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_POS_CONV = "encoder.pos_conv_embed.conv."
_WEIGHT_NORM = {  # old torch.nn.utils.weight_norm names -> torch.nn.utils.parametrizations names
    "weight_g": "parametrizations.weight.original0",
    "weight_v": "parametrizations.weight.original1",
}


class RegressionHead(nn.Module):
    """The published head: dropout -> dense -> tanh -> dropout -> out_proj (keys ``dense``, ``out_proj``)."""

    def __init__(self, hidden_size: int, n_outputs: int = len(OUTPUTS), dropout: float = 0.1) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden_size, n_outputs)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:  # (B, H) -> (B, n_outputs)
        return self.out_proj(self.dropout(torch.tanh(self.dense(self.dropout(pooled)))))


def msp_dim_hf_config(overrides: Mapping[str, Any] | None = None) -> dict:
    """The published architecture with ``overrides`` (tiny test models: hidden_size, conv_dim, ...)."""
    return {**MSP_DIM_CONFIG, **dict(overrides or {})}


class VoiceExpertEncoder(Wav2Vec2Encoder):
    """The voice expert: :meth:`utterance` gives the published arousal/dominance/valence per input;
    :meth:`forward_features` the frame-aligned features of ``layer`` (default ``"output"``: the
    sequence the head pools; an int indexes ``hidden_states``; ``"weighted"`` a learned mix) for a
    fusion model. Frozen (the default): no gradients, eval() throughout, the head included.
    """

    # Its own head gives arousal, dominance and valence per utterance (not per frame).
    utterance_outputs = OUTPUTS

    def __init__(
        self,
        model: Any,
        layer: int | str = OUTPUT_LAYER,
        frozen: bool = True,
        normalize: bool = True,
        use_attention_mask: bool | None = None,
    ) -> None:
        output_layer = layer == OUTPUT_LAYER
        super().__init__(model, layer=-1 if output_layer else layer, frozen=frozen, normalize=normalize,
                         use_attention_mask=use_attention_mask)
        # Wav2Vec2Encoder indexes hidden_states with self.layer (-1 for "output"); the name is kept here.
        self.layer_name = layer
        self._output_layer = output_layer
        config = model.config
        dropout = float(getattr(config, "final_dropout", 0.0))
        self.classifier = RegressionHead(int(config.hidden_size), len(OUTPUTS), dropout)
        if frozen:
            self.classifier.requires_grad_(False)
            self.classifier.eval()

    @classmethod
    def from_config(cls, cfg: AudioEncoderConfig) -> "VoiceExpertEncoder":
        """``cfg.path``: the published folder (or one :func:`convert_voice_expert` wrote); else the
        published architecture with ``cfg.hf_config`` overrides and random weights."""
        if cfg.path:
            return cls.from_pretrained(cfg.path, layer=cfg.layer, frozen=cfg.frozen)
        from transformers import Wav2Vec2Config, Wav2Vec2Model

        model = Wav2Vec2Model(Wav2Vec2Config(**msp_dim_hf_config(cfg.hf_config)))
        return cls(model, layer=cfg.layer, frozen=cfg.frozen)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, layer: int | str = OUTPUT_LAYER, frozen: bool = True
    ) -> "VoiceExpertEncoder":
        """Load the published folder strictly (see :func:`convert_voice_expert`), in float32, offline."""
        from transformers import Wav2Vec2Config, Wav2Vec2Model

        config, sd = convert_voice_expert(Path(path))
        folder = Path(path) if Path(path).is_dir() else Path(path).parent
        prep_file = folder / "preprocessor_config.json"
        prep = _read_json(prep_file) if prep_file.is_file() else {}
        # Built without initialising (seconds for 165 M weights): the strict load below overwrites
        # every tensor of its state dict, and the model has no tensors outside it.
        with torch.device("meta"):
            model = Wav2Vec2Model(Wav2Vec2Config(**config))
        if set(model.state_dict()) >= {n for n, _ in model.named_buffers()}:
            model = model.to_empty(device="cpu")
        else:
            model = Wav2Vec2Model(Wav2Vec2Config(**config))
        enc = cls(model, layer=layer, frozen=frozen, normalize=bool(prep.get("do_normalize", True)),
                  use_attention_mask=prep.get("return_attention_mask"))
        enc.load_published(sd, source=str(_weights_file(Path(path))))
        return enc

    def load_published(self, state_dict: Mapping[str, torch.Tensor], source: str = "voice expert state dict") -> None:
        """Load a state dict in the published naming (``wav2vec2.*``, ``classifier.*``; the output of
        :func:`convert_voice_expert`) strictly; the learned layer mix, if any, keeps its start."""
        own = self.state_dict()
        sd: dict[str, torch.Tensor] = {}
        for key, value in state_dict.items():
            sd["model." + key[len("wav2vec2."):] if key.startswith("wav2vec2.") else key] = value
        filled = {k for k in ("layer_weights",) if k in own and k not in sd}
        for k in filled:
            sd[k] = own[k]

        def filter_fn(raw: Any, module: nn.Module, name: str) -> tuple[dict[str, torch.Tensor], set[str]]:
            return dict(raw), filled

        try:
            load_strict(self, sd, filter_fn, family="voice expert weight")
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None

    def hf_config_dict(self) -> dict:
        """The architecture as Wav2Vec2Config keyword arguments; every published field is spelled out,
        so that ``msp_dim_hf_config(this)`` rebuilds exactly this model (exports)."""
        full = self.model.config.to_dict()
        out = {k: full[k] for k in MSP_DIM_CONFIG if k in full}
        out.update(self.model.config.to_diff_dict())
        return json.loads(json.dumps(out))  # JSON types only (id2label keys become strings)

    def train(self, mode: bool = True) -> "VoiceExpertEncoder":
        super().train(mode)
        if self.frozen:
            self.classifier.eval()
        return self

    def _final_norm(self, h: torch.Tensor) -> torch.Tensor:
        # Stable-layer-norm encoders end with a LayerNorm that hidden_states does not include.
        if self.model.config.do_stable_layer_norm:
            return self.model.encoder.layer_norm(h)
        return h

    def hidden_states(
        self, wave: torch.Tensor, wave_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`Wav2Vec2Encoder.hidden_states`, with ``layer: output`` giving ``last_hidden_state``."""
        feats, n_valid = super().hidden_states(wave, wave_mask)
        if self._output_layer:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
                feats = self._final_norm(feats)
        return feats, n_valid

    def pooled(self, wave: torch.Tensor, wave_mask: torch.Tensor | None = None) -> torch.Tensor:
        """wave: (B, S) 16 kHz, wave_mask: (B, S) True on real samples (padding at the end).

        -> (B, hidden): ``last_hidden_state`` averaged over each row's real feature frames. An
        unpadded row is run exactly as the published model card runs it (no attention mask).
        """
        lengths = wave_lengths(wave, wave_mask)
        x = self._prepare(wave, lengths).to(self.model.dtype)
        padded = bool((lengths != x.shape[1]).any())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            if padded and not self.use_attention_mask:
                last = self._final_norm(self._rowwise_states(x, lengths)[-1])
            else:
                mask = None
                if padded:  # as Wav2Vec2Encoder.hidden_states: at least one frame of (silent) input
                    attend = lengths.clamp(min=self.receptive_field)
                    mask = (torch.arange(x.shape[1], device=x.device)[None, :] < attend[:, None]).long()
                last = self.model(x, attention_mask=mask).last_hidden_state
        n_valid = conv_output_length(lengths, self.model.config.conv_kernel, self.model.config.conv_stride)
        n_valid = n_valid.clamp(min=1, max=last.shape[1])
        keep = (torch.arange(last.shape[1], device=last.device)[None, :] < n_valid[:, None]).to(last.dtype)
        return (last * keep[..., None]).sum(1) / n_valid[:, None].to(last.dtype)

    def utterance(self, wave: torch.Tensor, wave_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """wave: (B, S) 16 kHz mono (normalised here, per row).

        Returns ``arousal``, ``dominance``, ``valence`` (B,): the published head's outputs, unmapped
        (roughly 0..1), and ``pooled`` (B, hidden), the embedding the head reads.
        """
        pooled = self.pooled(wave, wave_mask)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            out = self.classifier(pooled)
        res = {name: out[:, i] for i, name in enumerate(OUTPUTS)}
        res["pooled"] = pooled
        return res


# --- files --------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"{path}: not a readable JSON file ({type(e).__name__}: {first})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _weights_file(src: Path) -> Path:
    if src.is_file():
        return src
    for name in WEIGHT_FILES:
        if (src / name).is_file():
            return src / name
    raise FileNotFoundError(f"{src}: no voice expert weights ({' or '.join(WEIGHT_FILES)}); expected the folder of "
                            f"wav2vec2-large-robust-12-ft-emotion-msp-dim (config.json + model.safetensors)")


def convert_voice_expert(src: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The HF config dict and the state dict of the voice expert, from its folder (or a weight file
    in it, beside its ``config.json``).

    The state dict has the published prefixes (``wav2vec2.*``, ``classifier.dense|out_proj.*``), the
    positional conv's weight norm named as the installed transformers names it, float32 tensors, and
    ``wav2vec2.masked_spec_embed`` exactly when the architecture has one (only SpecAugment in
    training reads it; zeros when a file lacks it). Raises FileNotFoundError when files are missing
    and a one-line ValueError naming the file when its content is not the voice expert.
    """
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"voice expert folder not found: {src}")
    folder = src if src.is_dir() else src.parent
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no config.json; expected the folder of "
                                f"wav2vec2-large-robust-12-ft-emotion-msp-dim (config.json + model.safetensors)")
    config = _read_json(folder / "config.json")
    if config.get("model_type", "wav2vec2") != "wav2vec2":
        raise ValueError(f"{folder / 'config.json'}: model_type {config.get('model_type')!r}, expected 'wav2vec2'")
    labels = config.get("id2label")
    if labels is not None and [labels.get(str(i), labels.get(i)) for i in range(len(labels))] != list(OUTPUTS):
        raise ValueError(f"{folder / 'config.json'}: outputs {labels} are not {list(OUTPUTS)} (the published order)")
    wfile = _weights_file(src)
    raw = read_weights(wfile, "voice expert weight")
    return config, _canonical_state_dict(raw, config, wfile)


def _canonical_state_dict(raw: Any, config: dict, wfile: Path) -> dict[str, torch.Tensor]:
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    if not isinstance(raw, Mapping) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in raw.items()):
        raise ValueError(f"{wfile}: expected a state dict (names -> tensors), got {type(raw).__name__}")
    with torch.device("meta"):  # shapes only: nothing allocated
        backbone = Wav2Vec2Model(Wav2Vec2Config(**config)).state_dict()
    hidden = int(config.get("hidden_size", 768))
    expected = {f"wav2vec2.{k}": v for k, v in backbone.items()}
    expected.update({"classifier.dense.weight": torch.empty(hidden, hidden, device="meta"),
                     "classifier.dense.bias": torch.empty(hidden, device="meta"),
                     "classifier.out_proj.weight": torch.empty(len(OUTPUTS), hidden, device="meta"),
                     "classifier.out_proj.bias": torch.empty(len(OUTPUTS), device="meta")})
    new_naming = f"wav2vec2.{_POS_CONV}parametrizations.weight.original0" in expected
    sd: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        value = (value.float() if value.is_floating_point() else value).contiguous()
        if key.startswith(f"wav2vec2.{_POS_CONV}"):
            key = _weight_norm_name(key, new_naming)
        sd[key] = value
    plain = f"wav2vec2.{_POS_CONV}weight"
    if plain in sd and plain not in expected:  # weight norm already folded: split it back (w = g * v / |v|)
        w = sd.pop(plain)
        names = [_weight_norm_name(f"wav2vec2.{_POS_CONV}{n}", new_naming) for n in ("weight_g", "weight_v")]
        sd[names[0]], sd[names[1]] = w.norm(dim=(0, 1), keepdim=True), w
    spec = "wav2vec2.masked_spec_embed"
    if spec in expected and spec not in sd:
        sd[spec] = torch.zeros(expected[spec].shape)
    elif spec in sd and spec not in expected:
        del sd[spec]
    problems = key_problems(expected, sd)
    if problems:
        raise ValueError(f"{wfile}: does not fit the voice expert (Wav2Vec2Model + regression head) of its "
                         f"config.json: " + "; ".join(problems))
    return sd


def _weight_norm_name(key: str, new_naming: bool) -> str:
    for old, new in _WEIGHT_NORM.items():
        if new_naming and key.endswith("." + old):
            return key[: -len(old)] + new
        if not new_naming and key.endswith("." + new):
            return key[: -len(new)] + old
    return key


__all__ = ["VoiceExpertEncoder", "RegressionHead", "convert_voice_expert", "msp_dim_hf_config", "MSP_DIM_CONFIG",
           "OUTPUTS", "OUTPUT_LAYER", "WEIGHT_FILES"]
