"""Weight-free encoders of the tiny model: HOG of the face, log-mel of the voice."""
import math

import librosa
import numpy as np
import torch

from avfusion.encoders.handcrafted import HOGEncoder, LogMelEncoder
from avfusion.timing import frame_times_from_fps


def stripes(angle_deg: float, size: int = 64) -> torch.Tensor:
    """Sinusoidal stripes whose intensity gradient points along ``angle_deg`` (image x right, y down)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    a = math.radians(angle_deg)
    img = 0.5 + 0.4 * np.sin((x * math.cos(a) + y * math.sin(a)) * 2 * math.pi / 8)
    return torch.from_numpy(img).float().expand(1, 3, size, size).clone()


def test_hog_shape_normalisation_and_orientation():
    enc = HOGEncoder(image_size=64)
    assert enc.num_features == 7 * 7 * 4 * 9 == 1764
    for angle, expected_bin in ((0, 0), (90, 4), (45, 2)):
        f = enc.forward_features(stripes(angle)).view(7, 7, 4, 9)
        # Every block's dominant orientation bin is the stripes' gradient direction (20-degree bins
        # centred on 10, 30, ...: 0 deg votes into bins 0 and 8 equally, 90 into bin 4, 45 into bin 2).
        hist = f.sum(dim=(0, 1, 2))
        top = int(hist.argmax())
        assert top == expected_bin or (angle == 0 and top == 8), (angle, hist)
        norms = f.flatten(2).norm(dim=-1)
        torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-4, rtol=0)
    flat = enc.forward_features(torch.full((2, 3, 64, 64), 0.5))
    assert torch.isfinite(flat).all() and flat.abs().max() < 1e-3  # no gradients, no votes
    assert not any(p.requires_grad for p in enc.parameters())


def test_logmel_peaks_at_tone_and_follows_frame_times():
    enc = LogMelEncoder(n_mels=64)
    sr, fps, n = 16000, 25.0, 50
    t = np.arange(int(n / fps * sr)) / sr
    # 1 kHz for the first second, 3 kHz after: the loudest band moves at frame 25 exactly.
    wave = np.where(t < 1.0, np.sin(2 * math.pi * 1000 * t), np.sin(2 * math.pi * 3000 * t)).astype(np.float32)
    times = frame_times_from_fps(n, fps)[None]
    feats = enc.forward_features(torch.from_numpy(wave)[None], times)
    assert feats.shape == (1, n, 64)
    mel_f = librosa.mel_frequencies(n_mels=66, fmin=20.0, fmax=8000.0)[1:-1]
    band_1k, band_3k = int(np.abs(mel_f - 1000).argmin()), int(np.abs(mel_f - 3000).argmin())
    peaks = feats[0].argmax(-1)
    assert (peaks[2:23] - band_1k).abs().max() <= 1
    assert (peaks[27:48] - band_3k).abs().max() <= 1
    # Louder input -> higher log energy by 20*log10 ratio in natural-log units (x2 amplitude: +ln 4).
    louder = enc.forward_features(2 * torch.from_numpy(wave)[None], times)
    torch.testing.assert_close((louder - feats)[0, 5, band_1k], torch.tensor(math.log(4.0)), atol=1e-2, rtol=0)
