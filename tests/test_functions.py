"""The small pure functions of pipeline_oir.py, each on its own."""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDIMScheduler

from pipeline_oir import (
    Edit,
    alphas_at,
    assign_mask_owners,
    clip_attention_mask,
    ddim_step,
    derive_edits,
    guided_prompts,
    mask_to_tensor,
    minmax_normalize,
    resize_mask,
    search_metric,
    splice_chains,
)


def sd_scheduler(**kwargs):
    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, **kwargs,
    )


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_step_equals_scheduler_step_per_sample(prediction_type):
    scheduler = sd_scheduler(prediction_type=prediction_type)
    scheduler.set_timesteps(10)
    generator = torch.Generator().manual_seed(0)
    timesteps = scheduler.timesteps[[0, 3, 9]]  # every sample at its own timestep, the last one to the final alpha
    sample = torch.randn(3, 4, 8, 8, generator=generator)
    output = torch.randn(3, 4, 8, 8, generator=generator)
    ratio = scheduler.config.num_train_timesteps // 10
    ours = ddim_step(sample, output, alphas_at(scheduler, timesteps), alphas_at(scheduler, timesteps - ratio), prediction_type)
    for row, t in enumerate(timesteps):
        reference = scheduler.step(output[row : row + 1], t, sample[row : row + 1]).prev_sample
        torch.testing.assert_close(ours[row : row + 1], reference, rtol=0, atol=1e-5)


def test_ddim_step_inverts_itself_for_a_fixed_noise():
    generator = torch.Generator().manual_seed(1)
    x, eps = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    a, b = torch.tensor([0.9, 0.5]), torch.tensor([0.3, 0.99])
    back = ddim_step(ddim_step(x, eps, a, b), eps, b, a)
    torch.testing.assert_close(back, x, rtol=0, atol=1e-5)


def test_ddim_step_rejects_unknown_prediction_type():
    with pytest.raises(ValueError, match="prediction_type"):
        ddim_step(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), torch.ones(1), torch.ones(1), "flow")


def test_alphas_at_uses_final_alpha_below_zero():
    scheduler = sd_scheduler()
    alphas = alphas_at(scheduler, torch.tensor([-19, 0, 981]))
    assert alphas[0] == scheduler.final_alpha_cumprod == scheduler.alphas_cumprod[0]
    assert alphas[2] == scheduler.alphas_cumprod[981]


@pytest.mark.parametrize("n", [1, 2, 5, 10, 50])
def test_splice_chains_pairs_lengths_to_n_plus_one(n):
    lengths = list(range(1, n + 1))
    lanes = splice_chains(lengths)
    assert sorted(c for lane in lanes for c in lane) == list(range(n))  # every chain exactly once
    assert len(lanes) == (n + 1) // 2
    assert max(sum(lengths[c] for c in lane) for lane in lanes) == n + 1 if n > 1 else 1
    assert all(len(lane) <= 2 for lane in lanes)


def test_splice_chains_never_lengthens_the_longest_chain_by_more_than_one_step():
    lengths = [10, 12, 14, 16, 18, 20]  # no pair fits in 21 steps: one lane each, 20 calls
    assert sorted(map(tuple, splice_chains(lengths))) == [(0,), (1,), (2,), (3,), (4,), (5,)]
    assert splice_chains([3, 4]) == [[1], [0]]
    assert splice_chains([5, 1, 1, 1, 1, 1]) == [[0, 5], [1, 4, 3, 2]]


@pytest.mark.parametrize("num_lanes, makespan", [(1, 21), (2, 11), (3, 7), (4, 6), (10, 6)])
def test_splice_chains_with_a_lane_cap(num_lanes, makespan):
    lengths = [1, 2, 3, 4, 5, 6]
    lanes = splice_chains(lengths, num_lanes)
    assert len(lanes) == min(num_lanes, 6)
    assert sorted(c for lane in lanes for c in lane) == list(range(6))
    assert max(sum(lengths[c] for c in lane) for lane in lanes) == makespan


def test_minmax_normalize_and_flat_scores():
    torch.testing.assert_close(minmax_normalize([1.0, 3.0, 2.0]), torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64))
    assert minmax_normalize([0.7, 0.7, 0.7]).tolist() == [0.0, 0.0, 0.0]


def test_search_metric_average_and_ties_take_the_smaller_step():
    scores, best = search_metric([0.1, 0.3, 0.2], [-3.0, -1.0, -2.0])
    assert best == 1 and scores.tolist() == [0.0, 1.0, 0.5]
    scores, best = search_metric([0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0])  # tie between index 1 and 3
    assert best == 1
    scores, best = search_metric([0.2, 0.2], [-1.0, -1.0])  # flat: all zero, first wins
    assert best == 0 and scores.tolist() == [0.0, 0.0]


def test_resize_mask_by_area():
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :8, :6] = 1  # covers 6/8 of the left column of 8x8 cells in a 2x2 grid
    assert resize_mask(mask, (2, 2))[0, 0].tolist() == [[1.0, 0.0], [0.0, 0.0]]
    assert resize_mask(mask, (2, 2), threshold=0.9)[0, 0].sum() == 0


def test_assign_mask_owners_gives_every_cell_one_owner():
    masks = torch.zeros(3, 1, 8, 8)
    masks[0, :, :6, :6] = 1
    masks[1, :, 2:8, 2:8] = 1  # overlaps the first
    masks[2, :, :6, :6] = 1  # identical to the first: ties go to the earlier edit
    owners = assign_mask_owners(masks, (4, 4))
    assert owners.shape == (4, 1, 4, 4)
    assert torch.all(owners.sum(0) == 1)
    assert owners[3].sum() == 0  # the duplicate of edit 0 owns nothing
    assert owners[1, 0, 0, 0] == 1 and owners[2, 0, 3, 3] == 1 and owners[0].sum() > 0


def test_clip_attention_mask_hard_and_soft():
    patch_mask = torch.tensor([[True, False, True, False]])
    hard = clip_attention_mask(patch_mask, "hard")
    assert hard.shape == (1, 1, 5, 5)
    assert torch.all(hard[0, 0, :, [0, 1, 3]] == 0)
    assert torch.all(hard[0, 0, :, [2, 4]] < -1e30) and torch.isfinite(hard).all()
    soft = clip_attention_mask(patch_mask, "soft")
    assert soft[0, 0, 0].tolist() == [1.0, 1.0, 0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="clip_mask"):
        clip_attention_mask(patch_mask, "medium")


@pytest.mark.parametrize(
    "source, target, expected",
    [
        ("a photo of dumplings and chopsticks", "a photo of fried rice and a knife",
         [("dumplings", "fried rice"), ("chopsticks", "a knife")]),
        ("A bowl of dumplings on a table.", "a plate of fried rice on a table.",
         [("bowl of dumplings", "plate of fried rice")]),
        ("a cat, a dog and a cat", "a cat, a fox and a cow", [("dog", "fox"), ("cat", "cow")]),
        ("a Red car", "a blue car", [("Red", "blue")]),
        ("a cat on a mat", "an owl on a mat", [("a cat", "an owl")]),
        ("Dumplings, chopsticks and a cup.", "fried rice, a knife and a cup.",
         [("Dumplings", "fried rice"), ("chopsticks", "a knife")]),
        ("a cup of coffee and a cup of tea", "a cup of coffee and a glass of milk", [("cup of tea", "glass of milk")]),
    ],
)
def test_derive_edits(source, target, expected):
    assert [(e.source, e.target) for e in derive_edits(source, target)] == expected


@pytest.mark.parametrize(
    "source, target, match",
    [("a cat", "a red cat", "adds 'red'"), ("a red cat", "a cat", "loses 'red'"), ("a cat", "A cat", "nothing to edit")],
)
def test_derive_edits_errors(source, target, match):
    with pytest.raises(ValueError, match=match):
        derive_edits(source, target)


def test_guided_prompts_replace_one_occurrence_each():
    source = "a cat and a cat on a mat"
    edits = [Edit("cat", "dog"), Edit("cat", "tiger"), Edit("mat", "sofa", guided_prompt="custom")]
    assert guided_prompts(source, edits) == ["a dog and a cat on a mat", "a cat and a tiger on a mat", "custom"]
    # Word boundaries: "cat" does not match inside "category".
    with pytest.raises(ValueError, match=r"edits\[0\].*'cat' does not occur"):
        guided_prompts("a category", [Edit("cat", "dog")])
    with pytest.raises(ValueError, match="any more"):
        guided_prompts("a cat", [Edit("cat", "dog"), Edit("cat", "fox")])


def _as_modes():
    base = np.zeros((16, 16), dtype=np.uint8)
    base[4:12, 2:9] = 255
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[..., 3] = base
    return [
        PIL.Image.fromarray(base, "L"),
        PIL.Image.fromarray(base, "L").convert("1"),
        PIL.Image.fromarray(base, "L").convert("RGB"),
        PIL.Image.fromarray(rgba, "RGBA"),
        base > 0,
        base,
        base.astype(np.float32) / 255,
        base.astype(np.float32),
        torch.from_numpy(base > 0),
        torch.from_numpy(base).float()[None] / 255,
        np.repeat(base[..., None], 3, axis=-1),
    ]


@pytest.mark.parametrize("mask", _as_modes())
def test_mask_to_tensor_binarises_every_mode_the_same_way(mask):
    expected = torch.zeros(16, 16)
    expected[4:12, 2:9] = 1
    torch.testing.assert_close((mask_to_tensor(mask) >= 0.5).float(), expected)


def test_mask_to_tensor_rejects_other_types():
    with pytest.raises(ValueError, match="PIL image"):
        mask_to_tensor("mask.png")
