"""Weight-free baseline encoders: HOG of the face crop and log-mel spectra of the voice.

HOG appearance descriptors are the classic facial-expression baseline (OpenFace's action-unit
detectors use them); log-mel energies are the classic paralinguistic one. Neither needs a weight
file, both run in milliseconds on a CPU, so the tiny demo model can cache informative features
without any download. Both are fixed functions: nothing in them trains.
"""
from __future__ import annotations

import math

import librosa
import torch
import torch.nn.functional as F

from ..config import AudioEncoderConfig, VideoEncoderConfig
from .base import AudioEncoder, VideoEncoder
from ..timing import frame_centres, sample_features_at

# ITU-R BT.601 luma weights.
_LUMA = (0.299, 0.587, 0.114)


class HOGEncoder(VideoEncoder):
    """Histogram of oriented gradients over a grey face crop: ``(N, 3, S, S)`` in [0, 1] -> ``(N, C)``.

    Unsigned orientations in ``bins`` bins (linear vote between neighbouring bins), ``cell``-pixel
    cells, 2x2-cell blocks L2-normalised with clipping at 0.2 (Dalal and Triggs' L2-Hys), so
    C = (S/cell - 1)^2 * 4 * bins (1764 at 64 px, 8 px cells, 9 bins).
    """

    # Gradient orientations and block norms need float32; there are no weights to speed up.
    supports_bf16 = False

    def __init__(self, image_size: int = 64, cell: int = 8, bins: int = 9):
        super().__init__()
        if image_size % cell:
            raise ValueError(f"HOG image_size {image_size} must be a multiple of the cell size {cell}")
        self.cell, self.bins = cell, bins
        n = image_size // cell - 1
        self.num_features = n * n * 4 * bins
        self.pretrained_cfg = {"input_size": (3, image_size, image_size), "mean": (0.0, 0.0, 0.0),
                               "std": (1.0, 1.0, 1.0), "interpolation": "area"}
        self.register_buffer("luma", torch.tensor(_LUMA).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg: VideoEncoderConfig) -> "HOGEncoder":
        return cls(image_size=cfg.image_size or 64)

    @torch.no_grad()
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, S, S) -> (N, C)
        g = (x.float() * self.luma).sum(1, keepdim=True)
        g = F.pad(g, (1, 1, 1, 1), mode="replicate")
        gx = g[..., 1:-1, 2:] - g[..., 1:-1, :-2]
        gy = g[..., 2:, 1:-1] - g[..., :-2, 1:-1]
        mag = torch.sqrt(gx * gx + gy * gy)
        ang = torch.atan2(gy, gx) % math.pi  # unsigned orientation in [0, pi)
        pos = ang / (math.pi / self.bins) - 0.5
        lo = torch.floor(pos)
        w_hi = pos - lo
        lo = lo.long() % self.bins
        hi = (lo + 1) % self.bins
        hist = torch.zeros(g.shape[0], self.bins, *mag.shape[-2:], device=x.device)
        hist.scatter_add_(1, lo, mag * (1 - w_hi))
        hist.scatter_add_(1, hi, mag * w_hi)
        cells = F.avg_pool2d(hist, self.cell)  # (N, bins, n+1, n+1)
        blocks = cells.unfold(2, 2, 1).unfold(3, 2, 1)  # (N, bins, n, n, 2, 2)
        blocks = blocks.permute(0, 2, 3, 4, 5, 1).flatten(3)  # (N, n, n, 2*2*bins), cell-major
        blocks = F.normalize(blocks, dim=-1, eps=1e-6).clamp(max=0.2)
        blocks = F.normalize(blocks, dim=-1, eps=1e-6)
        return blocks.flatten(1)


class LogMelEncoder(AudioEncoder):
    """Log-mel energies at the video frame times: ``wave (B, S)`` 16 kHz -> ``(B, T, n_mels)``.

    25 ms windows hopped by 20 ms (the same 400-sample window / 320-sample hop geometry as
    wav2vec2's feature encoder, so the same frame-time interpolation applies), Slaney mel filters
    up to 8 kHz, log(energy + 1e-6).
    """

    n_fft, win, hop = 512, 400, 320

    def __init__(self, n_mels: int = 64):
        super().__init__()
        self.num_features = n_mels
        fb = librosa.filters.mel(sr=self.sample_rate, n_fft=self.n_fft, n_mels=n_mels, fmin=20.0, fmax=8000.0)
        self.register_buffer("fbank", torch.from_numpy(fb).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(self.win), persistent=False)
        self.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg: AudioEncoderConfig) -> "LogMelEncoder":
        return cls(n_mels=cfg.n_mels)

    @torch.no_grad()
    def forward_features(
        self, wave: torch.Tensor, frame_times: torch.Tensor, wave_mask: torch.Tensor | None = None
    ) -> torch.Tensor:  # (B, S), (B, T) frame start times -> (B, T, n_mels)
        wave = wave.float()
        if wave_mask is not None:
            wave = wave * wave_mask
        if wave.shape[1] < self.win:
            wave = F.pad(wave, (0, self.win - wave.shape[1]))
        # Frame j reads exactly samples [j * hop, j * hop + win) (no centring), like wav2vec2's
        # convolutions, so the frames counted valid below never touch padding: a clip's features
        # are the same alone and batched with longer clips. (torch.stft with n_fft > win would
        # read n_fft samples per frame, the window centred in them.) Zero-padded to n_fft for the FFT.
        frames = wave.unfold(1, self.win, self.hop) * self.window  # (B, N, win)
        spec = torch.fft.rfft(frames, n=self.n_fft)  # (B, N, n_fft/2+1)
        power = spec.real ** 2 + spec.imag ** 2
        mel = torch.log(power @ self.fbank.T + 1e-6)  # (B, N, n_mels)
        n_valid = None
        if wave_mask is not None:
            n_valid = ((wave_mask.sum(1) - self.win) // self.hop + 1).clamp(min=1)
        return sample_features_at(mel, frame_centres(frame_times), n_valid, hop=self.hop,
                                  receptive_field=self.win).to(wave.dtype)
