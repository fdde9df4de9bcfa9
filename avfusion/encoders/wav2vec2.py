"""wav2vec2 audio encoder (transformers' Wav2Vec2Model) with features aligned to video frames.

The timing rules (feature frame ``j`` at the centre of its receptive field, video frames sampled
at their centres, linear interpolation) live in :mod:`avfusion.timing`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AudioEncoderConfig
from ..timing import conv_geometry, conv_output_length, resample_to_frames
from .base import AudioEncoder

if TYPE_CHECKING:  # transformers is imported where a model is built: the time helpers stay light
    from transformers import Wav2Vec2Model

def _read_preprocessor(folder: Path) -> dict:
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return {}
    with open(path) as f:
        return json.load(f)


def wave_lengths(wave: torch.Tensor, wave_mask: "torch.Tensor | None") -> torch.Tensor:
    """(B,) real samples of each row of ``wave`` (B, S): all of them without ``wave_mask``, else the
    mask's count (True on real samples, padding at the end); a wave of another shape is refused."""
    if wave.ndim != 2:
        raise ValueError(f"wave must be (B, S), got {tuple(wave.shape)}")
    if wave_mask is None:
        return torch.full((wave.shape[0],), wave.shape[1], dtype=torch.long, device=wave.device)
    if wave_mask.shape != wave.shape:
        raise ValueError(f"wave_mask {tuple(wave_mask.shape)} must match wave {tuple(wave.shape)}")
    return wave_mask.long().sum(1)


class Wav2Vec2Encoder(AudioEncoder):
    """Wav2Vec2Model features of one hidden layer, or a learned softmax-weighted sum of all of them.

    ``layer`` indexes ``hidden_states`` (0 = the input of the first Transformer layer: feature
    projection + convolutional position embedding; -1 = the last layer's output, which for
    stable-layer-norm models such as large-lv60 is, in transformers 5, before the final LayerNorm),
    or ``"weighted"``. The weights of the sum stay trainable when the backbone is frozen. A frozen
    backbone gets no gradients and stays in eval(), because in train mode wav2vec2 applies SpecAugment
    masking (``mask_time_prob``) and layer drop.

    Layer drop is switched off in any case: a dropped layer leaves no entry in ``hidden_states``, so the
    indices (and the weighted sum) would silently shift.
    """

    def __init__(
        self,
        model: Wav2Vec2Model,
        layer: int | str = -1,
        frozen: bool = True,
        normalize: bool = True,
        use_attention_mask: bool | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        config = model.config
        config.layerdrop = 0.0
        n_states = config.num_hidden_layers + 1
        if layer == "weighted":
            self.layer_weights = nn.Parameter(torch.zeros(n_states))  # softmax(0) = uniform to start
        elif isinstance(layer, int) and not isinstance(layer, bool) and -n_states <= layer < n_states:
            self.layer_weights = None
        else:
            raise ValueError(f"wav2vec2 layer must be 'weighted' or an int in [{-n_states}, {n_states - 1}], got {layer!r}")
        self.layer = layer
        self.num_features = int(config.hidden_size)
        self.hop, self.receptive_field = conv_geometry(config.conv_kernel, config.conv_stride)
        # Wav2Vec2FeatureExtractor's do_normalize: zero mean, unit variance per utterance.
        self.normalize = normalize
        # Models whose first conv uses group norm (wav2vec2-base) were trained on zero-padded input
        # without an attention mask; layer-norm models (large-lv60, XLS-R) take one.
        self.use_attention_mask = config.feat_extract_norm == "layer" if use_attention_mask is None else use_attention_mask
        self.frozen = frozen
        if frozen:
            self.model.requires_grad_(False)
            self.model.eval()

    def hf_config_dict(self) -> dict:
        """The architecture as Wav2Vec2Config keyword arguments (exports rebuild it without the folder)."""
        return self.model.config.to_diff_dict()

    @classmethod
    def from_config(cls, cfg: AudioEncoderConfig) -> "Wav2Vec2Encoder":
        """``cfg.path``: a local folder (config.json + model.safetensors); else ``Wav2Vec2Config(**cfg.hf_config)``."""
        if cfg.path:
            return cls.from_pretrained(cfg.path, layer=cfg.layer, frozen=cfg.frozen)
        from transformers import Wav2Vec2Config, Wav2Vec2Model

        model = Wav2Vec2Model(Wav2Vec2Config(**cfg.hf_config))
        return cls(model, layer=cfg.layer, frozen=cfg.frozen)

    @classmethod
    def from_pretrained(cls, path: str | Path, layer: int | str = -1, frozen: bool = True) -> "Wav2Vec2Encoder":
        """Load a local folder saved by ``save_pretrained`` (or downloaded from the Hub), offline.

        Strict: every weight of Wav2Vec2Model must come from the folder, except ``masked_spec_embed``
        (only used by SpecAugment in training); weights in float32. The folder's
        preprocessor_config.json, when present, says whether to normalise the waveform and whether
        the model takes an attention mask.
        """
        from transformers import Wav2Vec2Model

        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"{folder}: not a wav2vec2 folder (no config.json); expected config.json + model.safetensors "
                f"as written by save_pretrained or downloaded from the Hugging Face Hub"
            )
        # float32 whatever config.json records (transformers 5 otherwise loads in that dtype).
        model, info = Wav2Vec2Model.from_pretrained(
            str(folder), local_files_only=True, output_loading_info=True, dtype=torch.float32
        )
        missing = set(info["missing_keys"]) - {"masked_spec_embed"}
        mismatched = info.get("mismatched_keys") or []
        if missing or mismatched:
            raise ValueError(
                f"{folder}: weights do not fit Wav2Vec2Model: missing {sorted(missing)}, mismatched {list(mismatched)}"
            )
        prep = _read_preprocessor(folder)
        return cls(
            model,
            layer=layer,
            frozen=frozen,
            normalize=bool(prep.get("do_normalize", True)),
            use_attention_mask=prep.get("return_attention_mask"),
        )

    def train(self, mode: bool = True) -> "Wav2Vec2Encoder":
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def _prepare(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        valid = torch.arange(wave.shape[1], device=wave.device)[None, :] < lengths[:, None]
        wave = wave.float() * valid
        if self.normalize:
            count = lengths.clamp(min=1)[:, None].float()
            mean = wave.sum(1, keepdim=True) / count
            var = (((wave - mean) * valid) ** 2).sum(1, keepdim=True) / count
            wave = (wave - mean) / torch.sqrt(var + 1e-7) * valid  # padding stays 0
        if wave.shape[1] < self.receptive_field:  # shorter than one feature frame: pad with silence
            wave = nn.functional.pad(wave, (0, self.receptive_field - wave.shape[1]))
        return wave

    def hidden_states(
        self, wave: torch.Tensor, wave_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """wave: (B, S) 16 kHz, wave_mask: (B, S) True on real samples (padding at the end).

        Returns the selected (or weighted) features (B, N, C) at 50 Hz and the number of real
        feature frames per row (B,).
        """
        lengths = wave_lengths(wave, wave_mask)
        x = self._prepare(wave, lengths).to(self.model.dtype)
        attention_mask = None
        if self.use_attention_mask:
            # A row without audio (or shorter than one feature frame) attends to one frame of silence:
            # transformers derives the feature-level mask from the conv length formula, which goes
            # negative (and then indexes from the end) for fewer than 400 samples.
            attend = lengths.clamp(min=self.receptive_field)
            attention_mask = (torch.arange(x.shape[1], device=x.device)[None, :] < attend[:, None]).long()

        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            if attention_mask is None and len(lengths) > 1 and bool((lengths != lengths.max()).any()):
                # Without an attention mask (group-norm models such as wav2vec2-base) padding would
                # enter the first layer's normalisation statistics and the attention: each row runs
                # alone at its own length, so its features do not depend on the batch.
                states = self._rowwise_states(x, lengths)
            else:
                states = self.model(x, attention_mask=attention_mask, output_hidden_states=True).hidden_states
        if len(states) != self.model.config.num_hidden_layers + 1:
            raise RuntimeError(f"wav2vec2 returned {len(states)} hidden states, expected {self.model.config.num_hidden_layers + 1}")
        if self.layer_weights is None:
            feats = states[self.layer]
        else:
            weights = torch.softmax(self.layer_weights, dim=0).to(states[0].dtype)
            feats = torch.einsum("l,lbnc->bnc", weights, torch.stack(states))
        n_valid = conv_output_length(lengths, self.model.config.conv_kernel, self.model.config.conv_stride)
        return feats, n_valid.clamp(min=1)

    def _rowwise_states(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Hidden states of each row run alone (its real samples only), zero-padded to the longest."""
        rows = [self.model(x[b : b + 1, : max(int(n), self.receptive_field)], output_hidden_states=True).hidden_states
                for b, n in enumerate(lengths.tolist())]
        longest = max(r[0].shape[1] for r in rows)
        return tuple(torch.cat([F.pad(r[k], (0, 0, 0, longest - r[k].shape[1])) for r in rows])
                     for k in range(len(rows[0])))

    def forward_features(
        self, wave: torch.Tensor, frame_times: torch.Tensor, wave_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """wave: (B, S) 16 kHz mono; frame_times: (B, T) frame start times in s from the first
        sample (padding frames continuing at the frame period); wave_mask: (B, S) True on real
        samples. -> (B, T, num_features), each frame sampled at its centre time.
        """
        feats, n_valid = self.hidden_states(wave, wave_mask)
        return resample_to_frames(
            feats,
            frame_times,
            n_valid=n_valid,
            hop=self.hop,
            receptive_field=self.receptive_field,
            sample_rate=self.sample_rate,
        )

    def forward(
        self, wave: torch.Tensor, frame_times: torch.Tensor, wave_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.forward_features(wave, frame_times, wave_mask)
