"""Clip transforms: the encoder's normalisation, clip-level augmentation, the HSV option."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from avfusion.data.transforms import build_transform

CFG = {"input_size": (3, 16, 24), "mean": (0.1, 0.2, 0.3), "std": (0.5, 0.25, 2.0)}
PLAIN = {"input_size": (3, 16, 16), "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
STRONG = {"flip": 0.5, "rotate": 20.0, "scale": 0.2, "translate": 0.1,
          "brightness": 0.4, "contrast": 0.4, "saturation": 0.4}


def _smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A random but smooth RGB image, so resizing and warps change it visibly but sanely."""
    small = np.random.default_rng(seed).integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def test_eval_normalisation_matches_mean_and_std_exactly() -> None:
    clip = np.random.default_rng(0).integers(0, 256, size=(3, 16, 24, 3), dtype=np.uint8)
    out = build_transform(CFG, train=False)(clip)
    assert out.shape == (3, 3, 16, 24) and out.dtype == torch.float32
    mean, std = np.array(CFG["mean"]), np.array(CFG["std"])
    expected = ((clip / 255.0 - mean) / std).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-6)


def test_eval_resizes_to_the_encoder_input_size() -> None:
    clip = np.full((4, 50, 40, 3), (10, 100, 200), dtype=np.uint8)
    out = build_transform(CFG, train=False)(clip)
    assert out.shape == (4, 3, 16, 24) and out.dtype == torch.float32
    expected = (np.array([10, 100, 200]) / 255.0 - np.array(CFG["mean"])) / np.array(CFG["std"])
    np.testing.assert_allclose(out.mean(dim=(0, 2, 3)).numpy(), expected, atol=1e-6)
    # Evaluation is deterministic: no augmentation, whatever the generator.
    assert torch.equal(
        build_transform(CFG, train=False)(clip, np.random.default_rng(1)),
        build_transform(CFG, train=False)(clip, np.random.default_rng(2)),
    )


def test_augmentation_is_the_same_for_every_frame_of_a_clip() -> None:
    clip = np.repeat(_smooth_image(40, 40)[None], 6, axis=0)
    train = build_transform(PLAIN, train=True, augment=STRONG)
    plain = build_transform(PLAIN, train=False)(clip)
    changed = 0
    for seed in range(5):
        out = train(clip, np.random.default_rng(seed))
        assert out.shape == (6, 3, 16, 16)
        for t in range(1, 6):
            assert torch.equal(out[t], out[0])
        changed += int(not torch.allclose(out, plain, atol=1e-3))
    assert changed == 5  # the augmentation did something to every clip


def test_augmentation_is_deterministic_for_a_seed() -> None:
    clip = np.stack([_smooth_image(32, 32, s) for s in range(3)])
    train = build_transform(CFG, train=True, augment=STRONG)
    a = train(clip, np.random.default_rng(7))
    b = train(clip, np.random.default_rng(7))
    c = train(clip, np.random.default_rng(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # Without a generator, torch's global seed decides (DataLoader seeds each worker).
    torch.manual_seed(3)
    d = train(clip)
    torch.manual_seed(3)
    assert torch.equal(d, train(clip))


def test_flip_only_mirrors_every_frame() -> None:
    clip = np.stack([_smooth_image(16, 24, s) for s in range(3)])
    flip = {k: 0.0 for k in STRONG} | {"flip": 1.0}
    out = build_transform(CFG, train=True, augment=flip)(clip, np.random.default_rng(0))
    ref = build_transform(CFG, train=False)(clip)
    assert torch.equal(out, torch.flip(ref, dims=[3]))


def test_small_affine_keeps_the_face_near_the_centre() -> None:
    # A bright square in the middle moves by at most the configured shift plus rotation/zoom.
    frame = np.zeros((64, 64, 3), dtype=np.uint8)
    frame[24:40, 24:40] = 255
    clip = np.repeat(frame[None], 2, axis=0)
    cfg = {"input_size": (3, 64, 64), "mean": (0, 0, 0), "std": (1, 1, 1)}
    geom = {"flip": 0.5, "rotate": 10.0, "scale": 0.1, "translate": 0.05,
            "brightness": 0.0, "contrast": 0.0, "saturation": 0.0}
    tf = build_transform(cfg, train=True, augment=geom)
    for seed in range(10):
        img = tf(clip, np.random.default_rng(seed))[0, 0].numpy()
        ys, xs = np.nonzero(img > 0.5)
        assert abs(xs.mean() - 31.5) <= 0.05 * 64 + 1 and abs(ys.mean() - 31.5) <= 0.05 * 64 + 1
        assert 0.75 * 256 < len(xs) < 1.3 * 256  # zoom within 0.9-1.1 (area 0.81-1.21)


def test_colour_jitter_uses_one_factor_per_clip() -> None:
    clip = np.stack([np.full((16, 16, 3), v, dtype=np.uint8) for v in (60, 100, 140)])
    bright = {k: 0.0 for k in STRONG} | {"brightness": 0.5}
    out = build_transform(PLAIN, train=True, augment=bright)(clip, np.random.default_rng(0))
    ref = build_transform(PLAIN, train=False)(clip)
    ratio = (out / ref).numpy()
    np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-5)
    assert 0.5 <= ratio.flat[0] <= 1.5 and ratio.flat[0] != 1.0


def test_hsv_pure_colours() -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)]
    clip = np.stack([np.full((16, 16, 3), c, dtype=np.uint8) for c in colours])
    out = build_transform(PLAIN, train=False, hsv=True)(clip)[:, :, 0, 0].numpy()
    expected = [(0.0, 1, 1), (1 / 3, 1, 1), (2 / 3, 1, 1), (0, 0, 1), (0, 0, 0)]
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_hsv_matches_opencv_uint8_convention_and_stays_in_range() -> None:
    clip = np.random.default_rng(0).integers(0, 256, size=(2, 16, 16, 3), dtype=np.uint8)
    out = build_transform(PLAIN, train=False, hsv=True)(clip).numpy().transpose(0, 2, 3, 1)
    assert out.min() >= 0.0 and out.max() <= 1.0
    ref = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2HSV) for f in clip]).astype(np.float64)
    # uint8 H is degrees / 2 in 0-179, rounded; ours is degrees / 360 unrounded.
    dh = np.abs(out[..., 0] * 180 - ref[..., 0])
    assert np.minimum(dh, 180 - dh).max() <= 1.0
    assert np.abs(out[..., 1:] * 255 - ref[..., 1:]).max() <= 1.0
    # Training + HSV: still in range after jitter.
    aug = build_transform(PLAIN, train=True, hsv=True, augment=STRONG)(clip, np.random.default_rng(0))
    assert aug.min() >= 0.0 and aug.max() <= 1.0


def test_bad_configs_and_clips_give_clear_errors() -> None:
    with pytest.raises(ValueError, match="lacks"):
        build_transform({"input_size": (3, 8, 8), "mean": (0, 0, 0)}, train=False)
    with pytest.raises(ValueError, match="unknown augmentation"):
        build_transform(CFG, train=True, augment={"hue": 0.1})
    tf = build_transform(CFG, train=False)
    with pytest.raises(ValueError, match="uint8 RGB frames"):
        tf(np.zeros((2, 8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="uint8 RGB frames"):
        tf(np.zeros((8, 8, 3), dtype=np.uint8))
