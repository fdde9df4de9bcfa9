"""Every audio encoder gives a clip the same per-frame features alone and batched with longer clips
(zero padding and a mask after its end): the log-mel frames read exactly their 400 samples, and
wav2vec2 models without an attention mask (group norm, as wav2vec2-base) run each row alone."""
from __future__ import annotations

import pytest
import torch

from avfusion.config import AudioEncoderConfig
from avfusion.encoders import create_audio_encoder
from avfusion.timing import frame_times_from_fps

TINY_W2V = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
ENCODERS = {
    "logmel": dict(name="logmel", n_mels=32),
    "wav2vec2 group norm (base)": dict(name="wav2vec2", hf_config={**TINY_W2V, "feat_extract_norm": "group"}),
    "wav2vec2 layer norm (large)": dict(name="wav2vec2", hf_config={**TINY_W2V, "feat_extract_norm": "layer",
                                                                    "do_stable_layer_norm": True}),
}


@pytest.mark.parametrize("name", list(ENCODERS))
@pytest.mark.parametrize("fps, n_frames, samples", [(25.0, 8, 5120), (30.0, 8, 4267), (25.0, 1, 640)])
def test_features_do_not_depend_on_the_batch(name, fps, n_frames, samples):
    from avfusion.config import from_dict

    torch.manual_seed(0)
    enc = create_audio_encoder(from_dict(AudioEncoderConfig, {**ENCODERS[name], "frozen": True})).eval()
    torch.manual_seed(1)
    clip = torch.randn(1, samples) * 0.1
    times = frame_times_from_fps(n_frames, fps).float()[None]
    with torch.no_grad():
        alone = enc.forward_features(clip, times)
        # Batched with a longer clip (another frame rate's window), padded with zeros and masked.
        longer = torch.randn(1, 12000) * 0.1
        wave = torch.zeros(2, 12000)
        wave[0, :samples], wave[1] = clip[0], longer[0]
        mask = torch.zeros(2, 12000, dtype=torch.bool)
        mask[0, :samples], mask[1] = True, True
        times2 = torch.cat([times, frame_times_from_fps(n_frames, 25.0).float()[None]])
        batched = enc.forward_features(wave, times2, mask)
    torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=0)


def test_logmel_frame_reads_its_own_samples_only():
    """Changing samples after the last valid frame's 400 samples leaves every valid frame unchanged."""
    enc = create_audio_encoder(AudioEncoderConfig(name="logmel", n_mels=16))
    torch.manual_seed(0)
    wave = torch.randn(1, 400 + 320 * 9)  # exactly 10 frames
    mel = enc.forward_features(wave, frame_times_from_fps(5, 10.0).float()[None])
    extended = torch.cat([wave, torch.randn(1, 300)], dim=1)  # not enough for an 11th frame
    mel2 = enc.forward_features(extended, frame_times_from_fps(5, 10.0).float()[None],
                                torch.ones_like(extended, dtype=torch.bool))
    torch.testing.assert_close(mel, mel2)
