"""Every way a diffusers user loads the pipeline, offline, on a tiny Stable Diffusion folder."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, PNDMScheduler, StableDiffusionPipeline
from transformers import CLIPModel, CLIPProcessor

from oir import OIRPipeline
from oir.testing import save_tiny_stable_diffusion, tiny_components

PIPELINE_FILE = str(Path(__file__).resolve().parents[1] / "pipeline_oir.py")
SOURCE, TARGET = "a photo of a cat", "a photo of a dog"


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return save_tiny_stable_diffusion(str(tmp_path_factory.mktemp("tiny-sd")))


@pytest.fixture(scope="module")
def clip():
    components = tiny_components(seed=1)
    return {"clip_model": components["clip_model"], "clip_processor": components["clip_processor"]}


def edit(pipe):
    pipe.set_progress_bar_config(disable=True)
    mask = np.zeros((64, 64), dtype=bool)
    mask[16:48, 16:48] = True
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    return pipe(image, SOURCE, TARGET, masks=[mask], num_inference_steps=3, output_type="np")


def test_from_pretrained_with_clip(sd_folder, clip):
    pipe = OIRPipeline.from_pretrained(sd_folder, **clip)
    assert isinstance(pipe, OIRPipeline) and pipe.clip_model is clip["clip_model"]
    assert edit(pipe).images.shape == (1, 64, 64, 3)


def test_custom_pipeline_file(sd_folder, clip):
    pipe = DiffusionPipeline.from_pretrained(
        sd_folder, custom_pipeline=PIPELINE_FILE, trust_remote_code=True, **clip
    )
    assert type(pipe).__name__ == "OIRPipeline" and type(pipe) is not OIRPipeline  # the file, not the package
    assert edit(pipe).images.shape == (1, 64, 64, 3)


def test_from_pipe_shares_the_models(sd_folder, clip):
    sd = StableDiffusionPipeline.from_pretrained(sd_folder)
    pipe = OIRPipeline.from_pipe(sd, **clip)
    assert pipe.unet is sd.unet and pipe.vae is sd.vae and pipe.text_encoder is sd.text_encoder
    assert edit(pipe).images.shape == (1, 64, 64, 3)


def test_save_and_load_round_trip_keeps_clip(sd_folder, clip, tmp_path):
    pipe = OIRPipeline.from_pretrained(sd_folder, **clip)
    pipe.save_pretrained(tmp_path / "oir")
    assert {"clip_model", "clip_processor"} <= set(os.listdir(tmp_path / "oir"))
    loaded = OIRPipeline.from_pretrained(tmp_path / "oir")
    assert isinstance(loaded.clip_model, CLIPModel) and isinstance(loaded.clip_processor, CLIPProcessor)
    for name in ("unet", "clip_model"):
        before, after = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert all(torch.equal(before[key], after[key]) for key in before)
    np.testing.assert_allclose(edit(loaded).images, edit(pipe).images, atol=1e-6)


def test_another_scheduler_is_converted_to_ddim(sd_folder, clip, tmp_path):
    sd = StableDiffusionPipeline.from_pretrained(sd_folder)
    sd.scheduler = PNDMScheduler.from_config(sd.scheduler.config)  # what CompVis/stable-diffusion-v1-4 ships
    sd.save_pretrained(tmp_path / "pndm")
    pipe = OIRPipeline.from_pretrained(tmp_path / "pndm", **clip)
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert torch.equal(pipe.scheduler.alphas_cumprod, sd.scheduler.alphas_cumprod)


def test_without_clip_only_with_optimal_steps(sd_folder):
    pipe = OIRPipeline.from_pretrained(sd_folder)
    assert pipe.clip_model is None
    mask = np.zeros((64, 64), dtype=bool)
    mask[16:48, 16:48] = True
    image = torch.rand(3, 64, 64)
    with pytest.raises(ValueError, match="clip_model"):
        pipe(image, SOURCE, TARGET, masks=[mask], num_inference_steps=3)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(image, SOURCE, TARGET, masks=[mask], num_inference_steps=3, optimal_steps=[2])
    assert out.optimal_steps == [2]


def test_device_map_at_load(sd_folder, clip):
    pipe = OIRPipeline.from_pretrained(sd_folder, device_map="balanced", **clip)
    assert edit(pipe).images.shape == (1, 64, 64, 3)


def test_model_cpu_offload(sd_folder, clip):
    pipe = OIRPipeline.from_pretrained(sd_folder, **clip)
    reference = edit(pipe).images
    pipe.enable_model_cpu_offload(device="cpu")
    assert {"text_encoder", "unet", "vae", "clip_model"} <= {
        name for name, model in pipe.components.items() if hasattr(model, "_hf_hook")
    }
    np.testing.assert_allclose(edit(pipe).images, reference, atol=1e-6)


def test_search_vae_component_loads_and_saves(sd_folder, clip, tmp_path):
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    taesd = AutoencoderTiny(encoder_block_out_channels=(4, 4, 4, 4), decoder_block_out_channels=(4, 4, 4, 4))
    pipe = OIRPipeline.from_pretrained(sd_folder, search_vae=taesd, **clip)
    assert pipe.search_vae is taesd
    pipe.save_pretrained(tmp_path / "oir")
    loaded = OIRPipeline.from_pretrained(tmp_path / "oir")
    assert isinstance(loaded.search_vae, AutoencoderTiny)
    assert edit(loaded).images.shape == (1, 64, 64, 3)
