"""Evaluation metrics on known cases, with the tiny CLIP and an LPIPS whose backbone is random (offline)."""

import math

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F

from oir.metrics import CLIPScorer, EditScorer, LPIPSScorer, mean, ms_ssim, ms_ssim_window, psnr, to_tensor
from oir.testing import tiny_components



@pytest.fixture(scope="module")
def clip():
    components = tiny_components(seed=0)
    return CLIPScorer("tiny", components["clip_model"], components["clip_processor"])


@pytest.fixture(scope="module")
def lpips_scorer():
    return LPIPSScorer(random_backbone=True)


def noise(seed, size=64):
    return PIL.Image.fromarray((np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8))


def square_mask(size=64):
    mask = np.zeros((size, size), np.uint8)
    mask[8:32, 8:32] = 255
    return PIL.Image.fromarray(mask)


def test_identical_images():
    image = noise(0)
    assert ms_ssim(image, image) == pytest.approx(1.0, abs=1e-6)
    assert math.isinf(psnr(image, image))
    assert ms_ssim(image, image, square_mask()) == pytest.approx(1.0, abs=1e-6)


def test_psnr_and_ms_ssim_known_values():
    base = np.full((64, 64, 3), 0.5, np.float32)
    shifted = base + 0.1
    # MSE 0.01 -> 20 dB.
    assert psnr(shifted, base) == pytest.approx(20.0, abs=1e-3)
    # The region metric sees only the non-edited pixels: a change inside the mask does not count.
    edited = np.asarray(noise(1)).copy()
    source = edited.copy()
    edited[8:32, 8:32] = 0
    assert math.isinf(psnr(edited, source, square_mask()))
    assert ms_ssim(edited, source, square_mask()) == pytest.approx(1.0, abs=1e-6)
    assert ms_ssim(edited, source) < 0.99
    assert psnr(edited, source) < 30
    # An all-edited mask leaves no region.
    assert math.isnan(psnr(edited, source, np.ones((64, 64))))
    # Different noise images are far apart; a slightly noisier copy is close.
    a = to_tensor(noise(2))
    close = (a + 0.02 * torch.randn(a.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert ms_ssim(close, a) > ms_ssim(noise(3), a)
    assert 0 <= ms_ssim(noise(3), a) <= 1


def test_ms_ssim_window_follows_the_image_size():
    assert ms_ssim_window(512) == 11
    assert ms_ssim_window(161) == 11
    assert ms_ssim_window(160) == 9
    assert ms_ssim_window(64) == 3
    with pytest.raises(ValueError, match="larger than 32"):
        ms_ssim_window(32)


def test_lpips(lpips_scorer):
    image = noise(4)
    assert lpips_scorer(image, image) == pytest.approx(0.0, abs=1e-6)
    assert lpips_scorer(noise(5), image) > 1e-3
    # Blacking out the edited region in both images hides a change inside it.
    edited = np.asarray(image).copy()
    edited[8:32, 8:32] = 255
    assert lpips_scorer(edited, image, square_mask()) == pytest.approx(0.0, abs=1e-6)
    assert lpips_scorer(edited, image) > 1e-4


def test_clip_score_is_100_times_the_clipped_cosine(clip):
    model, processor = clip.model, clip.processor
    image = noise(6)
    for prompt in ("a photo of a cat", "a red car", "two dogs", "a bowl of fried rice", "a tiger"):
        score = clip(image, prompt)
        pixels = processor(images=[np.asarray(image)], return_tensors="pt")["pixel_values"]
        tokens = processor(text=[prompt], return_tensors="pt", padding=True)
        with torch.no_grad():
            image_features = model.get_image_features(pixel_values=pixels)
            text_features = model.get_text_features(**tokens)
        image_features = getattr(image_features, "pooler_output", image_features)
        text_features = getattr(text_features, "pooler_output", text_features)
        cosine = F.cosine_similarity(image_features, text_features).item()
        assert 0 <= score <= 100
        assert score == pytest.approx(max(100 * cosine, 0.0), abs=1e-3)
    with pytest.raises(ValueError, match="prompt"):
        clip(image, "")


def test_clip_scorer_loads_a_local_folder(tmp_path, clip):
    clip.model.save_pretrained(tmp_path)
    clip.processor.save_pretrained(tmp_path)
    loaded = CLIPScorer(str(tmp_path))
    image = noise(7)
    assert loaded(image, "a red car") == pytest.approx(clip(image, "a red car"), abs=1e-4)


def test_edit_scorer(clip, lpips_scorer):
    scorer = EditScorer(clip, lpips_scorer)
    image = noise(8)
    scores = scorer(image, image, "a cat", square_mask())
    assert set(scores) == {"clip_score", "ms_ssim", "lpips", "psnr", "ms_ssim_bg", "lpips_bg", "psnr_bg"}
    assert scores["ms_ssim"] == pytest.approx(1.0, abs=1e-6) and scores["lpips"] == pytest.approx(0.0, abs=1e-6)
    assert math.isinf(scores["psnr"]) and math.isinf(scores["psnr_bg"])
    no_mask = scorer(noise(9), image, "a cat")
    assert math.isnan(no_mask["ms_ssim_bg"]) and no_mask["ms_ssim"] < 0.5
    with pytest.raises(ValueError, match="same size"):
        scorer(noise(9, size=72), image, "a cat")
    assert mean([1.0, float("nan"), 3.0]) == 2.0 and math.isnan(mean([]))
