"""OIRPipeline end to end on a tiny random model: inversion, spliced candidates, search and reassembly."""

import numpy as np
import PIL.Image
import pytest
import torch

from oir import Edit, OIRInversion, OIRPipelineOutput, OIRSearchRecord
from pipeline_oir import assign_mask_owners

SOURCE = "a photo of dumplings and chopsticks"
TARGET = "a photo of fried rice and a knife"


def serial_candidates(pipe, inversion, prompt, negative_prompt, guidance_scale=7.5):
    """The reference: every chain alone, with DDIMScheduler.step."""
    n = inversion.num_inference_steps
    scheduler = pipe.scheduler
    scheduler.set_timesteps(n)
    cond, uncond = pipe.encode_prompt([prompt, negative_prompt]).chunk(2)
    results = []
    for i in range(1, n + 1):
        z = inversion.latents[i : i + 1]
        for t in scheduler.timesteps[n - i :]:
            eps = pipe.unet(torch.cat([z, z]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
            eps_uncond, eps_cond = eps.chunk(2)
            z = scheduler.step(eps_uncond + guidance_scale * (eps_cond - eps_uncond), t, z).prev_sample
        results.append(z[0])
    return torch.stack(results)


def test_invert_keeps_every_latent(tiny_pipe, image, unet_counter):
    inversion = tiny_pipe.invert(image, SOURCE, num_inference_steps=5)
    assert isinstance(inversion, OIRInversion)
    assert inversion.latents.shape == (6, 4, 8, 8)
    tiny_pipe.scheduler.set_timesteps(5)
    assert inversion.timesteps.tolist() == tiny_pipe.scheduler.timesteps.tolist() == [801, 601, 401, 201, 1]
    z_0 = tiny_pipe.encode_image(tiny_pipe.preprocess_image(image))
    torch.testing.assert_close(inversion.latents[0], z_0[0])
    assert unet_counter.calls == 5
    assert not torch.allclose(inversion.latents[5], inversion.latents[0])


@pytest.mark.parametrize("n", [5, 6])
def test_spliced_candidates_equal_serial_chains_in_n_plus_one_calls(tiny_pipe, image, unet_counter, n):
    inversion = tiny_pipe.invert(image, SOURCE, num_inference_steps=n)
    unet_counter.calls = unet_counter.samples = 0
    spliced = tiny_pipe.generate_candidates(inversion, "a photo of fried rice and chopsticks")
    assert unet_counter.calls <= n + 1
    assert unet_counter.samples == n * (n + 1)  # N(N+1)/2 guided evaluations, two samples each (CFG)
    reference = serial_candidates(tiny_pipe, inversion, "a photo of fried rice and chopsticks", SOURCE)
    assert spliced.shape == (n, 4, 8, 8)
    assert (spliced - reference).abs().max() < 1e-4


def test_candidates_batch_size_and_subset(tiny_pipe, image, unet_counter):
    inversion = tiny_pipe.invert(image, SOURCE, num_inference_steps=6)
    full = tiny_pipe.generate_candidates(inversion, TARGET, steps=None)
    unet_counter.calls = 0
    chunked = tiny_pipe.generate_candidates(inversion, TARGET, batch_size=1)
    assert unet_counter.calls == 21  # one lane at a time: N(N+1)/2 sequential calls
    assert (chunked - full).abs().max() < 1e-4
    subset = tiny_pipe.generate_candidates(inversion, TARGET, steps=[5, 2])
    assert (subset - full[[4, 1]]).abs().max() < 1e-4


def test_candidate_one_is_a_real_one_step_edit(tiny_pipe, image):
    inversion = tiny_pipe.invert(image, SOURCE, num_inference_steps=4)
    first = tiny_pipe.generate_candidates(inversion, TARGET, steps=[1])[0]
    assert not torch.allclose(first, inversion.latents[0])  # not silently the reconstruction z_0


def _editing_score(pipe, images, mask, mode="hard"):
    features = pipe._text_features(["fried rice"])
    return pipe.editing_scores(images, mask, features, mode)


def test_editing_score_ignores_pixels_outside_the_mask(tiny_pipe, image):
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., :, :32] = 1  # the left half: CLIP's 8x8 patch grid splits exactly there
    changed = image.clone()
    changed[:, :, 48:] = torch.rand(3, 64, 16, generator=torch.Generator().manual_seed(3))
    images = torch.stack([image, changed])
    hard = _editing_score(tiny_pipe, images, mask)
    assert abs(hard[0] - hard[1]) < 1e-5
    soft = _editing_score(tiny_pipe, images, mask, "soft")  # the authors' +1 bias lets outside pixels in
    assert abs(soft[0] - soft[1]) > 1e-5
    inside = image.clone()
    inside[:, :, :16] = 0.0
    assert abs(_editing_score(tiny_pipe, torch.stack([image, inside]), mask).diff()) > 1e-5


def test_non_editing_score_ignores_pixels_inside_the_mask(tiny_pipe, image):
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 10:30, 20:50] = 1
    inside = image.clone()
    inside[:, 10:30, 20:50] = 1.0
    outside = image.clone()
    outside[:, 40:, :] = 0.0
    scores = tiny_pipe.non_editing_scores(torch.stack([image, inside, outside]), image[None], mask)
    assert scores[0] == 0 and scores[1] == 0 and scores[2] < 0


def test_two_edit_end_to_end(tiny_pipe, image, two_masks):
    out = tiny_pipe(
        image, SOURCE, TARGET, masks=two_masks, num_inference_steps=6, return_candidates=True,
    )
    assert isinstance(out, OIRPipelineOutput)
    assert isinstance(out.images[0], PIL.Image.Image) and out.images[0].size == (64, 64)
    assert len(out.optimal_steps) == 2 and all(1 <= s <= 6 for s in out.optimal_steps)
    for record, edit, prompt, mask in zip(
        out.search, [("dumplings", "fried rice"), ("chopsticks", "a knife")],
        ["a photo of fried rice and chopsticks", "a photo of dumplings and a knife"], two_masks,
    ):
        assert isinstance(record, OIRSearchRecord)
        assert (record.edit.source, record.edit.target) == edit and record.guided_prompt == prompt
        assert record.steps == [1, 2, 3, 4, 5, 6]
        assert len(record.editing_scores) == len(record.non_editing_scores) == len(record.scores) == 6
        assert min(record.scores) >= 0 and max(record.scores) <= 1
        assert record.optimal_step == record.steps[int(np.argmax(record.scores))]
        assert len(record.candidates) == 6 and record.candidates[0].size == (64, 64)
        assert np.array_equal(np.asarray(record.mask) > 0, mask)
    assert out.optimal_steps == [r.optimal_step for r in out.search]


def test_identical_inputs_give_identical_outputs(tiny_pipe, image, two_masks):
    kwargs = dict(masks=two_masks, num_inference_steps=5, output_type="np")
    first = tiny_pipe(image, SOURCE, TARGET, **kwargs)
    second = tiny_pipe(image, SOURCE, TARGET, **kwargs)
    assert first.optimal_steps == second.optimal_steps
    np.testing.assert_array_equal(first.images, second.images)


def test_reusing_an_inversion_gives_the_same_edit(tiny_pipe, image, two_masks, unet_counter):
    kwargs = dict(masks=two_masks, num_inference_steps=5, output_type="pt")
    inversion = tiny_pipe.invert(image, SOURCE, num_inference_steps=5)
    fresh = tiny_pipe(image, SOURCE, TARGET, **kwargs)
    calls = unet_counter.calls
    reused = tiny_pipe(image, SOURCE, TARGET, inversion=inversion, **kwargs)
    calls_reused = unet_counter.calls - calls
    assert calls_reused == calls - 5 - 5  # no second inversion (5 calls for the invert above, 5 inside `fresh`)
    torch.testing.assert_close(fresh.images, reused.images)


def test_single_edit_returns_the_optimal_candidate(tiny_pipe, image, two_masks):
    out = tiny_pipe(
        image, "a photo of dumplings", "a photo of fried rice", masks=two_masks[:1], num_inference_steps=5,
        output_type="pt",
    )
    inversion = tiny_pipe.invert(image, "a photo of dumplings", num_inference_steps=5)
    candidate = tiny_pipe.generate_candidates(inversion, "a photo of fried rice", steps=out.optimal_steps)
    expected = tiny_pipe.decode_latents(candidate)
    torch.testing.assert_close(out.images, expected, atol=1e-5, rtol=0)
    reassembled = tiny_pipe(
        image, "a photo of dumplings", "a photo of fried rice", masks=two_masks[:1], num_inference_steps=5,
        output_type="pt", reassemble=True,
    )
    assert not torch.allclose(reassembled.images, out.images)


def test_optimal_steps_skip_the_search(tiny_pipe, image, two_masks, unet_counter):
    out = tiny_pipe(image, SOURCE, TARGET, masks=two_masks, num_inference_steps=6, optimal_steps=[4, 5])
    assert out.optimal_steps == [4, 5]
    assert [r.optimal_step for r in out.search] == [4, 5] and out.search[0].scores == []
    # inversion (6) + edits down to i_r = 1 (3 and 4 steps side by side: 4 calls) + re-inversion (1) + final (2)
    assert unet_counter.calls == 6 + 4 + 1 + 2


def test_optimal_step_at_or_below_the_reassembly_step_survives(tiny_pipe, image, two_masks):
    """i*_k <= i_r: the candidate's clean latent is DDIM-inverted to i_r and pasted (the authors' code crashes)."""
    n, i_r = 6, 3
    pasted = {}
    original = tiny_pipe._denoise_chains

    def spy(chains, timesteps, guidance_scale, batch_size, desc):
        if desc == "OIR reassembly":
            pasted["z_r"] = chains[0].latent.clone()
        return original(chains, timesteps, guidance_scale, batch_size, desc)

    tiny_pipe._denoise_chains = spy
    try:
        out = tiny_pipe(
            image, SOURCE, TARGET, masks=two_masks, num_inference_steps=n, optimal_steps=[2, 3],
            reassembly_step=i_r, reinversion_steps=0, output_type="pt",
        )
    finally:
        del tiny_pipe._denoise_chains
    assert out.images.shape == (1, 3, 64, 64) and torch.isfinite(out.images).all()

    inversion = tiny_pipe.invert(image, SOURCE, num_inference_steps=n)
    source = tiny_pipe.encode_prompt([SOURCE])
    owners = assign_mask_owners(tiny_pipe.prepare_masks(two_masks, 64, 64), (8, 8))
    for k, (step, prompt) in enumerate(
        [(2, "a photo of fried rice and chopsticks"), (3, "a photo of dumplings and a knife")]
    ):
        clean = tiny_pipe.generate_candidates(inversion, prompt, steps=[step])
        expected = tiny_pipe._invert_latents(clean, inversion.timesteps, 0, i_r, source)[-1, 0]
        region = owners[k + 1, 0].bool()
        torch.testing.assert_close(pasted["z_r"][:, region], expected[:, region], atol=1e-5, rtol=0)
        assert not torch.allclose(pasted["z_r"][:, region], inversion.latents[i_r][:, region])
    background = owners[0, 0].bool()
    torch.testing.assert_close(pasted["z_r"][:, background], inversion.latents[i_r][:, background])


def test_overlapping_masks(tiny_pipe, image):
    first = np.zeros((64, 64), dtype=bool)
    first[0:40, 0:40] = True
    second = np.zeros((64, 64), dtype=bool)
    second[16:56, 16:56] = True
    out = tiny_pipe(image, SOURCE, TARGET, masks=[first, second], num_inference_steps=5, output_type="np")
    assert out.images.shape == (1, 64, 64, 3) and np.isfinite(out.images).all()


def test_non_square_image_and_output_types(tiny_pipe, two_masks):
    image = PIL.Image.fromarray(
        (np.random.default_rng(0).random((48, 80, 3)) * 255).astype(np.uint8)
    )  # 80x48
    masks = [m[:48, :] for m in two_masks]  # any resolution is resized to the image
    kwargs = dict(masks=masks, num_inference_steps=4, optimal_steps=[2, 3])
    assert tiny_pipe(image, SOURCE, TARGET, **kwargs).images[0].size == (80, 48)
    assert tiny_pipe(image, SOURCE, TARGET, output_type="latent", **kwargs).images.shape == (1, 4, 6, 10)
    images, steps, search = tiny_pipe(image, SOURCE, TARGET, output_type="np", return_dict=False, **kwargs)
    assert images.shape == (1, 48, 80, 3) and steps == [2, 3] and len(search) == 2


def test_explicit_edits_duplicate_targets_and_guided_prompts(tiny_pipe, image, two_masks):
    out = tiny_pipe(
        image, "a cat and a cat", "a dog and a dog", masks=two_masks, num_inference_steps=4,
        edits=[("cat", "dog"), {"source": "cat", "target": "dog", "guided_prompt": "a cat and a big dog"}],
    )
    assert [r.guided_prompt for r in out.search] == ["a dog and a cat", "a cat and a big dog"]
    assert [r.edit.target for r in out.search] == ["dog", "dog"]
    out = tiny_pipe(image, "a cat", "a dog", masks=two_masks[:1], num_inference_steps=4, edits=Edit("cat", "dog"))
    assert len(out.optimal_steps) == 1


def test_mask_generator_hook(tiny_pipe, image, two_masks):
    seen = {}

    def generator(pil_image, phrases):
        seen["size"], seen["phrases"] = pil_image.size, phrases
        return [PIL.Image.fromarray(m.astype(np.uint8) * 255) for m in two_masks]

    out = tiny_pipe(
        image, SOURCE, TARGET, mask_generator=generator, num_inference_steps=4,
        edits=[("dumplings", "fried rice"), Edit("chopsticks", "a knife", mask_phrase="the chopsticks")],
    )
    assert seen == {"size": (64, 64), "phrases": ["dumplings", "the chopsticks"]}
    for record, mask in zip(out.search, two_masks):
        assert np.array_equal(np.asarray(record.mask) > 0, mask)


def test_builtin_mask(tiny_pipe, image):
    kwargs = dict(generator=torch.Generator().manual_seed(0))
    cat = tiny_pipe.generate_mask(image, "a photo of a cat", "a photo of a dog", **kwargs)
    car = tiny_pipe.generate_mask(image, "a photo of a cat", "a photo of a car", generator=torch.Generator().manual_seed(0))
    assert cat.size == (64, 64) and cat.mode == "L"
    assert set(np.unique(np.asarray(cat))) <= {0, 255}
    assert not np.array_equal(np.asarray(cat), np.asarray(car))
    again = tiny_pipe.generate_mask(image, "a photo of a cat", "a photo of a dog", generator=torch.Generator().manual_seed(0))
    assert np.array_equal(np.asarray(cat), np.asarray(again))
    dilated = tiny_pipe.generate_mask(
        image, "a photo of a cat", "a photo of a dog", dilation=4, generator=torch.Generator().manual_seed(0)
    )
    assert (np.asarray(dilated) > 0).sum() >= (np.asarray(cat) > 0).sum()
    with pytest.raises(ValueError, match="threshold"):
        tiny_pipe.generate_mask(image, "a cat", "a dog", threshold=2)


def test_builtin_mask_is_used_without_masks(tiny_pipe, image):
    encodes = []
    handle = tiny_pipe.vae.encoder.register_forward_pre_hook(lambda module, args: encodes.append(1))
    try:
        out = tiny_pipe(
            image, SOURCE, TARGET, num_inference_steps=4, generator=torch.Generator().manual_seed(0),
            mask_options={"threshold": 0.6},
        )
    finally:
        handle.remove()
    assert len(encodes) == 1  # the mask reuses the inversion's z_0
    z_0 = tiny_pipe.encode_image(tiny_pipe.preprocess_image(image))
    expected = tiny_pipe._noise_difference_masks(
        z_0, (64, 64), SOURCE, [r.guided_prompt for r in out.search], 10, 0.5, 0.6, 0, torch.Generator().manual_seed(0)
    )
    for record, mask in zip(out.search, expected):
        assert np.array_equal(np.asarray(record.mask) > 0, mask[0].numpy() > 0)
