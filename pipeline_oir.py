# Copyright 2026 The OIR-diffusers authors. Licensed under the Apache License, Version 2.0.
"""Object-aware Inversion and Reassembly (OIR, ICLR 2024) as a diffusers pipeline.

Zhen Yang, Ganggui Ding, Wen Wang, Hao Chen, Bohan Zhuang, Chunhua Shen. "Object-aware Inversion and Reassembly for
Image Editing", ICLR 2024. https://arxiv.org/abs/2310.12149

This file is self-contained (PyPI imports only), so that it can be loaded with
``DiffusionPipeline.from_pretrained(..., custom_pipeline=<this file, a Hub repo or "oir">)``. The method in four stages:

1. **Inversion**: DDIM-invert the image latent ``z_0`` with the source prompt ``P_o``, keeping ``z_0 ... z_N``.
2. **Candidates**: for each editing pair ``k`` and inversion step ``i``, denoise ``z_i`` for ``i`` steps with the
   guided prompt ``P^k`` (CFG, negative prompt ``P_o``). The chains are spliced (paper, appendix A.4): the chain of
   length ``i`` shares a batch lane with the chain of length ``N + 1 - i``, so all ``N`` candidates take ``N + 1``
   batched UNet calls instead of ``N (N + 1) / 2``.
3. **Search**: ``S_i = (norm(Se_i) + norm(Sne_i)) / 2`` where ``Se`` is the CLIP similarity of the candidate inside the
   edit mask ``M^k`` (masked self-attention in the CLIP vision tower) with the target phrase, and ``Sne`` is minus the
   MSE to the input outside ``M^k``; the optimal inversion step is ``i*_k = argmax_i S_i``.
4. **Reassembly**: each edit is denoised from ``z_{i*_k}`` to the reassembly step ``i_r``, pasted into the background
   latent ``z_{i_r}`` with its mask, re-inverted by ``i_re`` steps and denoised to the end with the target prompt.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from transformers import CLIPModel, CLIPProcessor, CLIPTextModel, CLIPTokenizer

from diffusers import AutoencoderKL, AutoencoderTiny, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.image_processor import PipelineImageInput, VaeImageProcessor
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput, logging
from diffusers.utils.accelerate_utils import apply_forward_hook
from diffusers.utils.torch_utils import randn_tensor


logger = logging.get_logger(__name__)  # pylint: disable=invalid-name

# `batch_size="auto"` off CUDA: the most latent cells (rows x h x w) per UNet call, see `OIRPipeline._auto_batch_size`.
AUTO_BATCH_LATENT_CELLS = 2**15

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from diffusers import DiffusionPipeline
        >>> from diffusers.utils import load_image
        >>> from transformers import CLIPModel, CLIPProcessor

        >>> clip_id = "openai/clip-vit-base-patch16"
        >>> pipe = DiffusionPipeline.from_pretrained(
        ...     "CompVis/stable-diffusion-v1-4",
        ...     custom_pipeline="oir",
        ...     clip_model=CLIPModel.from_pretrained(clip_id),
        ...     clip_processor=CLIPProcessor.from_pretrained(clip_id),
        ...     torch_dtype=torch.float16,
        ... ).to("cuda")

        >>> image = load_image("dumplings.png").resize((512, 512))
        >>> masks = [load_image("mask_dumplings.png"), load_image("mask_chopsticks.png")]
        >>> out = pipe(
        ...     image,
        ...     source_prompt="a plate of dumplings and a pair of chopsticks",
        ...     target_prompt="a plate of fried rice and a knife",
        ...     edits=[("dumplings", "fried rice"), ("a pair of chopsticks", "a knife")],
        ...     masks=masks,
        ... )
        >>> out.images[0].save("edited.png")
        >>> out.optimal_steps  # one optimal inversion step per edit
        ```
"""


# ----------------------------------------------------------------------------------------------------------------------
# Outputs and inputs
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Edit:
    """An editing pair ``(O_o^k, O_t^k)``: a phrase of the source prompt and its replacement in the target prompt.

    Args:
        source (`str`): the phrase ``O_o^k`` as it occurs in the source prompt.
        target (`str`): its replacement ``O_t^k``.
        guided_prompt (`str`, *optional*): the guided prompt ``P^k``; by default the source prompt with this
            occurrence of ``source`` replaced by ``target``.
        mask_phrase (`str`, *optional*): what an automatic mask finder looks for; by default ``source``.
    """

    source: str
    target: str
    guided_prompt: str | None = None
    mask_phrase: str | None = None

    @classmethod
    def from_any(cls, edit: "Edit | tuple | list | dict") -> "Edit":
        if isinstance(edit, Edit):
            return Edit(edit.source, edit.target, edit.guided_prompt, edit.mask_phrase)
        if isinstance(edit, dict):
            unknown = set(edit) - {"source", "target", "guided_prompt", "mask_phrase"}
            if unknown or "source" not in edit or "target" not in edit:
                raise ValueError(
                    "`edits`: a dict edit needs the keys 'source' and 'target' (optional: 'guided_prompt', "
                    f"'mask_phrase'), got keys {sorted(edit)}."
                )
            return cls(**edit)
        if isinstance(edit, (tuple, list)) and len(edit) == 2 and all(isinstance(p, str) for p in edit):
            return cls(edit[0], edit[1])
        raise ValueError(
            "`edits` must hold (source_phrase, target_phrase) tuples, dicts with 'source' and 'target', or `Edit` "
            f"objects; got {edit!r}."
        )


@dataclass
class OIRInversion(BaseOutput):
    """The DDIM inversion of an image, reusable across edits of the same image.

    Args:
        latents (`torch.Tensor` of shape `(N + 1, C, h, w)`): ``z_0 ... z_N``; ``z_0`` is the image's VAE latent and
            ``z_i`` lies at the noise level ``timesteps[N - i]``.
        timesteps (`torch.Tensor` of shape `(N,)`): the scheduler's descending DDIM timesteps for ``N`` steps.
        prompt (`str`): the prompt the image was inverted with (the source prompt ``P_o``).
        guidance_scale (`float`): the guidance scale of the inversion (1.0: conditional only).
    """

    latents: torch.Tensor
    timesteps: torch.Tensor
    prompt: str
    guidance_scale: float = 1.0

    @property
    def num_inference_steps(self) -> int:
        return len(self.timesteps)


@dataclass
class OIRSearchRecord:
    """The search of one editing pair (paper, Sec. 3.1).

    Args:
        edit (`Edit`): the editing pair.
        guided_prompt (`str`): the guided prompt ``P^k`` its candidates were denoised with.
        steps (`list[int]`): the searched inversion steps ``i``.
        editing_scores (`list[float]`): raw ``Se_i`` (CLIP cosine similarity inside the mask).
        non_editing_scores (`list[float]`): raw ``Sne_i`` (minus the MSE to the input outside the mask).
        scores (`list[float]`): ``S_i = (norm(Se_i) + norm(Sne_i)) / 2``, in ``[0, 1]``.
        optimal_step (`int`): ``i*`` = the searched step with the highest ``S`` (ties: the smaller step).
        mask (`PIL.Image.Image`): the edit's binary mask ``M^k`` at the image's size (mode ``"L"``, 0/255).
        candidates (`list[PIL.Image.Image]`, *optional*): the candidate images ``I^i``, with `return_candidates=True`.
    """

    edit: Edit
    guided_prompt: str
    steps: list[int]
    editing_scores: list[float]
    non_editing_scores: list[float]
    scores: list[float]
    optimal_step: int
    mask: PIL.Image.Image | None = None
    candidates: list[PIL.Image.Image] | None = None


@dataclass
class OIRPipelineOutput(BaseOutput):
    """Output of [`OIRPipeline`].

    Args:
        images (`list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`): the edited image (a batch of one).
        optimal_steps (`list[int]`): the optimal inversion step ``i*_k`` of each edit, in the order of the edits.
        search (`list[OIRSearchRecord]`): one record per edit, in the order of the edits.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    optimal_steps: list[int]
    search: list[OIRSearchRecord] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------------------
# Small pure functions (each tested on its own)
# ----------------------------------------------------------------------------------------------------------------------


def ddim_step(
    sample: torch.Tensor,
    model_output: torch.Tensor,
    alpha_prod_t: torch.Tensor,
    alpha_prod_t_next: torch.Tensor,
    prediction_type: str = "epsilon",
) -> torch.Tensor:
    """One deterministic DDIM step (eta = 0) from the noise level ``alpha_prod_t`` to ``alpha_prod_t_next``, per sample.

    ``x_next = sqrt(a_next) * x0_hat + sqrt(1 - a_next) * eps_hat``. Denoising when ``a_next > a_t``, inversion when
    ``a_next < a_t``. ``alpha_prod_t`` and ``alpha_prod_t_next`` have shape ``(B,)`` (or are scalars), so every
    sample of a batch can sit at its own timestep, which ``DDIMScheduler.step`` does not allow. Computed in float32.
    """
    dtype = sample.dtype
    x, out = sample.float(), model_output.float()
    shape = (-1,) + (1,) * (x.ndim - 1)
    a_t = torch.as_tensor(alpha_prod_t, dtype=torch.float32, device=x.device).reshape(shape)
    a_next = torch.as_tensor(alpha_prod_t_next, dtype=torch.float32, device=x.device).reshape(shape)
    if prediction_type == "epsilon":
        eps = out
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    elif prediction_type == "v_prediction":
        x0 = a_t.sqrt() * x - (1 - a_t).sqrt() * out
        eps = a_t.sqrt() * out + (1 - a_t).sqrt() * x
    elif prediction_type == "sample":
        x0 = out
        eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
    else:
        raise ValueError(f"`prediction_type` must be 'epsilon', 'v_prediction' or 'sample', got {prediction_type!r}.")
    return (a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps).to(dtype)


def alphas_at(scheduler: DDIMScheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """``alphas_cumprod[t]``, or the scheduler's ``final_alpha_cumprod`` where ``t < 0`` (as ``DDIMScheduler.step``)."""
    timesteps = torch.as_tensor(timesteps).long().cpu()
    alphas = scheduler.alphas_cumprod[timesteps.clamp(min=0)].clone()
    alphas[timesteps < 0] = float(scheduler.final_alpha_cumprod)
    return alphas


def minmax_normalize(scores: torch.Tensor) -> torch.Tensor:
    """``(x - min) / (max - min)``; all zeros when the scores are flat (no division by zero)."""
    scores = torch.as_tensor(scores, dtype=torch.float64)
    low, high = scores.min(), scores.max()
    if high - low <= 0:
        return torch.zeros_like(scores)
    return (scores - low) / (high - low)


def search_metric(editing_scores: Sequence[float], non_editing_scores: Sequence[float]) -> tuple[torch.Tensor, int]:
    """``S = (norm(Se) + norm(Sne)) / 2`` and the index of its maximum (ties: the first, i.e. the smaller step)."""
    scores = 0.5 * (minmax_normalize(editing_scores) + minmax_normalize(non_editing_scores))
    best = int(torch.nonzero(scores == scores.max())[0])
    return scores, best


def splice_chains(lengths: Sequence[int], num_lanes: int | None = None) -> list[list[int]]:
    """Packs denoising chains into lanes whose chains run back to back, one lane per batch row (paper, A.4).

    With ``num_lanes=None`` (the paper's splicing), the longest remaining chain opens a lane and the shortest
    remaining chains follow it while the lane stays within ``max(lengths) + 1`` steps: for lengths ``1..N`` the chain
    of length ``i`` shares a lane with the chain of length ``N + 1 - i``, so ``ceil(N / 2)`` lanes finish together
    after ``N + 1`` steps. With ``num_lanes=B`` (a memory cap), chains are packed longest first into the lane with
    the least work (for ``1..N`` and ``B = N / 2`` the same pairs). Returns lists of chain indices.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    if num_lanes is None:
        budget = max(lengths, default=0) + 1
        lanes, lo, hi = [], 0, len(order) - 1
        while lo <= hi:
            lane, work = [order[lo]], lengths[order[lo]]
            lo += 1
            while lo <= hi and work + lengths[order[hi]] <= budget:
                lane.append(order[hi])
                work += lengths[order[hi]]
                hi -= 1
            lanes.append(lane)
        return lanes
    lanes, work = [[] for _ in range(min(num_lanes, len(lengths)))], [0] * min(num_lanes, len(lengths))
    for chain in order:
        lane = work.index(min(work))
        lanes[lane].append(chain)
        work[lane] += lengths[chain]
    return lanes


def default_search_stride(num_steps: int) -> int:
    """The coarse stride ``s`` of the coarse-to-fine search over ``num_steps`` searched steps: ``round(sqrt(n / 2))``,
    at least 2. The coarse pass denoises about ``n / s`` chains and the fine pass ``2 (s - 1)``; with chains of about
    ``N / 2`` steps the work ``N^2 / (2 s) + 2 s i*`` is smallest near ``s = sqrt(N / 2)`` (5 for N = 50)."""
    return max(2, round(math.sqrt(num_steps / 2)))


def coarse_search_steps(steps: Sequence[int], stride: int) -> list[int]:
    """The coarse pass of the coarse-to-fine search: every ``stride``-th of the sorted ``steps``, the grid centred so
    that both ends of ``steps`` are equally far from it."""
    steps = sorted(set(steps))
    offset = ((len(steps) - 1) % stride) // 2
    return steps[offset::stride]


def refine_search_steps(steps: Sequence[int], best: int, stride: int, evaluated: Sequence[int] = ()) -> list[int]:
    """The fine pass of the coarse-to-fine search: the ``steps`` less than ``stride`` positions away from the best
    coarse step ``best`` (so up to the neighbouring coarse steps), minus those already ``evaluated``."""
    steps = sorted(set(steps))
    position = steps.index(best)
    window = steps[max(0, position - stride + 1) : position + stride]
    return [step for step in window if step not in set(evaluated)]


def mask_coverage(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The share of each cell of a ``size`` grid covered by the masks ``(K, 1, H, W)`` (area average), in ``[0, 1]``."""
    return F.adaptive_avg_pool2d(masks.float(), size)


def resize_mask(masks: torch.Tensor, size: tuple[int, int], threshold: float = 0.5) -> torch.Tensor:
    """Binary masks ``(K, 1, *size)``: a cell is in the mask when at least ``threshold`` of its area is."""
    return (mask_coverage(masks, size) >= threshold).float()


def assign_mask_owners(masks: torch.Tensor, size: tuple[int, int], threshold: float = 0.5) -> torch.Tensor:
    """Latent-resolution ownership for reassembly: ``(K + 1, 1, *size)`` one-hot masks, background first.

    A cell belongs to the edit covering most of it (ties: the earlier edit) when that edit covers at least
    ``threshold`` of it, otherwise to the background; so every cell has exactly one owner, even where masks overlap.
    """
    coverage = mask_coverage(masks, size)[:, 0]  # (K, h, w)
    best = coverage.argmax(dim=0)  # first maximum on ties
    owner = torch.where(coverage.max(dim=0).values >= threshold, best + 1, torch.zeros_like(best))
    return F.one_hot(owner, num_classes=masks.shape[0] + 1).permute(2, 0, 1).unsqueeze(1).float()


def clip_attention_mask(patch_mask: torch.Tensor, mode: str = "hard", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive self-attention mask ``(B, 1, 1 + P, 1 + P)`` for a CLIP vision tower from patch masks ``(B, P)``.

    ``"hard"``: keys outside the mask get a large finite negative, so the class token and the in-mask patches attend
    only to the class token and in-mask patches, and the pooled feature ignores every pixel outside the mask.
    ``"soft"``: in-mask keys (and the class token) get ``+1`` and the others ``0``, reproducing the authors' code,
    which passed a 0/1 mask that transformers adds to the attention logits.
    """
    keep = torch.cat([torch.ones_like(patch_mask[:, :1]), patch_mask], dim=1).bool()  # (B, 1 + P)
    if mode == "hard":
        bias = torch.zeros(keep.shape, dtype=dtype, device=keep.device)
        bias = bias.masked_fill(~keep, torch.finfo(dtype).min / 2)
    elif mode == "soft":
        bias = keep.to(dtype)
    else:
        raise ValueError(f"`clip_mask` must be 'hard' or 'soft', got {mode!r}.")
    length = keep.shape[1]
    return bias[:, None, None, :].expand(-1, 1, length, length)


@apply_forward_hook
def masked_clip_image_features(
    clip_model: CLIPModel, pixel_values: torch.Tensor, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """Projected CLIP image features, with an additive self-attention mask in every layer of the vision tower.

    Decorated like ``AutoencoderKL.decode`` so that ``enable_model_cpu_offload`` moves CLIP to the device first.
    """
    vision = clip_model.vision_model
    hidden = vision.pre_layrnorm(vision.embeddings(pixel_values))
    hidden = vision.encoder(inputs_embeds=hidden, attention_mask=attention_mask)[0]
    return clip_model.visual_projection(vision.post_layernorm(hidden[:, 0]))


@apply_forward_hook
def clip_text_features(clip_model: CLIPModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Projected CLIP text features (version-independent equivalent of ``CLIPModel.get_text_features``)."""
    pooled = clip_model.text_model(input_ids=input_ids, attention_mask=attention_mask)[1]
    return clip_model.text_projection(pooled)


_WORD = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")
_JOINERS = {"of", "a", "an", "the"}


def _words(text: str) -> list[tuple[str, int, int]]:
    return [(m.group().lower(), m.start(), m.end()) for m in _WORD.finditer(text)]


def derive_edits(source_prompt: str, target_prompt: str) -> list[Edit]:
    """Editing pairs from a word-level diff of the two prompts.

    Words are compared case-insensitively and punctuation is its own token. Each replaced run of words becomes an
    edit; runs separated only by "of" (with articles), as in "a bowl of dumplings" -> "a plate of fried rice", become
    one phrase. A word added or removed with no counterpart is an error, since OIR needs a source region to edit.
    """
    src, tgt = _words(source_prompt), _words(target_prompt)
    matcher = difflib.SequenceMatcher(a=[w for w, _, _ in src], b=[w for w, _, _ in tgt], autojunk=False)
    spans: list[list[int]] = []  # [i1, i2, j1, j2] word ranges
    previous_equal: tuple[int, int] | None = None
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            previous_equal = (i1, i2)
            continue
        if tag in ("insert", "delete"):
            words = " ".join(w for w, _, _ in (tgt[j1:j2] if tag == "insert" else src[i1:i2]))
            where = "target_prompt adds" if tag == "insert" else "source_prompt loses"
            raise ValueError(
                f"Cannot derive editing pairs: the {where} {words!r} with no counterpart in the other prompt. "
                "Pass the pairs explicitly, e.g. `edits=[('dumplings', 'fried rice')]`."
            )
        joined = (
            spans
            and previous_equal is not None
            and spans[-1][1] == previous_equal[0]
            and "of" in {w for w, _, _ in src[previous_equal[0] : previous_equal[1]]}
            and {w for w, _, _ in src[previous_equal[0] : previous_equal[1]]} <= _JOINERS
        )
        if joined:
            spans[-1][1], spans[-1][3] = i2, j2
        else:
            spans.append([i1, i2, j1, j2])
        previous_equal = None
    if not spans:
        raise ValueError("`source_prompt` and `target_prompt` are the same: there is nothing to edit.")
    return [
        Edit(
            source=source_prompt[src[i1][1] : src[i2 - 1][2]],
            target=target_prompt[tgt[j1][1] : tgt[j2 - 1][2]],
        )
        for i1, i2, j1, j2 in spans
    ]


def guided_prompts(source_prompt: str, edits: Sequence[Edit]) -> list[str]:
    """The guided prompt ``P^k`` of each edit: the source prompt with only edit k's occurrence of its phrase replaced.

    Phrases are matched case-insensitively on word boundaries; when a phrase occurs several times, edits take the
    occurrences in order (so two edits of "cat" in "a cat and a cat" edit the two cats). Raises a `ValueError`
    naming the phrase when it is not in the source prompt.
    """
    taken: list[tuple[int, int]] = []
    prompts = []
    for k, edit in enumerate(edits):
        if edit.guided_prompt is not None:
            prompts.append(edit.guided_prompt)
            continue
        pattern = re.compile(r"(?<!\w)" + re.escape(edit.source.strip()) + r"(?!\w)", re.IGNORECASE)
        spans = [m.span() for m in pattern.finditer(source_prompt)] if edit.source.strip() else []
        free = [s for s in spans if all(s[1] <= a or s[0] >= b for a, b in taken)]
        if not free:
            raise ValueError(
                f"`edits[{k}]`: the source phrase {edit.source!r} does not occur in the source prompt "
                f"{source_prompt!r}" + (" (any more: earlier edits took its occurrences)." if spans else ".")
            )
        start, end = free[0]
        taken.append((start, end))
        prompts.append(source_prompt[:start] + edit.target + source_prompt[end:])
    return prompts


def _mask_image(mask: torch.Tensor) -> PIL.Image.Image:
    """A binary ``(1, H, W)`` mask as a PIL image of mode ``"L"`` (0/255)."""
    return PIL.Image.fromarray((mask[0].cpu().numpy() * 255).astype(np.uint8), mode="L")


def mask_to_tensor(mask: Any) -> torch.Tensor:
    """Any mask (PIL of mode 1/L/P/RGB/RGBA/LA, numpy or torch; bool, 0/1, 0/255 or float) as a float ``(H, W)``
    tensor in ``[0, 1]``. For images with an alpha channel the alpha is the mask; colour images are averaged."""
    if isinstance(mask, PIL.Image.Image):
        if mask.mode in ("RGBA", "LA", "PA") or (mask.mode == "P" and "transparency" in mask.info):
            mask = mask.convert("RGBA").getchannel("A")
        mask = np.asarray(mask.convert("L"))
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(np.array(mask))
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"a mask must be a PIL image, a numpy array or a torch tensor, got {type(mask).__name__}.")
    mask = mask.detach().cpu()
    if mask.ndim == 4 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.ndim == 3:
        channels_last = mask.shape[-1] in (1, 3, 4) and mask.shape[0] not in (1, 3, 4)
        mask = mask.movedim(-1, 0) if channels_last else mask
        mask = mask[3] if mask.shape[0] == 4 else mask.float().mean(0)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be 2-D (H, W), or an image with 1, 3 or 4 channels; got shape {tuple(mask.shape)}.")
    if mask.dtype == torch.bool:
        return mask.float()
    is_integer = not torch.is_floating_point(mask)
    mask = mask.float()
    if is_integer or mask.max() > 1:
        mask = mask / 255.0
    return mask.clamp(0, 1)


# ----------------------------------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class _Chain:
    """A DDIM denoising chain: start at latent level ``start`` (``z_start``) and take ``num_steps`` steps."""

    latent: torch.Tensor
    start: int
    num_steps: int
    cond: torch.Tensor
    uncond: torch.Tensor | None


class OIRPipeline(DiffusionPipeline):
    r"""
    Object-aware Inversion and Reassembly (OIR) for multi-object image editing with Stable Diffusion.

    This model inherits from [`DiffusionPipeline`]. Check the superclass documentation for the generic methods
    implemented for all pipelines (downloading, saving, running on a particular device, offloading, etc.).

    Args:
        vae ([`AutoencoderKL`]): Variational Auto-Encoder to encode images to latents and decode them.
        text_encoder ([`~transformers.CLIPTextModel`]): frozen text encoder of Stable Diffusion.
        tokenizer ([`~transformers.CLIPTokenizer`]): its tokenizer.
        unet ([`UNet2DConditionModel`]): the denoising UNet.
        scheduler ([`DDIMScheduler`]): OIR is defined on deterministic DDIM; another scheduler is converted to
            [`DDIMScheduler`] with the same configuration.
        clip_model ([`~transformers.CLIPModel`], *optional*): the CLIP model of the search metric (the paper uses
            `openai/clip-vit-base-patch16`). Needed unless every call passes `optimal_steps`.
        clip_processor ([`~transformers.CLIPProcessor`], *optional*): its processor (tokenizer, normalisation, size).
        search_vae ([`AutoencoderTiny`], *optional*): a cheap decoder for the search's candidates only (e.g. TAESD,
            `madebyollin/taesd`); the final image is always decoded by ``vae``.
    """

    model_cpu_offload_seq = "text_encoder->unet->search_vae->vae->clip_model"
    _optional_components = ["clip_model", "clip_processor", "search_vae"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        clip_model: CLIPModel | None = None,
        clip_processor: CLIPProcessor | None = None,
        search_vae: AutoencoderTiny | None = None,
    ):
        super().__init__()
        if not isinstance(scheduler, DDIMScheduler):
            logger.info(f"OIR uses deterministic DDIM: converting {scheduler.__class__.__name__} to DDIMScheduler.")
            scheduler = DDIMScheduler.from_config(scheduler.config)
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            clip_model=clip_model,
            clip_processor=clip_processor,
            search_vae=search_vae,
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if getattr(self, "vae", None) else 8
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    # ------------------------------------------------------------------------------------------------------------------
    # Input checks
    # ------------------------------------------------------------------------------------------------------------------

    def _check_image(self, image) -> tuple[int, int]:
        if isinstance(image, PIL.Image.Image):
            width, height = image.size
        elif isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim in (3, 4):
            # numpy: (H, W, C) / (B, H, W, C); torch: (C, H, W) / (B, C, H, W), values in [0, 1].
            height, width = (image.shape[-3], image.shape[-2]) if isinstance(image, np.ndarray) else image.shape[-2:]
            if image.ndim == 4 and image.shape[0] != 1:
                raise ValueError(f"`image` must be a single image, got a batch of {image.shape[0]}.")
        else:
            raise ValueError(
                "`image` must be a PIL image, a numpy array (H, W, C) or a torch tensor (C, H, W) with values in "
                f"[0, 1]; got {type(image).__name__}" + (f" of shape {tuple(image.shape)}." if hasattr(image, "shape") else ".")
            )
        factor = self.vae_scale_factor
        if height % factor or width % factor:
            raise ValueError(
                f"`image` is {width}x{height}: both sides must be multiples of {factor} (the VAE's downsampling). "
                f"Resize or crop it first, e.g. `image.resize(({width - width % factor or factor}, "
                f"{height - height % factor or factor}))`."
            )
        return int(height), int(width)

    @staticmethod
    def _check_steps(name: str, steps, num_inference_steps: int, count: int | None = None) -> list[int]:
        if isinstance(steps, (int, np.integer)) and not isinstance(steps, bool):
            steps = [steps]
        try:
            steps = list(steps)
        except TypeError:
            raise ValueError(f"`{name}` must be a list of integers, got {steps!r}.") from None
        if not steps or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in steps):
            raise ValueError(f"`{name}` must be a non-empty list of integers, got {steps!r}.")
        steps = [int(s) for s in steps]
        if any(not 1 <= s <= num_inference_steps for s in steps):
            raise ValueError(f"`{name}` must hold steps in 1..{num_inference_steps} (num_inference_steps), got {steps}.")
        if count is not None and len(steps) != count:
            raise ValueError(f"`{name}` must hold one step per edit ({count}), got {len(steps)}.")
        return steps

    @staticmethod
    def _resolve_steps(name: str, value, num_inference_steps: int) -> int:
        """A share of N (a float in [0, 1)) or a number of steps (an int) as a number of steps."""
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"`{name}` must be a float in [0, 1) (a share of N) or an int (steps), got {value!r}.")
        if isinstance(value, (float, np.floating)):
            if not 0 <= value < 1:
                raise ValueError(f"`{name}` as a float is a share of num_inference_steps and must be in [0, 1), got {value}.")
            return int(round(value * num_inference_steps))
        if not 0 <= value < num_inference_steps:
            raise ValueError(f"`{name}` must be in 0..{num_inference_steps - 1} steps, got {value}.")
        return int(value)

    def prepare_masks(self, masks: Sequence[Any], height: int, width: int, name: str = "masks") -> torch.Tensor:
        """Binary masks ``(K, 1, H, W)`` at the image's size from masks of any type, mode and resolution.

        Every mask must cover at least one latent cell and leave at least one latent cell uncovered.
        """
        latent_size = (height // self.vae_scale_factor, width // self.vae_scale_factor)
        tensors = []
        for k, mask in enumerate(masks):
            try:
                mask = mask_to_tensor(mask)
            except ValueError as error:
                raise ValueError(f"`{name}[{k}]`: {error}") from None
            mask = F.interpolate(mask[None, None], size=(height, width), mode="bilinear", align_corners=False)
            mask = (mask >= 0.5).float()
            share = resize_mask(mask, latent_size).mean().item()
            if share == 0:
                raise ValueError(
                    f"`{name}[{k}]` is empty (it covers no {self.vae_scale_factor}x{self.vae_scale_factor} latent "
                    "cell of the image): every edit needs a region."
                )
            if share == 1:
                raise ValueError(
                    f"`{name}[{k}]` covers the whole image: the search metric needs a non-editing region outside it."
                )
            tensors.append(mask[0])
        return torch.stack(tensors)

    def check_inputs(
        self,
        image,
        source_prompt,
        target_prompt,
        edits,
        masks,
        mask_generator,
        num_inference_steps,
        guidance_scale,
        reassembly_step,
        reinversion_steps,
        optimal_steps,
        search_steps,
        candidate_batch_size,
        inversion,
        output_type,
        clip_mask,
        search_text,
        mask_options=None,
        search="exhaustive",
        search_stride=None,
        search_vae=None,
    ) -> tuple[list[Edit], list[str], torch.Tensor | None, int, int, list[int] | None, list[int], dict]:
        """Validates every argument before any model runs; returns the parsed edits, their guided prompts, the
        prepared masks (``None`` when they are to be generated), ``i_r``, ``i_re``, the optimal steps, the
        searched steps and the built-in mask's options."""
        height, width = self._check_image(image)
        for name, prompt in (("source_prompt", source_prompt), ("target_prompt", target_prompt)):
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"`{name}` must be a non-empty string, got {prompt!r}.")
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps!r}.")
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
            raise ValueError(f"`guidance_scale` must be a number, got {guidance_scale!r}.")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"`output_type` must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}.")
        if clip_mask not in ("hard", "soft"):
            raise ValueError(f"`clip_mask` must be 'hard' or 'soft', got {clip_mask!r}.")
        if search_text not in ("phrase", "prompt"):
            raise ValueError(f"`search_text` must be 'phrase' or 'prompt', got {search_text!r}.")
        if candidate_batch_size is not None and candidate_batch_size != "auto" and (
            isinstance(candidate_batch_size, bool) or not isinstance(candidate_batch_size, int) or candidate_batch_size < 1
        ):
            raise ValueError(
                f"`candidate_batch_size` must be None, 'auto' or a positive integer, got {candidate_batch_size!r}."
            )
        if search not in ("exhaustive", "coarse-to-fine"):
            raise ValueError(f"`search` must be 'exhaustive' or 'coarse-to-fine', got {search!r}.")
        if search_stride is not None and (
            isinstance(search_stride, bool) or not isinstance(search_stride, int) or search_stride < 2
        ):
            raise ValueError(f"`search_stride` must be None or an integer >= 2, got {search_stride!r}.")
        if search_vae is not None and not (callable(getattr(search_vae, "decode", None)) and hasattr(search_vae, "config")):
            raise ValueError(
                "`search_vae` must be a decoder such as `AutoencoderTiny` (with `decode` and `config.scaling_factor`), "
                f"got {type(search_vae).__name__}."
            )

        if edits is None:
            edits = derive_edits(source_prompt, target_prompt)
        else:
            if isinstance(edits, (Edit, dict)) or (
                isinstance(edits, tuple) and len(edits) == 2 and all(isinstance(e, str) for e in edits)
            ):
                edits = [edits]
            if not isinstance(edits, (list, tuple)) or not edits:
                raise ValueError(f"`edits` must be a non-empty list of editing pairs, got {edits!r}.")
            edits = [Edit.from_any(edit) for edit in edits]
        for k, edit in enumerate(edits):
            if not edit.target.strip():
                raise ValueError(f"`edits[{k}]` has an empty target phrase.")
        prompts = guided_prompts(source_prompt, edits)

        i_r = self._resolve_steps("reassembly_step", reassembly_step, num_inference_steps)
        i_re = self._resolve_steps("reinversion_steps", reinversion_steps, num_inference_steps)
        if i_r + i_re > num_inference_steps:
            raise ValueError(
                f"reassembly_step ({i_r}) + reinversion_steps ({i_re}) must not exceed num_inference_steps "
                f"({num_inference_steps})."
            )
        if optimal_steps is not None:
            optimal_steps = self._check_steps("optimal_steps", optimal_steps, num_inference_steps, count=len(edits))
        search_steps = self._check_steps(
            "search_steps", range(1, num_inference_steps + 1) if search_steps is None else search_steps,
            num_inference_steps,
        )
        search_steps = sorted(set(search_steps))
        if optimal_steps is None and (self.clip_model is None or self.clip_processor is None):
            raise ValueError(
                "The search needs `clip_model` and `clip_processor` (e.g. openai/clip-vit-base-patch16): pass them "
                "when loading the pipeline, or pass `optimal_steps` to skip the search."
            )

        if masks is not None:
            if mask_generator is not None:
                raise ValueError("Pass either `masks` or `mask_generator`, not both.")
            if isinstance(masks, (PIL.Image.Image, np.ndarray)) or (isinstance(masks, torch.Tensor) and masks.ndim < 4):
                masks = [masks]
            if len(masks) != len(edits):
                raise ValueError(f"`masks` must hold one mask per edit: got {len(masks)} masks for {len(edits)} edits.")
            masks = self.prepare_masks(masks, height, width)
        elif mask_generator is not None and not callable(mask_generator):
            raise ValueError(f"`mask_generator` must be a callable (image, phrases) -> masks, got {mask_generator!r}.")
        defaults = {"num_maps": 10, "strength": 0.5, "threshold": 0.5, "dilation": 0}
        if mask_options is not None and (not isinstance(mask_options, dict) or set(mask_options) - set(defaults)):
            raise ValueError(f"`mask_options` must be a dict with keys among {sorted(defaults)}, got {mask_options!r}.")
        mask_options = {**defaults, **(mask_options or {})}
        self._check_mask_options(**mask_options)

        if inversion is not None:
            if not isinstance(inversion, OIRInversion):
                raise ValueError(f"`inversion` must be an OIRInversion from `invert`, got {type(inversion).__name__}.")
            if inversion.num_inference_steps != num_inference_steps:
                raise ValueError(
                    f"`inversion` has {inversion.num_inference_steps} steps but num_inference_steps is "
                    f"{num_inference_steps}."
                )
            if inversion.prompt != source_prompt:
                raise ValueError(
                    f"`inversion` was made with the prompt {inversion.prompt!r}, not the source prompt {source_prompt!r}."
                )
            expected = (height // self.vae_scale_factor, width // self.vae_scale_factor)
            if tuple(inversion.latents.shape[-2:]) != expected:
                raise ValueError(f"`inversion` latents are {tuple(inversion.latents.shape[-2:])}, the image needs {expected}.")
        return edits, prompts, masks, i_r, i_re, optimal_steps, search_steps, mask_options

    # ------------------------------------------------------------------------------------------------------------------
    # Building blocks
    # ------------------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_prompt(self, prompts: Sequence[str], device: torch.device | None = None) -> torch.Tensor:
        """Text-encoder hidden states ``(len(prompts), L, D)``, one text-encoder call for all prompts."""
        device = device or self._execution_device
        ids = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        return self.text_encoder(ids.to(device))[0].to(self.unet.dtype)

    def _unique_embeddings(self, prompts: Sequence[str]) -> list[torch.Tensor]:
        unique = list(dict.fromkeys(prompts))
        embeds = self.encode_prompt(unique)
        return [embeds[unique.index(p)] for p in prompts]

    def preprocess_image(self, image: PipelineImageInput) -> torch.Tensor:
        """``(1, 3, H, W)`` in ``[-1, 1]`` through diffusers' `VaeImageProcessor` (size checked, never resized)."""
        height, width = self._check_image(image)
        if isinstance(image, np.ndarray) and image.ndim == 3:
            image = image[None]
        return self.image_processor.preprocess(image, height=height, width=width).float()

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """``z_0``: the mean of the VAE posterior times the scaling factor (deterministic)."""
        image = image.to(device=self._execution_device, dtype=self.vae.dtype)
        return (self.vae.encode(image).latent_dist.mean * self.vae.config.scaling_factor).to(self.unet.dtype)

    @torch.no_grad()
    def decode_latents(
        self, latents: torch.Tensor, batch_size: int = 8, vae: torch.nn.Module | None = None
    ) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` in ``[0, 1]`` (float32, on the execution device), decoded ``batch_size`` at a time.

        ``vae`` defaults to the pipeline's VAE; any decoder whose ``decode(latents / config.scaling_factor).sample`` is
        an image in ``[-1, 1]`` works, e.g. the search decoder `AutoencoderTiny` (TAESD). A decoder outside the pipeline
        (no offload hook) runs on its own device and dtype; the images come back to the execution device.
        """
        vae = self.vae if vae is None else vae
        device = self._execution_device
        vae_device = device if vae is self.vae or hasattr(vae, "_hf_hook") else vae.device
        images = []
        for chunk in latents.split(batch_size):
            chunk = chunk.to(device=vae_device, dtype=vae.dtype) / vae.config.scaling_factor
            images.append((vae.decode(chunk).sample.to(device, torch.float32) / 2 + 0.5).clamp(0, 1))
        return torch.cat(images)

    def _timestep_ratio(self, num_inference_steps: int) -> int:
        return self.scheduler.config.num_train_timesteps // num_inference_steps

    def _noise_prediction(
        self, latents: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor | None,
        guidance_scale: float,
    ) -> torch.Tensor:
        """One UNet call at per-sample ``timesteps`` ``(B,)``, the latents cast to the UNet's dtype (that of the text
        embeddings, which `encode_prompt` casts; ``unet.dtype`` walks all modules and costs a few % on small models);
        with CFG, ``eps_uncond + w (eps_cond - eps_uncond)`` from a doubled batch. Returns float32 noise.

        Nothing here depends on the batch's content, so a ``torch.compile``-d UNet sees one graph per batch size (the
        ``[B]`` timestep tensor causes no graph break)."""
        latents = latents.to(cond.dtype)
        if uncond is None or guidance_scale == 1:
            return self.unet(latents, timesteps, encoder_hidden_states=cond).sample.float()
        eps = self.unet(
            torch.cat([latents, latents]), torch.cat([timesteps, timesteps]),
            encoder_hidden_states=torch.cat([uncond, cond]),
        ).sample.float()
        eps_uncond, eps_cond = eps.chunk(2)
        return eps_uncond + guidance_scale * (eps_cond - eps_uncond)

    @torch.no_grad()
    def _invert_latents(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        start: int,
        num_steps: int,
        cond: torch.Tensor,
        uncond: torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        desc: str = "OIR inversion",
    ) -> torch.Tensor:
        """DDIM inversion of latents at level ``start`` by ``num_steps`` steps; returns all levels
        ``(num_steps + 1, B, C, h, w)``. Step ``i`` evaluates the UNet on ``z_{i-1}`` at ``t = timesteps[N - i]``."""
        n = len(timesteps)
        ratio = self._timestep_ratio(n)
        batch = latents.shape[0]
        cond = cond.expand(batch, -1, -1)
        uncond = None if uncond is None else uncond.expand(batch, -1, -1)
        trajectory = [latents]
        bar = self.progress_bar(total=num_steps)
        bar.set_description(desc)
        with bar:
            for i in range(start + 1, start + num_steps + 1):
                t = timesteps[n - i].to(latents.device).expand(batch)
                eps = self._noise_prediction(latents, t, cond, uncond, guidance_scale)
                alpha_t, alpha_next = alphas_at(self.scheduler, t.cpu() - ratio), alphas_at(self.scheduler, t.cpu())
                latents = ddim_step(latents, eps, alpha_t, alpha_next, self.scheduler.config.prediction_type)
                trajectory.append(latents)
                bar.update()
        return torch.stack(trajectory)

    @torch.no_grad()
    def _denoise_chains(
        self, chains: Sequence[_Chain], timesteps: torch.Tensor, guidance_scale: float, batch_size: int | str | None,
        desc: str,
    ) -> list[torch.Tensor]:
        """Runs DDIM chains spliced into lanes (see `splice_chains`; ``batch_size`` caps the lanes, i.e. the chains per
        UNet call; ``"auto"``: see `_auto_batch_size`), all lanes advancing together with one UNet call per step;
        returns each chain's final latent. Chain ``c`` takes its step ``j`` at ``t = timesteps[N - c.start + j]``, each
        row of a batch at its own ``t``.

        The whole schedule (every row's ``t``, ``alpha_t`` and ``alpha_{t-1}`` at every call) is built before the first
        call, so the loop does no per-row host work and never waits for the device. Lanes are sorted longest first, so
        the rows still running are always a prefix of the batch and a finished lane simply leaves it. The running
        latents stay in float32 (cast to the UNet's dtype for each call): fp16/bf16 rounding does not pile up over the
        DDIM updates."""
        n = len(timesteps)
        ratio = self._timestep_ratio(n)
        device = self._execution_device
        results = [chain.latent if chain.num_steps == 0 else None for chain in chains]
        running = [c for c, chain in enumerate(chains) if chain.num_steps > 0]
        if not running:
            return results
        if batch_size == "auto":
            batch_size = self._auto_batch_size(chains[running[0]], guidance_scale, len(running))
        lanes = [[running[c] for c in lane] for lane in splice_chains([chains[c].num_steps for c in running], batch_size)]
        lanes.sort(key=lambda lane: -sum(chains[c].num_steps for c in lane))
        work = [sum(chains[c].num_steps for c in lane) for lane in lanes]

        # schedule[s, r]: the timestep of row r at call s (-1 after its lane ended); ends[s]: (row, chain that ends at
        # call s, the lane's next chain or None).
        all_timesteps = timesteps.tolist()
        schedule = torch.full((work[0], len(lanes)), -1, dtype=torch.long)
        ends: list[list[tuple[int, int, int | None]]] = [[] for _ in range(work[0])]
        for row, lane in enumerate(lanes):
            call = 0
            for position, c in enumerate(lane):
                first = n - chains[c].start
                schedule[call : call + chains[c].num_steps, row] = torch.tensor(
                    all_timesteps[first : first + chains[c].num_steps]
                )
                call += chains[c].num_steps
                ends[call - 1].append((row, c, lane[position + 1] if position + 1 < len(lane) else None))
        rows_at = [sum(length > call for length in work) for call in range(work[0])]
        alpha_t = alphas_at(self.scheduler, schedule).to(device)
        alpha_prev = alphas_at(self.scheduler, schedule - ratio).to(device)
        schedule = schedule.to(device)

        use_cfg = guidance_scale != 1 and all(chains[c].uncond is not None for c in running)
        heads = [chains[lane[0]] for lane in lanes]
        x = torch.stack([chain.latent for chain in heads]).to(device, torch.float32)
        cond = torch.stack([chain.cond for chain in heads]).to(device)
        uncond = torch.stack([chain.uncond for chain in heads]).to(device) if use_cfg else None
        prediction_type = self.scheduler.config.prediction_type
        bar = self.progress_bar(total=work[0])
        bar.set_description(desc)
        with bar:
            for call, rows in enumerate(rows_at):
                x = x[:rows]
                eps = self._noise_prediction(
                    x, schedule[call, :rows], cond[:rows], None if uncond is None else uncond[:rows], guidance_scale
                )
                x = ddim_step(x, eps, alpha_t[call, :rows], alpha_prev[call, :rows], prediction_type)
                for row, c, following in ends[call]:
                    results[c] = x[row].to(chains[c].latent.dtype, copy=True)
                    if following is not None:  # the lane's next chain takes over the row
                        x[row] = chains[following].latent
                        cond[row] = chains[following].cond
                        if uncond is not None:
                            uncond[row] = chains[following].uncond
                bar.update()
        return results

    @torch.no_grad()
    def _auto_batch_size(self, chain: _Chain, guidance_scale: float, num_chains: int) -> int:
        """``batch_size="auto"``: the most lanes (chains per UNet call) that fit, at most ``num_chains``.

        On CUDA, one UNet call with a single lane measures the activation memory of a lane (the peak allocated during
        the call minus what stays allocated after it, so weights moved in by offloading do not count; cached per
        latent shape, dtype and guidance); the batch is 80% of the free memory (free on the device plus PyTorch's
        unused cache) over that. Other devices (CPU, MPS) have no memory query: a call is capped at
        `AUTO_BATCH_LATENT_CELLS` latent cells (rows x h x w), e.g. 4 lanes of 64x64 latents with CFG (512px), 16 at
        256px. Memory then grows with the batch, never with ``N``."""
        rows_per_lane = 2 if guidance_scale != 1 and chain.uncond is not None else 1
        device = self._execution_device
        height, width = chain.latent.shape[-2:]
        if device.type != "cuda":
            return max(1, min(num_chains, AUTO_BATCH_LATENT_CELLS // (rows_per_lane * height * width)))
        cache = self.__dict__.setdefault("_lane_bytes", {})
        key = (tuple(chain.latent.shape), self.unet.dtype, rows_per_lane, str(device))
        if key not in cache:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            timestep = torch.full((1,), self.scheduler.config.num_train_timesteps - 1, device=device)
            self._noise_prediction(
                chain.latent[None].to(device), timestep, chain.cond[None].to(device),
                None if rows_per_lane == 1 else chain.uncond[None].to(device), guidance_scale,
            )
            torch.cuda.synchronize(device)
            cache[key] = max(torch.cuda.max_memory_allocated(device) - torch.cuda.memory_allocated(device), 1)
        free = torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return max(1, min(num_chains, int(0.8 * free) // cache[key]))

    # ------------------------------------------------------------------------------------------------------------------
    # Stage 1: inversion
    # ------------------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def invert(
        self,
        image: PipelineImageInput,
        prompt: str,
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
    ) -> OIRInversion:
        r"""Stage 1: DDIM inversion of ``image`` with ``prompt`` (the source prompt ``P_o``).

        Args:
            image: the image (PIL, numpy ``(H, W, C)`` or tensor ``(C, H, W)`` in ``[0, 1]``), sides multiples of 8.
            prompt (`str`): the source prompt.
            num_inference_steps (`int`): ``N``.
            guidance_scale (`float`): 1.0 (default) inverts with the conditional noise only; above 1, CFG against
                the empty prompt.

        Returns:
            [`OIRInversion`] with ``latents`` ``z_0 ... z_N`` of shape ``(N + 1, C, h, w)``: pass it to
            ``__call__(inversion=...)`` or `generate_candidates` to edit the same image again without inverting twice.
        """
        self._check_image(image)
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"`prompt` must be a non-empty string, got {prompt!r}.")
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps!r}.")
        self.scheduler.set_timesteps(num_inference_steps)
        timesteps = self.scheduler.timesteps.clone()
        z_0 = self.encode_image(self.preprocess_image(image))
        cond, uncond = self.encode_prompt([prompt, ""]).chunk(2)
        latents = self._invert_latents(
            z_0, timesteps, 0, num_inference_steps, cond, uncond if guidance_scale != 1 else None, guidance_scale
        )
        return OIRInversion(latents=latents[:, 0], timesteps=timesteps, prompt=prompt, guidance_scale=guidance_scale)

    # ------------------------------------------------------------------------------------------------------------------
    # Stage 2: candidates
    # ------------------------------------------------------------------------------------------------------------------

    def _candidate_chains(
        self, inversion: OIRInversion, embeds: Sequence[torch.Tensor], uncond: torch.Tensor | None,
        steps: Sequence[Sequence[int]],
    ) -> list[_Chain]:
        latents = inversion.latents.to(self._execution_device, self.unet.dtype)
        return [
            _Chain(latents[i], i, i, cond, uncond) for cond, edit_steps in zip(embeds, steps) for i in edit_steps
        ]

    @torch.no_grad()
    def generate_candidates(
        self,
        inversion: OIRInversion,
        prompt: str,
        negative_prompt: str | None = None,
        guidance_scale: float = 7.5,
        steps: Sequence[int] | None = None,
        batch_size: int | str | None = None,
    ) -> torch.Tensor:
        r"""Stage 2: the clean latent of candidate ``i`` for every ``i`` in ``steps``.

        Candidate ``i`` is ``z_i`` denoised with DDIM through ``timesteps[N - i:]`` (``i`` steps) under ``prompt``
        (the guided prompt ``P^k``) with classifier-free guidance against ``negative_prompt`` (default: the
        inversion's prompt ``P_o``). The chains are spliced (paper, A.4): with ``batch_size=None`` all candidates take
        at most ``N + 1`` UNet calls. ``batch_size`` caps the chains per call (memory grows with it, not with N);
        ``"auto"`` takes the most that fit (free CUDA memory, or a fixed cap on CPU: see `_auto_batch_size`).

        Returns:
            `torch.Tensor` of shape ``(len(steps), C, h, w)``, in the order of ``steps`` (default ``1..N``).
        """
        if not isinstance(inversion, OIRInversion):
            raise ValueError(f"`inversion` must be an OIRInversion from `invert`, got {type(inversion).__name__}.")
        n = inversion.num_inference_steps
        steps = self._check_steps("steps", range(1, n + 1) if steps is None else steps, n)
        if batch_size is not None and batch_size != "auto" and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise ValueError(f"`batch_size` must be None, 'auto' or a positive integer, got {batch_size!r}.")
        negative_prompt = inversion.prompt if negative_prompt is None else negative_prompt
        cond, uncond = self.encode_prompt([prompt, negative_prompt]).chunk(2)
        chains = self._candidate_chains(inversion, [cond[0]], uncond[0], [steps])
        return torch.stack(
            self._denoise_chains(chains, inversion.timesteps, guidance_scale, batch_size, "OIR candidates")
        )

    # ------------------------------------------------------------------------------------------------------------------
    # Stage 3: search
    # ------------------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def editing_scores(
        self, images: torch.Tensor, masks: torch.Tensor, text_features: torch.Tensor, clip_mask: str = "hard"
    ) -> torch.Tensor:
        """``Se``: cosine similarity of the CLIP image feature of each image restricted to its mask with a text feature.

        Args:
            images: ``(B, 3, H, W)`` in ``[0, 1]``.
            masks: ``(B, 1, H, W)`` or ``(1, 1, H, W)`` binary masks.
            text_features: ``(B, D)`` or ``(1, D)`` projected CLIP text features.
            clip_mask: ``"hard"`` (default, the paper) or ``"soft"`` (the authors' code), see `clip_attention_mask`.
        """
        vision_config = self.clip_model.config.vision_config
        size, patch = vision_config.image_size, vision_config.patch_size
        processor = self.clip_processor.image_processor
        device, dtype = self._execution_device, self.clip_model.dtype
        mean = torch.tensor(processor.image_mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(processor.image_std, device=device).view(1, 3, 1, 1)
        # The whole image is resized to CLIP's square input (no centre crop), so the mask maps exactly onto patches.
        pixels = F.interpolate(images.to(device), size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        pixels = ((pixels.clamp(0, 1) - mean) / std).to(dtype)
        coverage = mask_coverage(masks.to(device), (size // patch, size // patch)).flatten(1)
        patch_mask = coverage >= 0.5
        # A mask smaller than half a patch everywhere still keeps its best-covered patch.
        patch_mask |= (coverage == coverage.max(dim=1, keepdim=True).values) & ~patch_mask.any(1, keepdim=True)
        patch_mask = patch_mask.expand(images.shape[0], -1)
        features = masked_clip_image_features(self.clip_model, pixels, clip_attention_mask(patch_mask, clip_mask, dtype))
        return F.cosine_similarity(features.float(), text_features.to(device).float(), dim=-1)

    @staticmethod
    def non_editing_scores(images: torch.Tensor, reference: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """``Sne``: minus the mean squared error to the input over the non-editing region ``1 - M`` (images in [0, 1])."""
        keep = 1 - masks.to(images.device).float()
        error = ((images - reference.to(images.device)) ** 2 * keep).sum(dim=(1, 2, 3))
        return -error / (keep.sum(dim=(1, 2, 3)) * images.shape[1]).clamp(min=1)

    @torch.no_grad()
    def _text_features(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.clip_processor.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        device = self._execution_device
        return clip_text_features(self.clip_model, tokens.input_ids.to(device), tokens.attention_mask.to(device))

    @torch.no_grad()
    def search(
        self,
        inversion: OIRInversion,
        reference: torch.Tensor,
        edits: Sequence[Edit],
        prompts: Sequence[str],
        masks: torch.Tensor,
        steps: Sequence[int],
        guidance_scale: float = 7.5,
        batch_size: int | str | None = None,
        decode_batch_size: int = 8,
        clip_mask: str = "hard",
        search_text: str = "phrase",
        return_candidates: bool = False,
        strategy: str = "exhaustive",
        stride: int | None = None,
        search_vae: torch.nn.Module | None = None,
    ) -> tuple[list[OIRSearchRecord], list[torch.Tensor]]:
        r"""Stages 2 and 3 for all edits: candidates (all edits' chains spliced into the same batches), decoded and
        CLIP-scored ``decode_batch_size`` at a time on the execution device (chunks mix edits), then
        ``S_i = (norm(Se_i) + norm(Sne_i)) / 2`` and ``i*_k = argmax S_i`` per edit.

        Args:
            strategy (`str`): ``"exhaustive"`` evaluates every step of ``steps``. ``"coarse-to-fine"`` evaluates every
                ``stride``-th step first (`coarse_search_steps`), then for each edit the steps around its best coarse
                step (`refine_search_steps`, all edits' chains again in the same batches); ``S`` is normalised over
                the steps evaluated for the edit, which are the record's ``steps``.
            stride (`int`, *optional*): the coarse stride; default `default_search_stride`.
            search_vae (*optional*): the decoder of the candidates, e.g. `AutoencoderTiny` (TAESD); default: the
                pipeline's ``search_vae`` component when it has one, else ``vae``. The final image always uses ``vae``.

        Returns the search records and the clean latent of each edit's optimal candidate.
        """
        if search_vae is None:
            search_vae = self.search_vae
        device = self._execution_device
        embeds = self._unique_embeddings(list(prompts) + [inversion.prompt])
        texts = [edit.target if search_text == "phrase" else prompt for edit, prompt in zip(edits, prompts)]
        text_features = self._text_features(texts)
        reference = (reference.to(device) / 2 + 0.5).clamp(0, 1)
        masks = masks.to(device)
        # Per edit: inversion step i -> (clean latent, Se_i, Sne_i, candidate image or None).
        evaluated: list[dict[int, tuple]] = [{} for _ in edits]

        def evaluate(plan: list[list[int]]) -> None:
            chains = self._candidate_chains(inversion, embeds[:-1], embeds[-1], plan)
            latents = self._denoise_chains(chains, inversion.timesteps, guidance_scale, batch_size, "OIR candidates")
            keys = [(k, i) for k, edit_steps in enumerate(plan) for i in edit_steps]
            for start in range(0, len(keys), decode_batch_size):
                chunk = keys[start : start + decode_batch_size]
                owner = torch.tensor([k for k, _ in chunk], device=device)
                images = self.decode_latents(
                    torch.stack(latents[start : start + len(chunk)]), decode_batch_size, search_vae
                )
                se = self.editing_scores(images, masks[owner], text_features[owner], clip_mask).tolist()
                sne = self.non_editing_scores(images, reference, masks[owner]).tolist()
                pil = (
                    self.image_processor.postprocess(images * 2 - 1, output_type="pil")
                    if return_candidates
                    else [None] * len(chunk)
                )
                for row, (k, i) in enumerate(chunk):
                    evaluated[k][i] = (latents[start + row], se[row], sne[row], pil[row])

        def best_step(k: int) -> int:
            done = sorted(evaluated[k])
            return done[search_metric([evaluated[k][i][1] for i in done], [evaluated[k][i][2] for i in done])[1]]

        if strategy == "coarse-to-fine":
            stride = stride or default_search_stride(len(steps))
            evaluate([coarse_search_steps(steps, stride)] * len(edits))
            evaluate([refine_search_steps(steps, best_step(k), stride, list(evaluated[k])) for k in range(len(edits))])
        else:
            evaluate([list(steps)] * len(edits))

        records, optimal_latents = [], []
        for k, (edit, prompt) in enumerate(zip(edits, prompts)):
            done = sorted(evaluated[k])
            se, sne = [evaluated[k][i][1] for i in done], [evaluated[k][i][2] for i in done]
            scores, best = search_metric(se, sne)
            records.append(
                OIRSearchRecord(
                    edit=edit,
                    guided_prompt=prompt,
                    steps=done,
                    editing_scores=se,
                    non_editing_scores=sne,
                    scores=scores.tolist(),
                    optimal_step=done[best],
                    mask=_mask_image(masks[k]),
                    candidates=[evaluated[k][i][3] for i in done] if return_candidates else None,
                )
            )
            optimal_latents.append(evaluated[k][done[best]][0])
        return records, optimal_latents

    # ------------------------------------------------------------------------------------------------------------------
    # Stage 4: reassembly
    # ------------------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def reassemble(
        self,
        inversion: OIRInversion,
        prompts: Sequence[str],
        target_prompt: str,
        masks: torch.Tensor,
        optimal_steps: Sequence[int],
        optimal_latents: Sequence[torch.Tensor | None],
        reassembly_step: int,
        reinversion_steps: int,
        guidance_scale: float = 7.5,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        r"""Stage 4 (paper, Sec. 3.2): reassembles the edits at step ``i_r``, re-inverts by ``i_re`` and denoises.

        1. Edit k is denoised from ``z_{i*_k}`` with ``P^k`` to the level of ``i_r`` (``i*_k - i_r`` steps, all edits
           in one batch). When ``i*_k <= i_r`` the chosen candidate's clean latent is DDIM-inverted up to ``i_r``
           instead, so that the edit survives.
        2. ``z_r = M_bg * z_{i_r} + sum_k M^k * z^k_{i_r}`` with latent-resolution masks that give every cell exactly
           one owner (`assign_mask_owners`).
        3. ``z_r`` is DDIM-inverted by ``i_re`` steps with ``P_o``.
        4. It is denoised ``i_r + i_re`` steps to a clean latent with the target prompt ``P_t`` (negative: ``P_o``).

        Returns the clean latent ``(1, C, h, w)``.
        """
        i_r, i_re = reassembly_step, reinversion_steps
        timesteps = inversion.timesteps
        device = self._execution_device
        z = inversion.latents.to(device, self.unet.dtype)
        embeds = self._unique_embeddings(list(prompts) + [inversion.prompt, target_prompt])
        source, target = embeds[-2], embeds[-1]

        edited: list[torch.Tensor | None] = [None] * len(prompts)
        above = [k for k, step in enumerate(optimal_steps) if step > i_r]
        chains = [_Chain(z[optimal_steps[k]], optimal_steps[k], optimal_steps[k] - i_r, embeds[k], source) for k in above]
        for k, latent in zip(above, self._denoise_chains(chains, timesteps, guidance_scale, batch_size, "OIR edits")):
            edited[k] = latent
        below = [k for k, step in enumerate(optimal_steps) if step <= i_r]
        if below:
            clean = torch.stack([optimal_latents[k] for k in below]).to(device, self.unet.dtype)
            levels = self._invert_latents(clean, timesteps, 0, i_r, source[None], desc="OIR edits (re-noising)")
            for row, k in enumerate(below):
                edited[k] = levels[-1, row]

        owners = assign_mask_owners(masks.to(device), tuple(z.shape[-2:])).to(z.dtype)
        z_r = owners[0] * z[i_r] + sum(owners[k + 1] * edited[k] for k in range(len(prompts)))
        z_r = self._invert_latents(z_r[None], timesteps, i_r, i_re, source[None], desc="OIR re-inversion")[-1]
        final = _Chain(z_r[0], i_r + i_re, i_r + i_re, target, source)
        return self._denoise_chains([final], timesteps, guidance_scale, 1, "OIR reassembly")[0][None]

    # ------------------------------------------------------------------------------------------------------------------
    # Masks
    # ------------------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def _noise_difference_masks(
        self,
        z_0: torch.Tensor,
        size: tuple[int, int],
        source_prompt: str,
        target_prompts: Sequence[str],
        num_maps: int,
        strength: float,
        threshold: float,
        dilation: int,
        generator: torch.Generator | list[torch.Generator] | None,
    ) -> torch.Tensor:
        """DiffEdit-style masks ``(K, 1, H, W)``: where the noise predicted for a target prompt differs from the noise
        predicted for the source prompt, at the image ``size`` ``(H, W)``. ``num_maps`` noisings of the image latent
        ``z_0`` ``(1, C, h, w)`` at ``strength`` for all prompts go through one batched UNet call."""
        embeds = self.encode_prompt([source_prompt] + list(target_prompts))  # (1 + K, L, D)
        t = torch.tensor([min(int(strength * self.scheduler.config.num_train_timesteps), 999)], device=z_0.device)
        noise = randn_tensor((num_maps, *z_0.shape[1:]), generator=generator, device=z_0.device, dtype=z_0.dtype)
        noisy = self.scheduler.add_noise(z_0.expand(num_maps, -1, -1, -1), noise, t)
        count = embeds.shape[0]
        eps = self.unet(
            noisy.repeat(count, 1, 1, 1), t.expand(num_maps * count),
            encoder_hidden_states=embeds.repeat_interleave(num_maps, dim=0),
        ).sample.float()
        eps = eps.view(count, num_maps, *eps.shape[1:])
        difference = (eps[1:] - eps[:1]).abs().mean(dim=(1, 2))  # (K, h, w)
        difference = difference / difference.flatten(1).max(dim=1).values.clamp(min=1e-12)[:, None, None]
        masks = F.interpolate(difference[:, None], size=size, mode="bilinear", align_corners=False)
        masks = (masks >= threshold).float()
        if dilation > 0:
            masks = F.max_pool2d(masks, kernel_size=2 * dilation + 1, stride=1, padding=dilation)
        return masks.cpu()

    def generate_mask(
        self,
        image: PipelineImageInput,
        source_prompt: str,
        target_prompt: str,
        num_maps: int = 10,
        strength: float = 0.5,
        threshold: float = 0.5,
        dilation: int = 0,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> PIL.Image.Image:
        r"""The built-in automatic mask: where ``target_prompt`` changes the model's noise prediction (DiffEdit-style).

        The image latent is noised ``num_maps`` times to ``strength * T``; the mask is the mean absolute difference
        of the noise predicted under ``target_prompt`` (an edit's guided prompt) and ``source_prompt``, normalised
        to ``[0, 1]``, upsampled to the image, thresholded at ``threshold`` and dilated by ``dilation`` pixels. It
        needs no extra weights but is coarse (latent resolution) and can miss objects the model does not
        "see" changing: look at it before editing, and prefer Grounded-SAM or your own masks for precise edits.

        Returns:
            A binary mask (PIL image, mode ``"L"``, 0/255) of the image's size.
        """
        for name, prompt in (("source_prompt", source_prompt), ("target_prompt", target_prompt)):
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"`{name}` must be a non-empty string, got {prompt!r}.")
        self._check_mask_options(num_maps, strength, threshold, dilation)
        size = self._check_image(image)
        mask = self._noise_difference_masks(
            self.encode_image(self.preprocess_image(image)), size, source_prompt, [target_prompt], num_maps, strength,
            threshold, dilation, generator,
        )
        return _mask_image(mask[0])

    @staticmethod
    def _check_mask_options(num_maps, strength, threshold, dilation) -> None:
        if isinstance(num_maps, bool) or not isinstance(num_maps, int) or num_maps < 1:
            raise ValueError(f"`num_maps` must be a positive integer, got {num_maps!r}.")
        if not isinstance(strength, (int, float)) or not 0 < strength <= 1:
            raise ValueError(f"`strength` must be in (0, 1], got {strength!r}.")
        if not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            raise ValueError(f"`threshold` must be in (0, 1], got {threshold!r}.")
        if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 0:
            raise ValueError(f"`dilation` must be a non-negative integer (pixels), got {dilation!r}.")

    def _generated_masks(self, image, edits: Sequence[Edit], mask_generator) -> torch.Tensor:
        """Masks ``(K, 1, H, W)`` from ``mask_generator(image, phrases)``, checked like the ``masks`` argument."""
        height, width = self._check_image(image)
        phrases = [edit.mask_phrase or edit.source for edit in edits]
        pil_image = self.image_processor.postprocess(self.preprocess_image(image), output_type="pil")[0]
        masks = mask_generator(pil_image, phrases)
        if not isinstance(masks, (list, tuple)) or len(masks) != len(edits):
            raise ValueError(
                f"`mask_generator` must return one mask per phrase ({len(edits)}), got "
                f"{len(masks) if isinstance(masks, (list, tuple)) else type(masks).__name__}."
            )
        return self.prepare_masks(masks, height, width, name="mask_generator(...)")

    # ------------------------------------------------------------------------------------------------------------------
    # Call
    # ------------------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        image: PipelineImageInput,
        source_prompt: str,
        target_prompt: str,
        edits: Sequence[tuple[str, str] | Edit | dict] | None = None,
        masks: Sequence[Any] | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        reassembly_step: int | float = 0.2,
        reinversion_steps: int | float = 0.2,
        optimal_steps: Sequence[int] | None = None,
        search_steps: Sequence[int] | None = None,
        candidate_batch_size: int | None = None,
        inversion: OIRInversion | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        return_candidates: bool = False,
        mask_generator: Callable[[PIL.Image.Image, list[str]], list[Any]] | None = None,
        reassemble: bool | None = None,
        clip_mask: str = "hard",
        search_text: str = "phrase",
        decode_batch_size: int = 8,
        mask_options: dict | None = None,
        search: str = "exhaustive",
        search_stride: int | None = None,
        search_vae: torch.nn.Module | None = None,
    ) -> OIRPipelineOutput | tuple:
        r"""
        Edits ``image`` from ``source_prompt`` to ``target_prompt``, object by object.

        Args:
            image (`PipelineImageInput`): the image to edit; sides must be multiples of 8.
            source_prompt (`str`): ``P_o``, describing the image.
            target_prompt (`str`): ``P_t``, describing the edited image.
            edits (*optional*): the editing pairs ``(O_o^k, O_t^k)``: tuples, dicts or [`Edit`]s. By default they are
                derived from a word-level diff of the two prompts.
            masks (*optional*): one mask ``M^k`` per edit (PIL, numpy or tensor, any size and mode).
            num_inference_steps (`int`, defaults to 50): ``N``.
            guidance_scale (`float`, defaults to 7.5): CFG scale ``w``; the negative prompt is ``P_o``.
            reassembly_step (`int` or `float`, defaults to 0.2): ``i_r``, in steps or as a share of ``N``.
            reinversion_steps (`int` or `float`, defaults to 0.2): ``i_re``, in steps or as a share of ``N``.
            optimal_steps (`list[int]`, *optional*): ``i*_k`` per edit, skipping the search.
            search_steps (`list[int]`, *optional*): the inversion steps searched (default ``1..N``).
            candidate_batch_size (`int` or `"auto"`, *optional*): chains per UNet call (default: the paper's splicing,
                all candidates in one batch of about ``N / 2`` lanes). Memory grows with it, not with ``N``. `"auto"`:
                the most that fit (from free CUDA memory; on CPU a fixed cap, see `_auto_batch_size`).
            inversion ([`OIRInversion`], *optional*): a previous `invert` of this image with ``source_prompt``.
            generator (`torch.Generator`, *optional*): OIR itself is deterministic (DDIM with eta 0, the VAE's mean);
                the generator seeds the built-in automatic mask.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"`, `"pt"` or `"latent"`.
            return_dict (`bool`, defaults to `True`): return an [`OIRPipelineOutput`] instead of a tuple.
            return_candidates (`bool`, defaults to `False`): keep every candidate image in the search records.
            mask_generator (*optional*): a callable ``(image, phrases) -> masks`` (e.g. `oir.masks.GroundedSAM`), used
                when ``masks`` is not given.
            reassemble (`bool`, *optional*): defaults to ``True`` for several edits; with one edit the output is the
                optimal candidate itself (the paper's single-object protocol) unless this is ``True``.
            clip_mask (`str`, defaults to `"hard"`): masking of the CLIP vision tower for ``Se``: `"hard"` or
                `"soft"` (the authors' +1 attention bias).
            search_text (`str`, defaults to `"phrase"`): score ``Se`` against the target phrase or the guided prompt
                (`"prompt"`).
            decode_batch_size (`int`, defaults to 8): candidates decoded (and CLIP-scored) at a time.
            mask_options (`dict`, *optional*): options of the built-in mask (`num_maps`, `strength`, `threshold`,
                `dilation`; see `generate_mask`), used when neither ``masks`` nor ``mask_generator`` is given.
            search (`str`, defaults to `"exhaustive"`): `"exhaustive"` scores every step of ``search_steps``;
                `"coarse-to-fine"` scores every ``search_stride``-th step, then the steps around each edit's best one
                (about a third of the UNet work at N = 50; it can miss the exhaustive optimum when ``S`` is not
                unimodal: see BENCHMARKS.md). The records' ``steps`` are then the evaluated steps.
            search_stride (`int`, *optional*): the coarse stride (default ``round(sqrt(len(search_steps) / 2))``).
            search_vae (*optional*): a cheap decoder for the candidates only, e.g.
                `AutoencoderTiny.from_pretrained("madebyollin/taesd")`; default: the pipeline's ``search_vae``
                component if it has one. The final image is always decoded by ``vae``.

        Returns:
            [`OIRPipelineOutput`] or `tuple` ``(images, optimal_steps, search)``.
        """
        edits, prompts, masks, i_r, i_re, optimal_steps, search_steps, mask_options = self.check_inputs(
            image, source_prompt, target_prompt, edits, masks, mask_generator, num_inference_steps, guidance_scale,
            reassembly_step, reinversion_steps, optimal_steps, search_steps, candidate_batch_size, inversion,
            output_type, clip_mask, search_text, mask_options,
            search=search, search_stride=search_stride, search_vae=search_vae,
        )
        reassemble = len(edits) > 1 if reassemble is None else reassemble
        if masks is None and mask_generator is not None:
            masks = self._generated_masks(image, edits, mask_generator)
        reference = self.preprocess_image(image)

        # 1. Inversion: z_0 ... z_N with the source prompt.
        if inversion is None:
            inversion = self.invert(image, source_prompt, num_inference_steps)
        if masks is None:
            logger.info("No `masks` or `mask_generator`: using the built-in noise-difference masks (`generate_mask`).")
            size = tuple(reference.shape[-2:])
            masks = self._noise_difference_masks(
                inversion.latents[:1].to(self._execution_device), size, source_prompt, prompts, generator=generator,
                **mask_options,
            )
            masks = self.prepare_masks(list(masks[:, 0]), *size, name="generate_mask(...)")

        # 2-3. Candidates and search: i*_k for every edit (or the given optimal steps).
        if optimal_steps is None:
            records, optimal_latents = self.search(
                inversion, reference, edits, prompts, masks, search_steps, guidance_scale, candidate_batch_size,
                decode_batch_size, clip_mask, search_text, return_candidates,
                strategy=search, stride=search_stride, search_vae=search_vae,
            )
            optimal_steps = [record.optimal_step for record in records]
        else:
            records = [
                OIRSearchRecord(edit, prompt, [], [], [], [], step, _mask_image(mask))
                for edit, prompt, step, mask in zip(edits, prompts, optimal_steps, masks)
            ]
            optimal_latents = self._optimal_latents(inversion, prompts, optimal_steps, guidance_scale, i_r, reassemble)

        # 4. Reassembly (several edits), or the optimal candidate itself (one edit).
        if reassemble:
            latents = self.reassemble(
                inversion, prompts, target_prompt, masks, optimal_steps, optimal_latents, i_r, i_re, guidance_scale,
                candidate_batch_size,
            )
        else:
            latents = optimal_latents[0][None]

        if output_type == "latent":
            images = latents
        else:
            images = self.image_processor.postprocess(self.decode_latents(latents) * 2 - 1, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, optimal_steps, records
        return OIRPipelineOutput(images=images, optimal_steps=optimal_steps, search=records)

    def _optimal_latents(
        self, inversion: OIRInversion, prompts: Sequence[str], optimal_steps: Sequence[int], guidance_scale: float,
        i_r: int, reassemble: bool,
    ) -> list[torch.Tensor | None]:
        """Clean latents of the given optimal candidates, computed only where they are needed (one edit without
        reassembly, or an optimal step at or below the reassembly step)."""
        needed = [k for k, step in enumerate(optimal_steps) if step <= i_r or not reassemble]
        result: list[torch.Tensor | None] = [None] * len(prompts)
        if needed:
            embeds = self._unique_embeddings([prompts[k] for k in needed] + [inversion.prompt])
            chains = self._candidate_chains(inversion, embeds[:-1], embeds[-1], [[optimal_steps[k]] for k in needed])
            for k, latent in zip(needed, self._denoise_chains(chains, inversion.timesteps, guidance_scale, None, "OIR candidates")):
                result[k] = latent
        return result
