"""Bad input is a clear ValueError naming the argument, raised before any UNet call."""

import numpy as np
import PIL.Image
import pytest
import torch

from oir import OIRInversion

SOURCE = "a photo of dumplings and chopsticks"
TARGET = "a photo of fried rice and a knife"


def mask(top=8, bottom=40, left=8, right=40, size=64):
    m = np.zeros((size, size), dtype=bool)
    m[top:bottom, left:right] = True
    return m


GOOD = dict(masks=[mask(), mask(32, 64, 32, 64)], num_inference_steps=4)

CASES = [
    ("edit phrase not in the prompt", dict(edits=[("noodles", "rice"), ("chopsticks", "a knife")]), r"edits\[0\].*'noodles'"),
    ("wrong number of masks", dict(masks=[mask()]), "one mask per edit: got 1 masks for 2 edits"),
    ("empty mask", dict(masks=[mask(), np.zeros((64, 64))]), r"masks\[1\]` is empty"),
    ("mask too small for a latent cell", dict(masks=[mask(0, 3, 0, 3), mask()]), r"masks\[0\]` is empty"),
    ("full mask", dict(masks=[mask(), np.ones((64, 64))]), r"masks\[1\]` covers the whole image"),
    ("mask of a wrong type", dict(masks=["mask.png", mask()]), r"masks\[0\]`: a mask must be"),
    ("steps out of range", dict(optimal_steps=[0, 2]), "optimal_steps"),
    ("steps above N", dict(optimal_steps=[2, 5]), r"optimal_steps.*1\.\.4"),
    ("one optimal step for two edits", dict(optimal_steps=[2]), "one step per edit"),
    ("search steps out of range", dict(search_steps=[1, 9]), "search_steps"),
    ("empty search steps", dict(search_steps=[]), "search_steps"),
    ("reassembly step >= N", dict(reassembly_step=4), "reassembly_step"),
    ("reassembly share >= 1", dict(reassembly_step=1.0), "reassembly_step"),
    ("reassembly + reinversion > N", dict(reassembly_step=3, reinversion_steps=2), "must not exceed"),
    ("negative reinversion", dict(reinversion_steps=-1), "reinversion_steps"),
    ("zero steps", dict(num_inference_steps=0), "num_inference_steps"),
    ("float steps", dict(num_inference_steps=4.0), "num_inference_steps"),
    ("bad output type", dict(output_type="jpeg"), "output_type"),
    ("bad clip mask", dict(clip_mask="medium"), "clip_mask"),
    ("bad search text", dict(search_text="caption"), "search_text"),
    ("bad batch size", dict(candidate_batch_size=0), "candidate_batch_size"),
    ("masks and generator", dict(mask_generator=lambda image, phrases: []), "either `masks` or `mask_generator`"),
    ("generator not callable", dict(masks=None, mask_generator="sam"), "mask_generator"),
    ("bad mask options", dict(masks=None, mask_options={"radius": 3}), "mask_options"),
    ("bad edit", dict(edits=[("dumplings",)]), "edits"),
    ("empty target", dict(edits=[("dumplings", " "), ("chopsticks", "a knife")]), r"edits\[0\]` has an empty target"),
    ("bad inversion", dict(inversion="latents.pt"), "inversion"),
]


@pytest.mark.parametrize("kwargs, match", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_call_arguments(tiny_pipe, image, unet_counter, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_pipe(image, SOURCE, TARGET, **{**GOOD, **kwargs})
    assert unet_counter.calls == 0


@pytest.mark.parametrize(
    "bad_image, match",
    [
        (PIL.Image.new("RGB", (60, 64)), r"60x64: both sides must be multiples of 8"),
        (torch.rand(3, 64, 36), r"36x64"),
        (np.zeros((2, 64, 64, 3)), "a single image"),
        ("photo.png", "`image` must be"),
    ],
)
def test_bad_images(tiny_pipe, unet_counter, bad_image, match):
    with pytest.raises(ValueError, match=match):
        tiny_pipe(bad_image, SOURCE, TARGET, **GOOD)
    with pytest.raises(ValueError, match=match):
        tiny_pipe.invert(bad_image, SOURCE, num_inference_steps=4)
    assert unet_counter.calls == 0


@pytest.mark.parametrize(
    "source, target, match",
    [("", TARGET, "source_prompt"), (SOURCE, None, "target_prompt"), (SOURCE, SOURCE, "nothing to edit"),
     ("a cat", "a big cat", "adds 'big'.*edits=")],
)
def test_bad_prompts(tiny_pipe, image, unet_counter, source, target, match):
    with pytest.raises(ValueError, match=match):
        tiny_pipe(image, source, target, masks=[mask()], num_inference_steps=4)
    assert unet_counter.calls == 0


def test_inversion_that_does_not_fit(tiny_pipe, image, unet_counter):
    latents = torch.zeros(5, 4, 8, 8)
    timesteps = torch.tensor([751, 501, 251, 1])
    cases = [
        (OIRInversion(latents, timesteps, "another prompt"), "was made with the prompt"),
        (OIRInversion(latents[:4], timesteps[:3], SOURCE), "has 3 steps"),
        (OIRInversion(torch.zeros(5, 4, 6, 6), timesteps, SOURCE), "latents are"),
    ]
    for inversion, match in cases:
        with pytest.raises(ValueError, match=match):
            tiny_pipe(image, SOURCE, TARGET, inversion=inversion, **GOOD)
    assert unet_counter.calls == 0


def test_bad_generate_candidates_arguments(tiny_pipe, unet_counter):
    inversion = OIRInversion(torch.zeros(5, 4, 8, 8), torch.tensor([751, 501, 251, 1]), SOURCE)
    for kwargs, match in [(dict(steps=[0]), "steps"), (dict(steps=[5]), "steps"), (dict(batch_size=-1), "batch_size")]:
        with pytest.raises(ValueError, match=match):
            tiny_pipe.generate_candidates(inversion, TARGET, **kwargs)
    with pytest.raises(ValueError, match="inversion"):
        tiny_pipe.generate_candidates(torch.zeros(5, 4, 8, 8), TARGET)
    assert unet_counter.calls == 0


def test_mask_generator_returning_the_wrong_count(tiny_pipe, image, unet_counter):
    with pytest.raises(ValueError, match="one mask per phrase"):
        tiny_pipe(image, SOURCE, TARGET, num_inference_steps=4, mask_generator=lambda image, phrases: [mask()])
    with pytest.raises(ValueError, match=r"mask_generator\(\.\.\.\)\[1\]` is empty"):
        tiny_pipe(
            image, SOURCE, TARGET, num_inference_steps=4,
            mask_generator=lambda image, phrases: [mask(), np.zeros((64, 64))],
        )
    assert unet_counter.calls == 0
