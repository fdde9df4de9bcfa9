"""Shared test fixtures and models."""
import pytest
import torch

# A small neural audio-visual model (random weights: EmoNet at width 16, a 2-layer wav2vec2), written
# out here so that tests do not follow changes of the named "tiny" config.
NEURAL_AV = {
    "mode": "av",
    "video": {"name": "emonet", "n_expression": 8, "width": 16, "num_modules": 1, "n_blocks": 1, "frozen": True},
    "audio": {"name": "wav2vec2", "layer": -1, "frozen": True, "hf_config": {
        "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "conv_dim": [32] * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4}},
    "fusion": {"d_model": 32, "n_layers": 1, "n_heads": 4, "dropout": 0.0, "max_len": 64,
               "modality_dropout": 0.0},
}


@pytest.fixture
def one_thread():
    """Tiny models on a shared 2-core machine: a second intra-op thread mostly waits for the other
    (10x slower steps measured under load), so tests that use this run single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
