"""wav2vec2 audio encoder (transformers' Wav2Vec2Model) with features aligned to video frames.

Timing, in one place:

- wav2vec2's convolutional feature encoder (kernels 10,3,3,3,3,2,2; strides 5,2,2,2,2,2,2) hops
  320 samples at 16 kHz (20 ms, 50 Hz) and sees 400 samples (25 ms). Feature frame ``j`` covers
  samples ``[320 j, 320 j + 400)``; we place it at the centre of that span,
  ``t_j = (320 j + 200) / 16000 = 0.02 j + 0.0125`` s (:func:`feature_times`; derived from the
  model's own ``conv_kernel`` / ``conv_stride``).
- A video frame ``k`` at ``fps`` is shown during ``[k / fps, (k + 1) / fps)``. **Frame times are
  frame start times** (presentation timestamps), as the data pipeline's ``frame_times`` and
  ``timestamps`` are: :func:`frame_times_from_fps` returns ``k / fps``. Each frame is sampled at its
  *centre*: it lasts until the next frame starts (variable frame rate is fine), the last one as long
  as the one before it (:func:`frame_centres`).
- Each video frame's feature is the linear interpolation of the two feature frames around its centre
  time (:func:`resample_to_frames`); before the first / after the last real feature frame it is that
  frame's feature (clamped).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from ..config import AudioEncoderConfig
from . import AudioEncoder

if TYPE_CHECKING:  # transformers is imported where a model is built: the time helpers stay light
    from transformers import Wav2Vec2Model

SAMPLE_RATE = 16000
# The standard wav2vec2 / HuBERT / WavLM feature encoder: 320-sample hop, 400-sample receptive field.
CONV_KERNEL = (10, 3, 3, 3, 3, 2, 2)
CONV_STRIDE = (5, 2, 2, 2, 2, 2, 2)
HOP = 320
RECEPTIVE_FIELD = 400


def conv_geometry(conv_kernel: Sequence[int], conv_stride: Sequence[int]) -> tuple[int, int]:
    """(hop, receptive field) in samples of a stack of 1-D convolutions (no padding)."""
    hop, field = 1, 1
    for kernel, stride in zip(conv_kernel, conv_stride):
        field += (kernel - 1) * hop
        hop *= stride
    return hop, field


def conv_output_length(n_samples: torch.Tensor | int, conv_kernel: Sequence[int], conv_stride: Sequence[int]) -> torch.Tensor | int:
    """Number of feature frames the conv stack makes from ``n_samples`` (0 when too short)."""
    n = n_samples
    for kernel, stride in zip(conv_kernel, conv_stride):
        n = (n - kernel) // stride + 1
    if isinstance(n, torch.Tensor):
        return n.clamp(min=0)
    return max(int(n), 0)


def feature_times(
    n_features: int, hop: int = HOP, receptive_field: int = RECEPTIVE_FIELD, sample_rate: int = SAMPLE_RATE
) -> torch.Tensor:
    """Time (s, float64) of each feature frame: the centre of its receptive field. -> (N,)"""
    return (torch.arange(n_features, dtype=torch.float64) * hop + receptive_field / 2) / sample_rate


def frame_times_from_fps(n_frames: int, fps: float, start: float = 0.0) -> torch.Tensor:
    """Start time (s, float64) of video frames 0..n_frames-1 at ``fps``: ``start + k / fps``. -> (T,)

    Pass NTSC rates exactly (``30000 / 1001``, not 29.97) when the source is NTSC.
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return start + torch.arange(n_frames, dtype=torch.float64) / float(fps)


def frame_centres(frame_times: torch.Tensor | Sequence[float], fps: float | None = None) -> torch.Tensor:
    """Centre times (float64) of frames given their start times. (T,) or (B, T) -> same shape

    Frame ``k`` lasts until frame ``k + 1`` starts; the last frame as long as the one before it. Where
    the next time is not later (NaN or unordered padding) the row's median frame period is used. A
    single frame needs ``fps``; without it, it is sampled at its start, with a warning.
    """
    times = torch.as_tensor(frame_times, dtype=torch.float64)
    if times.shape[-1] < 2:
        if fps is not None:
            return times + 0.5 / float(fps)
        if times.numel():
            warnings.warn("one frame per row does not say how long a frame lasts: audio sampled at its start time")
        return times.clone()
    step = times.diff(dim=-1)
    ok = torch.isfinite(step) & (step > 0)
    median = torch.where(ok, step, torch.nan).nanmedian(dim=-1, keepdim=True).values
    median = torch.nan_to_num(median, nan=0.0 if fps is None else 1.0 / float(fps))
    step = torch.where(ok, step, median)
    return times + torch.cat([step, step[..., -1:]], dim=-1) / 2


def sample_features_at(
    features: torch.Tensor,
    times: torch.Tensor,
    n_valid: torch.Tensor | int | None = None,
    hop: int = HOP,
    receptive_field: int = RECEPTIVE_FIELD,
    sample_rate: int = SAMPLE_RATE,
) -> torch.Tensor:
    """Linear interpolation of feature frames at exact times (s from the first audio sample).

    features: (B, N, C); times: (B, T). ``n_valid`` ((B,) or int): the number of real feature frames
    per row (the rest is padding); times outside the real features take the first / last real
    feature. -> (B, T, C)
    """
    batch, n_feat, _ = features.shape
    times = times.to(device=features.device, dtype=torch.float64)
    if n_valid is None:
        n_valid = n_feat
    last = torch.as_tensor(n_valid, device=features.device).to(torch.float64).clamp(1, n_feat).expand(batch) - 1
    # Fractional feature index of each time, inverting t_j = (j * hop + receptive_field / 2) / sample_rate.
    pos = (times * sample_rate - receptive_field / 2) / hop
    pos = torch.nan_to_num(pos, nan=0.0)  # padded frames may carry NaN times: any finite index will do
    pos = torch.minimum(pos.clamp(min=0.0), last[:, None])
    lo = pos.floor()
    w = (pos - lo).to(features.dtype).unsqueeze(-1)
    lo = lo.long()
    hi = torch.minimum(lo + 1, last[:, None].long())
    rows = torch.arange(batch, device=features.device)[:, None]
    return features[rows, lo] * (1 - w) + features[rows, hi] * w


def resample_to_frames(
    features: torch.Tensor,
    frame_times: torch.Tensor | Sequence[float] | None = None,
    *,
    fps: float | None = None,
    n_frames: int | None = None,
    n_valid: torch.Tensor | int | None = None,
    hop: int = HOP,
    receptive_field: int = RECEPTIVE_FIELD,
    sample_rate: int = SAMPLE_RATE,
) -> torch.Tensor:
    """50 Hz features -> one feature per video frame, interpolated at each frame's centre time.

    features: (B, N, C) or (N, C). The frames are either ``frame_times``, their start times in s
    from the first audio sample ((B, T), (T,) or a list of timestamps; any frame rate, variable
    too), or ``fps`` with ``n_frames`` (frame k starts at k / fps). ``n_valid``: see
    :func:`sample_features_at`. Returns (B, T, C) or (T, C) like ``features``.
    """
    if (frame_times is None) == (fps is None):
        raise ValueError("give exactly one of frame_times or fps (with n_frames)")
    if fps is not None:
        if n_frames is None:
            raise ValueError("fps needs n_frames")
        frame_times = frame_times_from_fps(n_frames, fps)
    unbatched = features.ndim == 2
    if unbatched:
        features = features.unsqueeze(0)
    if features.ndim != 3:
        raise ValueError(f"features must be (B, N, C) or (N, C), got {tuple(features.shape)}")
    times = torch.as_tensor(frame_times, dtype=torch.float64)
    if times.ndim == 1:
        times = times.unsqueeze(0).expand(features.shape[0], -1)
    if times.ndim != 2 or times.shape[0] != features.shape[0]:
        raise ValueError(f"frame_times must be (T,) or ({features.shape[0]}, T), got {tuple(times.shape)}")
    out = sample_features_at(features, frame_centres(times, fps), n_valid, hop, receptive_field, sample_rate)
    return out.squeeze(0) if unbatched else out


def _read_preprocessor(folder: Path) -> dict:
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return {}
    with open(path) as f:
        return json.load(f)


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
        if wave.ndim != 2:
            raise ValueError(f"wave must be (B, S), got {tuple(wave.shape)}")
        batch, n_samples = wave.shape
        if wave_mask is None:
            lengths = torch.full((batch,), n_samples, dtype=torch.long, device=wave.device)
        else:
            if wave_mask.shape != wave.shape:
                raise ValueError(f"wave_mask {tuple(wave_mask.shape)} must match wave {tuple(wave.shape)}")
            lengths = wave_mask.long().sum(1)
        x = self._prepare(wave, lengths).to(self.model.dtype)
        attention_mask = None
        if self.use_attention_mask:
            # A row without audio (or shorter than one feature frame) attends to one frame of silence:
            # transformers derives the feature-level mask from the conv length formula, which goes
            # negative (and then indexes from the end) for fewer than 400 samples.
            attend = lengths.clamp(min=self.receptive_field)
            attention_mask = (torch.arange(x.shape[1], device=x.device)[None, :] < attend[:, None]).long()

        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            out = self.model(x, attention_mask=attention_mask, output_hidden_states=True)
        states = out.hidden_states
        if len(states) != self.model.config.num_hidden_layers + 1:
            raise RuntimeError(f"wav2vec2 returned {len(states)} hidden states, expected {self.model.config.num_hidden_layers + 1}")
        if self.layer_weights is None:
            feats = states[self.layer]
        else:
            weights = torch.softmax(self.layer_weights, dim=0).to(states[0].dtype)
            feats = torch.einsum("l,lbnc->bnc", weights, torch.stack(states))
        n_valid = conv_output_length(lengths, self.model.config.conv_kernel, self.model.config.conv_stride)
        return feats, n_valid.clamp(min=1)

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
