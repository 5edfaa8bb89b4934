"""Randomly initialised model components, for offline tests, smoke runs and benchmarks.

No pretrained weights can be downloaded in CI, so everything here is built from configs:

* :func:`clip_tokenizer` rebuilds the real 49408-token CLIP BPE tokenizer (the one Stable Diffusion and CLIP use)
  from the vocabulary file shipped inside the ``open-clip-torch`` wheel, so prompts are tokenized exactly as with
  ``CompVis/stable-diffusion-v1-4``.
* :func:`tiny_components` is a few-hundred-kilobyte Stable-Diffusion-shaped model (8x VAE, cross-attention UNet,
  CLIP text encoder) plus a tiny CLIP for the search; its images are noise, but every code path runs.
* :func:`sd15_components` is the full-size Stable Diffusion 1.5 architecture (UNet, VAE, ViT-L/14 text encoder) and
  a CLIP ViT-B/16 with random weights: the real compute cost, without the weights.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from functools import lru_cache

import torch

__all__ = [
    "clip_tokenizer", "random_components", "tiny_components", "sd15_components", "tiny_pipeline",
    "save_tiny_stable_diffusion",
]

CLIP_VOCAB_SIZE = 49408


def _open_clip_bpe_path() -> str:
    try:
        from open_clip.tokenizer import default_bpe
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Rebuilding the CLIP tokenizer offline needs the BPE vocabulary shipped with `open-clip-torch`: "
            "pip install open-clip-torch"
        ) from error
    return default_bpe()


@lru_cache(maxsize=1)
def _clip_vocab_files() -> str:
    """Writes ``vocab.json`` and ``merges.txt`` of the CLIP BPE tokenizer to a cache folder and returns it."""
    from open_clip.tokenizer import bytes_to_unicode

    lines = gzip.open(_open_clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == CLIP_VOCAB_SIZE, len(vocab)

    folder = os.path.join(tempfile.gettempdir(), "oir-clip-tokenizer")
    os.makedirs(folder, exist_ok=True)
    contents = {
        "vocab.json": json.dumps({token: i for i, token in enumerate(vocab)}),
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
    }
    for name, text in contents.items():
        # Atomic: processes starting together never read a half-written file.
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(temporary, os.path.join(folder, name))
    return folder


def clip_tokenizer(model_max_length: int = 77):
    """The real CLIP tokenizer (49408 tokens, ``<|startoftext|>`` = 49406, ``<|endoftext|>`` = 49407), built offline."""
    from transformers import CLIPTokenizer

    folder = _clip_vocab_files()
    return CLIPTokenizer(
        os.path.join(folder, "vocab.json"),
        os.path.join(folder, "merges.txt"),
        model_max_length=model_max_length,
        pad_token="<|endoftext|>",
    )


def _ddim_scheduler():
    from diffusers import DDIMScheduler

    # The scheduler configuration of Stable Diffusion 1.x.
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def _clip_model_and_processor(text_config: dict, vision_config: dict, projection_dim: int, image_size: int):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    config = CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=projection_dim)
    clip_model = CLIPModel(config).eval()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    clip_processor = CLIPProcessor(image_processor=image_processor, tokenizer=clip_tokenizer())
    return clip_model, clip_processor


_CLIP_TOKENS = dict(vocab_size=CLIP_VOCAB_SIZE, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)

# Architectures as keyword arguments of UNet2DConditionModel, AutoencoderKL, CLIPTextConfig and (for the search)
# CLIPConfig's text and vision configs.
TINY = dict(
    unet=dict(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, cross_attention_dim=16, attention_head_dim=4,
        norm_num_groups=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    ),
    vae=dict(block_out_channels=(4, 4, 8, 8), layers_per_block=1, norm_num_groups=4, sample_size=64),
    text_encoder=dict(hidden_size=16, intermediate_size=24, num_attention_heads=2, num_hidden_layers=2),
    clip_text=dict(hidden_size=16, intermediate_size=24, num_attention_heads=2, num_hidden_layers=2),
    clip_vision=dict(
        hidden_size=16, intermediate_size=24, num_attention_heads=2, num_hidden_layers=2, image_size=32, patch_size=4
    ),
    projection_dim=8,
)
SD15 = dict(  # Stable Diffusion 1.5 (UNet, VAE, CLIP ViT-L/14 text encoder) and CLIP ViT-B/16 for the search
    unet=dict(
        block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, sample_size=64, cross_attention_dim=768,
        attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    ),
    vae=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512),
    text_encoder=dict(
        hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12, projection_dim=768,
        hidden_act="quick_gelu",
    ),
    clip_text=dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_hidden_layers=12),
    clip_vision=dict(
        hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12, image_size=224,
        patch_size=16,
    ),
    projection_dim=512,
)


def random_components(architecture: dict, seed: int = 0, with_clip: bool = True) -> dict:
    """Stable Diffusion components (and a CLIP for the search) of ``architecture`` with seeded random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    vae_blocks = len(architecture["vae"]["block_out_channels"])
    components = {
        "unet": UNet2DConditionModel(in_channels=4, out_channels=4, **architecture["unet"]).eval(),
        "vae": AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, down_block_types=("DownEncoderBlock2D",) * vae_blocks,
            up_block_types=("UpDecoderBlock2D",) * vae_blocks, **architecture["vae"],
        ).eval(),
        "text_encoder": CLIPTextModel(
            CLIPTextConfig(max_position_embeddings=77, **_CLIP_TOKENS, **architecture["text_encoder"])
        ).eval(),
        "tokenizer": clip_tokenizer(),
        "scheduler": _ddim_scheduler(),
    }
    if with_clip:
        clip_model, clip_processor = _clip_model_and_processor(
            text_config={**_CLIP_TOKENS, **architecture["clip_text"]},
            vision_config=architecture["clip_vision"],
            projection_dim=architecture["projection_dim"],
            image_size=architecture["clip_vision"]["image_size"],
        )
        components.update(clip_model=clip_model, clip_processor=clip_processor)
    return components


def tiny_components(seed: int = 0, with_clip: bool = True) -> dict:
    """A tiny Stable-Diffusion-shaped model: 8x VAE (64px image -> 8x8 latent), UNet, CLIP text encoder, DDIM.

    With ``with_clip`` it also holds a tiny CLIP (32px, 8x8 patch grid) and its processor for the search.
    """
    return random_components(TINY, seed=seed, with_clip=with_clip)


def sd15_components(seed: int = 0, with_clip: bool = True) -> dict:
    """Stable Diffusion 1.5's architecture (and CLIP ViT-B/16 for the search) with random weights."""
    return random_components(SD15, seed=seed, with_clip=with_clip)


def tiny_pipeline(seed: int = 0, with_clip: bool = True):
    """An :class:`OIRPipeline` on :func:`tiny_components`, on the CPU, with the progress bars off."""
    from pipeline_oir import OIRPipeline

    pipe = OIRPipeline(**tiny_components(seed=seed, with_clip=with_clip))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_stable_diffusion(path: str, seed: int = 0) -> str:
    """Saves a tiny ``StableDiffusionPipeline`` folder (as on the Hub, without safety checker) and returns ``path``."""
    from diffusers import StableDiffusionPipeline

    components = tiny_components(seed=seed, with_clip=False)
    pipe = StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.save_pretrained(path)
    return path
