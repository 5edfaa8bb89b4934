"""Benchmark-scale evaluation: ``oir bench run`` edits every record of a dataset, ``oir bench score`` scores them.

``run`` writes, for one method, one image and one JSON per record under ``OUT/<method>/`` (plus the input image and
masks it used, once, under ``OUT/inputs/``), and a ``summary.json``. It is resumable: a record whose JSON says it is
complete (and whose image is there) is skipped; every file is written to a temporary file and renamed into place, so
a killed run never leaves a half-written file that passes for a finished one. Under ``accelerate launch`` the records
left to do are split across the processes (one per GPU) with accelerate's ``split_between_processes``, and the
per-record results are gathered with ``gather_object`` into the summary.

Methods (``--method``): ``oir`` (the pipeline), ``fixed-step`` (the paper's motivating baseline: one inversion step
for the whole image, denoised with the target prompt), ``diffedit`` (diffusers' ``StableDiffusionDiffEditPipeline``
with its default parameters and its own masks) and ``sd-inpaint`` (diffusers' ``StableDiffusionInpaintPipeline``,
each edit's region inpainted with its target phrase and pasted back: the paper's "method 3").

``score`` computes the CLIP score (ViT-L/14), MS-SSIM, LPIPS and PSNR of every method found under ``OUT`` and writes
``OUT/scores.csv`` (per record) and ``OUT/scores.md`` (the paper's Table 1 layout, one row per method).

Run it as ``oir bench ...`` or ``python -m oir.bench ...``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib
import inspect
import io
import json
import logging
import math
import os
import re
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from hashlib import sha1
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import PIL.Image
import torch

from pipeline_oir import Edit, guided_prompts

from .data import FORMATS, EditRecord, RecordProblem, detect_format, open_mask, read_dataset


logger = logging.getLogger(__name__)

__all__ = [
    "BenchInput",
    "BenchMethod",
    "DiffEditMethod",
    "FixedStepMethod",
    "InpaintMethod",
    "METHODS",
    "OIRMethod",
    "is_complete",
    "load_pipeline",
    "main",
    "make_method",
    "record_key",
    "register",
    "run_benchmark",
    "score_directory",
]

METHODS = ("oir", "fixed-step", "diffedit", "sd-inpaint")
DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"  # the paper's model (appendix A.2)
DEFAULT_SEARCH_CLIP = "openai/clip-vit-base-patch16"  # the paper's search CLIP
# The paper used runwayml/stable-diffusion-inpainting, which has moved to this repository.
DEFAULT_INPAINT_MODEL = "stable-diffusion-v1-5/stable-diffusion-inpainting"
DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 7.5
DEFAULT_SEED = 1  # "The random seed is set to 1 for all experiments" (appendix A.2)
DEFAULT_RESOLUTION = 512
TINY_RESOLUTION = 64
INPUTS_DIR = "inputs"
RUN_FILE = "run.json"
SUMMARY_FILE = "summary.json"
# Table rows in the paper's order; other methods follow alphabetically.
_PAPER_ORDER = ["oir", "pnp", "sd-inpaint", "diffedit", "null-text"]
_DISPLAY = {"oir": "OIR", "pnp": "Plug-and-Play", "sd-inpaint": "SD inpainting", "diffedit": "DiffEdit",
            "null-text": "Null-text inversion"}


# ----------------------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------------------


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to a temporary file beside ``path``, flushes it to disk and renames it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, allow_nan=True) + "\n").encode("utf-8"))


def atomic_save_image(path: str | os.PathLike, image: PIL.Image.Image) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")
_RESERVED_KEYS = {"run", "summary", "scores", INPUTS_DIR}


def record_key(record_id: str) -> str:
    """A file-name-safe key for a record id: the id itself when it is safe (letters, digits, ``_``, ``-``; not a
    name the run uses itself), else a cleaned id plus a short hash of the id."""
    if _SAFE.match(record_id) and record_id.lower() not in _RESERVED_KEYS:
        return record_id
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", record_id).strip("_-")[:80] or "record"
    return f"{cleaned}-{sha1(record_id.encode('utf-8')).hexdigest()[:8]}"


def is_complete(method_dir: str | os.PathLike, key: str) -> bool:
    """Whether the record ``key`` is done in ``method_dir``: its JSON parses, says ``complete`` and names an image
    that exists and reads as an image. (The JSON is written last, so a run killed before it leaves no JSON.)"""
    path = Path(method_dir) / f"{key}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("complete") is not True:
            return False
        with PIL.Image.open(Path(method_dir) / data["image"]) as image:
            image.verify()
        return True
    except (OSError, ValueError, KeyError, TypeError, SyntaxError):
        return False


# ----------------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class BenchInput:
    """One record, ready for a method: the image and masks at the working resolution, the resolved editing pairs
    (``None`` when they cannot be derived), the pipeline options (record options, then command-line overrides) and
    the seed."""

    record: EditRecord
    key: str
    image: PIL.Image.Image
    masks: list[PIL.Image.Image] | None
    edits: list[Edit] | None
    options: dict
    seed: int

    @property
    def source_prompt(self) -> str:
        return self.record.source_prompt

    @property
    def target_prompt(self) -> str:
        return self.record.target_prompt

    def require_edits(self) -> list[Edit]:
        if self.edits is None:
            self.record.resolved_edits()  # raises the explanation
        return self.edits

    def require_masks(self, method: str) -> list[PIL.Image.Image]:
        if self.masks is None:
            raise ValueError(f"{method} needs one mask per edit: the record has none (pass --mask-generator).")
        return self.masks


def _crop_box(size: tuple[int, int], resolution: int) -> tuple[int, int, int, int]:
    width, height = size
    if resolution:
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        return left, top, left + side, top + side
    new_w, new_h = width - width % 8, height - height % 8
    if not new_w or not new_h:
        raise ValueError(f"the image is {width}x{height}: too small (sides under 8 pixels).")
    left, top = (width - new_w) // 2, (height - new_h) // 2
    return left, top, left + new_w, top + new_h


def fit_image(image: PIL.Image.Image, resolution: int, resample=PIL.Image.Resampling.LANCZOS) -> PIL.Image.Image:
    """Centre-crops to a square and resizes to ``resolution`` (0: keeps the size, cropped to multiples of 8)."""
    box = _crop_box(image.size, resolution)
    image = image.crop(box)
    if resolution and image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), resample)
    return image


def fit_mask(mask: PIL.Image.Image, image_size: tuple[int, int], resolution: int) -> PIL.Image.Image:
    """A mask of the original image cropped and resized like :func:`fit_image`, binary ``"L"``."""
    mask = mask.convert("L")
    if mask.size != image_size:
        mask = mask.resize(image_size, PIL.Image.Resampling.BILINEAR)
    mask = fit_image(mask, resolution, PIL.Image.Resampling.BILINEAR)
    return mask.point(lambda v: 255 if v >= 128 else 0)


def prepare_input(
    record: EditRecord,
    out_dir: Path,
    resolution: int,
    seed: int,
    overrides: dict,
    mask_generator: Callable | None = None,
    mask_generator_name: str | None = None,
) -> BenchInput:
    """Loads, crops and resizes the record's image and masks, generates masks if needed (and allowed), and saves
    them under ``OUT/inputs/<key>/`` (what the scores compare against)."""
    key = record_key(record.id)
    original = record.load_image()
    image = fit_image(original, resolution)
    try:
        edits = record.resolved_edits()
    except ValueError:
        edits = None
    input_dir = out_dir / INPUTS_DIR / key
    masks = record.load_masks()
    source = "dataset"
    if masks is not None:
        masks = [fit_mask(mask, original.size, resolution) for mask in masks]
    elif mask_generator is not None and edits is not None:
        source = f"generated:{mask_generator_name}"
        saved = _read_json(input_dir / "masks.json")
        if saved and saved.get("source") == source and saved.get("count") == len(edits):
            masks = [PIL.Image.open(input_dir / f"mask_{k}.png").convert("L") for k in range(len(edits))]
        else:
            phrases = [edit.mask_phrase or edit.source for edit in edits]
            generated = mask_generator(image, phrases)
            if not isinstance(generated, (list, tuple)) or len(generated) != len(edits):
                raise ValueError(f"the mask generator must return one mask per phrase ({len(edits)}).")
            masks = [fit_mask(open_mask(m), image.size, 0) for m in generated]
    atomic_save_image(input_dir / "image.png", image)
    if masks is not None:
        for k, mask in enumerate(masks):
            atomic_save_image(input_dir / f"mask_{k}.png", mask)
        atomic_write_json(input_dir / "masks.json", {"source": source, "count": len(masks)})
    options = {k: v for k, v in record.options.items() if k != "seed"}
    options.update(overrides)
    return BenchInput(record, key, image, masks, edits, options, int(record.options.get("seed", seed)))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------------------------------
# Methods
# ----------------------------------------------------------------------------------------------------------------------


class BenchMethod:
    """A way to edit a :class:`BenchInput`, on a pipeline given as ``pipe``, or loaded by ``loader()`` on first use
    (so that a process with nothing to do loads nothing). ``overrides`` are the explicit command-line options
    (``num_inference_steps``, ``guidance_scale``, ...): they win over the record's own options."""

    kind = "base"

    def __init__(self, pipe: Any = None, *, loader: Callable[[], Any] | None = None, name: str | None = None,
                 overrides: dict | None = None):
        if (pipe is None) == (loader is None):
            raise ValueError("Pass either `pipe` or `loader`.")
        self._pipe = pipe
        self._loader = loader
        self.name = name or self.kind
        self.overrides = {k: v for k, v in (overrides or {}).items() if v is not None}

    @property
    def pipe(self):
        if self._pipe is None:
            self._pipe = self._loader()
        return self._pipe

    def settings(self) -> dict:
        return {"method": self.kind, **self.overrides}

    def _steps_and_guidance(self, item: BenchInput) -> tuple[int, float]:
        return (int(item.options.get("num_inference_steps", DEFAULT_STEPS)),
                float(item.options.get("guidance_scale", DEFAULT_GUIDANCE)))

    def _generator(self, item: BenchInput) -> torch.Generator:
        device = getattr(self.pipe, "device", torch.device("cpu"))
        return torch.Generator(device=device).manual_seed(item.seed)

    def edit(self, item: BenchInput) -> tuple[PIL.Image.Image, dict]:  # pragma: no cover - interface
        raise NotImplementedError


class OIRMethod(BenchMethod):
    """OIR itself (:class:`~pipeline_oir.OIRPipeline`), with the record's edits, masks and options."""

    kind = "oir"

    def edit(self, item: BenchInput) -> tuple[PIL.Image.Image, dict]:
        kwargs = {"num_inference_steps": DEFAULT_STEPS, "guidance_scale": DEFAULT_GUIDANCE, **item.options}
        edits = item.record.edits  # None: the pipeline derives them from the prompts
        output = self.pipe(
            item.image, item.source_prompt, item.target_prompt, edits=edits, masks=item.masks,
            generator=self._generator(item), **kwargs,
        )
        search = [
            {
                "edit": dataclasses.asdict(record.edit),
                "guided_prompt": record.guided_prompt,
                "steps": list(record.steps),
                "editing_scores": list(record.editing_scores),
                "non_editing_scores": list(record.non_editing_scores),
                "scores": list(record.scores),
                "optimal_step": record.optimal_step,
            }
            for record in output.search
        ]
        info = {"optimal_steps": [int(s) for s in output.optimal_steps], "search": search,
                "num_inference_steps": kwargs["num_inference_steps"]}
        return output.images[0], info


def resolve_fixed_step(step: float | int, num_inference_steps: int) -> int:
    """``step`` as an inversion step in ``1..N``: an int is a step, a float in (0, 1] a share of ``N``."""
    if isinstance(step, bool) or not isinstance(step, (int, float)):
        raise ValueError(f"`fixed_step` must be an int (a step) or a float in (0, 1] (a share of N), got {step!r}.")
    if isinstance(step, float):
        if not 0 < step <= 1:
            raise ValueError(f"`fixed_step` as a float is a share of N and must be in (0, 1], got {step}.")
        return max(1, int(round(step * num_inference_steps)))
    if not 1 <= step <= num_inference_steps:
        raise ValueError(f"`fixed_step` must be in 1..{num_inference_steps} (num_inference_steps), got {step}.")
    return step


class FixedStepMethod(BenchMethod):
    """The paper's motivating baseline (Fig. 1, third row): the whole image is inverted to one fixed step ``s`` and
    denoised ``s`` steps with the target prompt ``P_t`` (CFG, negative prompt ``P_o``) - the same inversion step for
    every editing pair, no search, no per-object editing, no reassembly. Uses the OIR pipeline's ``invert`` and
    ``generate_candidates``, so it differs from OIR only in how the step is chosen and applied."""

    kind = "fixed-step"

    def __init__(self, pipe: Any = None, step: float | int = 0.5, *, loader: Callable[[], Any] | None = None,
                 name: str | None = None, overrides: dict | None = None):
        resolve_fixed_step(step, DEFAULT_STEPS)  # validates the type and range early
        super().__init__(pipe, loader=loader, name=name or f"fixed-step-{step}", overrides=overrides)
        self.step = step

    def settings(self) -> dict:
        return {**super().settings(), "fixed_step": self.step}

    def edit(self, item: BenchInput) -> tuple[PIL.Image.Image, dict]:
        steps, guidance = self._steps_and_guidance(item)
        step = resolve_fixed_step(self.step, steps)
        pipe = self.pipe
        inversion = pipe.invert(item.image, item.source_prompt, num_inference_steps=steps)
        latents = pipe.generate_candidates(
            inversion, item.target_prompt, negative_prompt=item.source_prompt, guidance_scale=guidance, steps=[step]
        )
        image = pipe.image_processor.postprocess(pipe.decode_latents(latents) * 2 - 1, output_type="pil")[0]
        return image, {"inversion_step": step, "num_inference_steps": steps}


class DiffEditMethod(BenchMethod):
    """DiffEdit (Couairon et al., 2022) with diffusers' ``StableDiffusionDiffEditPipeline`` and its default
    parameters, as the paper ran it: its own mask from the two prompts, DDIM inversion with the source prompt, and
    masked denoising with the target prompt (negative prompt: the source prompt, as in diffusers' example)."""

    kind = "diffedit"

    def edit(self, item: BenchInput) -> tuple[PIL.Image.Image, dict]:
        steps, guidance = self._steps_and_guidance(item)
        pipe = self.pipe
        generator = self._generator(item)
        mask = pipe.generate_mask(
            image=item.image, source_prompt=item.source_prompt, target_prompt=item.target_prompt,
            num_inference_steps=steps, guidance_scale=guidance, generator=generator,
        )
        latents = pipe.invert(
            prompt=item.source_prompt, image=item.image, num_inference_steps=steps, generator=generator
        ).latents
        image = pipe(
            prompt=item.target_prompt, mask_image=mask, image_latents=latents, negative_prompt=item.source_prompt,
            num_inference_steps=steps, guidance_scale=guidance, generator=generator,
        ).images[0]
        return image, {"num_inference_steps": steps, "diffedit_mask_share": float(np.mean(mask))}


class InpaintMethod(BenchMethod):
    """Stable Diffusion inpainting extended to several objects as in the paper (appendix A.2):

    * variant 3 (default, the paper's "method 3", used in its figures): each edit's region is inpainted separately
      with its target phrase ``O_t`` and the regions are pasted onto the input, in edit order;
    * variant 2: the same with each edit's guided prompt;
    * variant 1: one mask covering all edits, inpainted once with the target prompt.
    """

    kind = "sd-inpaint"

    def __init__(self, pipe: Any = None, variant: int = 3, *, loader: Callable[[], Any] | None = None,
                 name: str | None = None, overrides: dict | None = None):
        if variant not in (1, 2, 3):
            raise ValueError(f"`variant` must be 1, 2 or 3, got {variant!r}.")
        name = name or ("sd-inpaint" if variant == 3 else f"sd-inpaint-m{variant}")
        super().__init__(pipe, loader=loader, name=name, overrides=overrides)
        self.variant = variant

    def settings(self) -> dict:
        return {**super().settings(), "inpaint_variant": self.variant}

    def edit(self, item: BenchInput) -> tuple[PIL.Image.Image, dict]:
        steps, guidance = self._steps_and_guidance(item)
        masks = item.require_masks(self.kind)
        width, height = item.image.size
        if self.variant == 1:
            union = np.maximum.reduce([np.asarray(m) for m in masks])
            jobs = [(item.target_prompt, PIL.Image.fromarray(union, mode="L"))]
        else:
            edits = item.require_edits()
            if len(edits) != len(masks):
                raise ValueError(f"one mask per edit is needed: {len(masks)} masks for {len(edits)} edits.")
            prompts = (
                guided_prompts(item.source_prompt, edits) if self.variant == 2 else [edit.target for edit in edits]
            )
            jobs = list(zip(prompts, masks))
        result = item.image.copy()
        for prompt, mask in jobs:
            inpainted = self.pipe(
                prompt=prompt, image=item.image, mask_image=mask, height=height, width=width,
                num_inference_steps=steps, guidance_scale=guidance, generator=self._generator(item),
            ).images[0]
            if inpainted.size != result.size:
                inpainted = inpainted.resize(result.size, PIL.Image.Resampling.LANCZOS)
            result.paste(inpainted, (0, 0), mask)
        return result, {"num_inference_steps": steps, "prompts": [prompt for prompt, _ in jobs]}


# ----------------------------------------------------------------------------------------------------------------------
# Loading models
# ----------------------------------------------------------------------------------------------------------------------


def _torch_dtype(name: str | None, device: torch.device) -> torch.dtype:
    if name in (None, "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    dtypes = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
              "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if name not in dtypes:
        raise ValueError(f"`--dtype` must be one of auto, {', '.join(dtypes)}; got {name!r}.")
    return dtypes[name]


def _transformers_dtype(dtype: torch.dtype) -> dict:
    """``from_pretrained``'s dtype keyword: ``dtype`` since transformers 4.56, ``torch_dtype`` before."""
    import transformers
    from packaging.version import Version

    return {"dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype": dtype}


def _diffusers_dtype(dtype: torch.dtype) -> dict:
    """diffusers renamed ``from_pretrained``'s ``torch_dtype`` to ``dtype`` (the old name warns); use what it has."""
    from diffusers.utils import deprecation_utils

    return {"dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype": dtype}


def _device(args: argparse.Namespace) -> torch.device:
    device = getattr(args, "device", None)
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _finish(pipe, device: torch.device):
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_pipeline(args: argparse.Namespace, with_clip: bool = True, device: torch.device | None = None):
    """The :class:`~pipeline_oir.OIRPipeline` the flags describe: ``--tiny-random`` (offline, random tiny models
    from :func:`oir.testing.tiny_components`), else ``--model`` (Hub id or folder) with the search CLIP ``--clip``,
    in ``--dtype`` on ``--device``."""
    from pipeline_oir import OIRPipeline

    device = device or _device(args)
    if getattr(args, "tiny_random", False):
        from .testing import tiny_components

        return _finish(OIRPipeline(**tiny_components(seed=0, with_clip=with_clip)), device)
    dtype = _torch_dtype(getattr(args, "dtype", None), device)
    extra = {}
    if with_clip:
        from transformers import CLIPModel, CLIPProcessor

        clip = getattr(args, "clip", None) or DEFAULT_SEARCH_CLIP
        extra = {"clip_model": CLIPModel.from_pretrained(clip, **_transformers_dtype(dtype)),
                 "clip_processor": CLIPProcessor.from_pretrained(clip)}
    pipe = OIRPipeline.from_pretrained(getattr(args, "model", None) or DEFAULT_MODEL, **_diffusers_dtype(dtype), **extra)
    return _finish(pipe, device)


def _tiny_sd_components(seed: int = 0, in_channels: int = 4) -> dict:
    from diffusers import UNet2DConditionModel

    from .testing import tiny_components

    components = tiny_components(seed=seed, with_clip=False)
    if in_channels != 4:
        config = dict(components["unet"].config)
        config["in_channels"] = in_channels
        torch.manual_seed(seed)
        components["unet"] = UNet2DConditionModel.from_config(config).eval()
    return components


def load_diffedit_pipeline(args: argparse.Namespace, device: torch.device | None = None):
    """diffusers' ``StableDiffusionDiffEditPipeline`` on ``--model`` (or the tiny random model), with the DDIM and
    DDIM-inverse schedulers as in diffusers' documentation, without safety checker."""
    try:
        from diffusers import StableDiffusionDiffEditPipeline
    except ImportError:  # pragma: no cover - diffusers versions that dropped the top-level export
        from diffusers.pipelines.deprecated.stable_diffusion_diffedit import StableDiffusionDiffEditPipeline
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    device = device or _device(args)
    if getattr(args, "tiny_random", False):
        components = _tiny_sd_components()
        pipe = StableDiffusionDiffEditPipeline(
            **components, inverse_scheduler=DDIMInverseScheduler.from_config(components["scheduler"].config),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    else:
        pipe = StableDiffusionDiffEditPipeline.from_pretrained(
            getattr(args, "model", None) or DEFAULT_MODEL, safety_checker=None, requires_safety_checker=False,
            **_diffusers_dtype(_torch_dtype(getattr(args, "dtype", None), device)),
        )
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.inverse_scheduler = DDIMInverseScheduler.from_config(pipe.scheduler.config)
    return _finish(pipe, device)


def load_inpaint_pipeline(args: argparse.Namespace, device: torch.device | None = None):
    """diffusers' ``StableDiffusionInpaintPipeline`` on ``--inpaint-model`` (or a tiny random one whose UNet has the
    9 input channels of inpainting), without safety checker."""
    from diffusers import StableDiffusionInpaintPipeline

    device = device or _device(args)
    if getattr(args, "tiny_random", False):
        pipe = StableDiffusionInpaintPipeline(
            **_tiny_sd_components(in_channels=9), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )
    else:
        pipe = StableDiffusionInpaintPipeline.from_pretrained(
            getattr(args, "inpaint_model", None) or DEFAULT_INPAINT_MODEL, safety_checker=None,
            requires_safety_checker=False, **_diffusers_dtype(_torch_dtype(getattr(args, "dtype", None), device)),
        )
    return _finish(pipe, device)


def _parse_number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int (steps) or a float (share of N), got {text!r}") from None


def make_method(args: argparse.Namespace, device: torch.device | None = None) -> BenchMethod:
    """The method of ``--method`` with its models loaded lazily (on the first record) on ``device``."""
    overrides = {
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance,
        "reassembly_step": args.reassembly_step,
        "reinversion_steps": args.reinversion_steps,
        "candidate_batch_size": getattr(args, "candidate_batch_size", None),
    }
    name = getattr(args, "name", None)
    if args.method == "oir":
        return OIRMethod(loader=lambda: load_pipeline(args, True, device), name=name, overrides=overrides)
    for key in ("reassembly_step", "reinversion_steps", "candidate_batch_size"):
        if overrides[key] is not None:
            logger.warning("--%s applies to --method oir only; ignored.", key.replace("_", "-"))
        overrides.pop(key)
    if args.method == "fixed-step":
        return FixedStepMethod(step=args.fixed_step, loader=lambda: load_pipeline(args, False, device), name=name,
                               overrides=overrides)
    if args.method == "diffedit":
        return DiffEditMethod(loader=lambda: load_diffedit_pipeline(args, device), name=name, overrides=overrides)
    if args.method == "sd-inpaint":
        return InpaintMethod(variant=args.inpaint_variant, loader=lambda: load_inpaint_pipeline(args, device),
                             name=name, overrides=overrides)
    raise ValueError(f"`--method` must be one of {', '.join(METHODS)}, got {args.method!r}.")


def _import_attribute(spec: str) -> Any:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"`--mask-generator` must be 'module:attribute', e.g. 'oir.masks:GroundedSAM'; got {spec!r}.")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"`--mask-generator` {spec!r}: {error}") from None


class LazyMaskGenerator:
    """A mask generator built by :func:`load_mask_generator` on its first call (so idle processes load nothing)."""

    def __init__(self, spec: str, device: torch.device | None = None):
        _import_attribute(spec)  # a bad name fails now, not on every record
        self.spec, self.device, self._generator = spec, device, None

    def __call__(self, image: PIL.Image.Image, phrases: list[str]) -> list:
        if self._generator is None:
            self._generator = load_mask_generator(self.spec, self.device)
        return self._generator(image, phrases)


def load_mask_generator(spec: str | None, device: torch.device | None = None) -> Callable | None:
    """``module:attribute`` -> a mask generator ``(image, phrases) -> masks``. A class is built with its
    ``from_pretrained()`` (given ``device`` when it takes one), e.g. ``oir.masks:GroundedSAM``, or without arguments;
    any other callable is the generator itself."""
    if not spec:
        return None
    target = _import_attribute(spec)
    if isinstance(target, type):
        factory = getattr(target, "from_pretrained", None) or target
        takes_device = "device" in inspect.signature(factory).parameters
        return factory(device=device) if takes_device and device is not None else factory()
    if not callable(target):
        raise ValueError(f"`--mask-generator` {spec!r} is not callable.")
    return target


# ----------------------------------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------------------------------


def _check_run_file(method_dir: Path, settings: dict) -> None:
    existing = _read_json(method_dir / RUN_FILE)
    if not isinstance(existing, dict):
        return
    old = existing.get("settings", {})
    different = {k: (old.get(k), settings.get(k)) for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)}
    if different:
        lines = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in different.items())
        raise ValueError(
            f"{method_dir} holds a run with other settings ({lines}). Resuming would mix them: pass another --out, "
            "or --name to keep this variant in its own folder."
        )


def _union_mask_share(masks: list[PIL.Image.Image] | None) -> float | None:
    if not masks:
        return None
    return float(np.mean(np.maximum.reduce([np.asarray(m) > 0 for m in masks])))


def _sync(device: Any) -> None:
    if isinstance(device, torch.device) and device.type == "cuda":
        torch.cuda.synchronize(device)


def run_benchmark(
    records: Sequence[EditRecord],
    out_dir: str | os.PathLike,
    method: BenchMethod,
    *,
    settings: dict | None = None,
    resolution: int = DEFAULT_RESOLUTION,
    seed: int = DEFAULT_SEED,
    mask_generator: Callable | None = None,
    mask_generator_name: str | None = None,
    problems: Sequence[RecordProblem] = (),
    state=None,
    stop_on_error: bool = False,
    show_progress: bool = True,
) -> dict:
    """Edits every record not yet complete under ``OUT/<method.name>/``, split across the processes of ``state``
    (an ``accelerate.PartialState``; default: a new one), and returns the summary, gathered from all processes
    (also written to ``summary.json`` by the main process).

    A record that raises is recorded as failed (``<key>.error.json``, with the traceback) and the others go on
    (unless ``stop_on_error``); it is retried by the next run. ``KeyboardInterrupt`` stops the run at once.
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    state = state or PartialState(cpu=not torch.cuda.is_available())
    out_dir = Path(out_dir)
    method_dir = out_dir / method.name
    settings = {**method.settings(), "resolution": resolution, "seed": seed,
                "mask_generator": mask_generator_name, **(settings or {})}

    keys = {}
    for record in records:
        key = record_key(record.id)
        if key in keys:
            raise ValueError(f"records {keys[key]!r} and {record.id!r} map to the same file name {key!r}.")
        keys[key] = record.id
    _check_run_file(method_dir, settings)  # every process: they all raise alike
    state.wait_for_everyone()
    if state.is_main_process:
        method_dir.mkdir(parents=True, exist_ok=True)
        if not (method_dir / RUN_FILE).exists():
            atomic_write_json(method_dir / RUN_FILE, {"settings": settings, "created": _now()})
        for stale in method_dir.glob(".*.tmp"):  # left by a killed run; never taken for results
            stale.unlink(missing_ok=True)
    done = [r.id for r in records if is_complete(method_dir, record_key(r.id))]
    todo = [r for r in records if r.id not in set(done)]
    state.wait_for_everyone()  # everyone has looked before anyone writes

    results = []
    started = time.perf_counter()
    with state.split_between_processes(todo) as shard:
        shard = list(shard)
        bar = tqdm(
            shard, desc=f"{method.name} [{state.process_index + 1}/{state.num_processes}]", unit="record",
            disable=not (show_progress and state.is_local_main_process), dynamic_ncols=True,
        )
        for record in bar:
            results.append(
                _run_one(record, out_dir, method_dir, method, resolution, seed, settings, mask_generator,
                         mask_generator_name, state, stop_on_error)
            )
            if show_progress and state.is_local_main_process:
                failed = sum(r["status"] == "failed" for r in results)
                bar.set_postfix(failed=failed, refresh=False)
    elapsed = time.perf_counter() - started
    gathered = gather_object(results)
    spans = gather_object([{"process": state.process_index, "seconds": elapsed, "records": len(results)}])
    summary = _summary(records, done, gathered, spans, problems, method, settings)
    if state.is_main_process:
        atomic_write_json(method_dir / SUMMARY_FILE, summary)
    state.wait_for_everyone()
    return summary


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _run_one(record, out_dir, method_dir, method, resolution, seed, settings, mask_generator, mask_generator_name,
             state, stop_on_error) -> dict:
    key = record_key(record.id)
    error_path = method_dir / f"{key}.error.json"
    t0 = time.perf_counter()
    try:
        item = prepare_input(record, out_dir, resolution, seed, method.overrides, mask_generator, mask_generator_name)
        t1 = time.perf_counter()
        device = getattr(method.pipe, "device", None)
        if isinstance(device, torch.device) and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        image, info = method.edit(item)
        _sync(device)
        t2 = time.perf_counter()
        atomic_save_image(method_dir / f"{key}.png", image)
        rel = lambda p: os.path.relpath(p, out_dir)  # noqa: E731
        masks = None if item.masks is None else [rel(out_dir / INPUTS_DIR / key / f"mask_{k}.png")
                                                 for k in range(len(item.masks))]
        data = {
            "id": record.id,
            "method": method.name,
            "complete": True,
            "image": f"{key}.png",
            "input_image": rel(out_dir / INPUTS_DIR / key / "image.png"),
            "masks": masks,
            "mask_share": _union_mask_share(item.masks),
            "source_prompt": record.source_prompt,
            "target_prompt": record.target_prompt,
            "edits": None if item.edits is None else [dataclasses.asdict(e) for e in item.edits],
            "options": {k: v for k, v in item.options.items()},
            "seed": item.seed,
            **info,
            "timings": {"prepare_s": round(t1 - t0, 4), "edit_s": round(t2 - t1, 4)},
            "process_index": state.process_index,
            "device": str(device) if device is not None else None,
            "meta": record.meta,
            "finished": _now(),
        }
        if isinstance(device, torch.device) and device.type == "cuda":
            data["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
        data["timings"]["total_s"] = round(time.perf_counter() - t0, 4)
        atomic_write_json(method_dir / f"{key}.json", data)  # last: this is what marks the record as done
        if error_path.exists():
            error_path.unlink()
        return {"id": record.id, "status": "done", "process": state.process_index, "seconds": data["timings"]["total_s"]}
    except Exception as error:
        if stop_on_error:
            raise
        logger.error("record %r failed: %s: %s", record.id, type(error).__name__, error)
        message = f"{type(error).__name__}: {error}"
        atomic_write_json(error_path, {"id": record.id, "error": message, "traceback": traceback.format_exc(),
                                       "process_index": state.process_index, "finished": _now()})
        return {"id": record.id, "status": "failed", "process": state.process_index, "error": message,
                "seconds": round(time.perf_counter() - t0, 4)}


def _summary(records, done_before, results, spans, problems, method, settings) -> dict:
    ran = [r for r in results if r["status"] == "done"]
    failed = [r for r in results if r["status"] == "failed"]
    seconds = [r["seconds"] for r in ran]
    processes: dict[str, list[str]] = {}
    for r in results:
        processes.setdefault(str(r["process"]), []).append(r["id"])
    return {
        "method": method.name,
        "settings": settings,
        "records": len(records),
        "complete": len(done_before) + len(ran),
        "skipped_complete": len(done_before),
        "ran": len(ran),
        "failed": [{"id": r["id"], "error": r["error"]} for r in failed],
        "invalid_records": [p.to_dict() for p in problems],
        "assignment": processes,
        "processes": sorted(spans, key=lambda s: s["process"]),
        "mean_record_s": round(sum(seconds) / len(seconds), 4) if seconds else None,
        "finished": _now(),
    }


def select_records(records: Sequence[EditRecord], ids: Sequence[str] | None, limit: int | None) -> list[EditRecord]:
    """Records with the given ids (in dataset order), then the first ``limit``."""
    records = list(records)
    if ids:
        wanted = [i for value in ids for i in str(value).split(",") if i]
        known = {r.id for r in records}
        unknown = [i for i in wanted if i not in known]
        if unknown:
            raise ValueError(f"`--ids`: unknown (or invalid) record id(s): {', '.join(unknown)}")
        wanted = set(wanted)
        records = [r for r in records if r.id in wanted]
    if limit is not None:
        if limit < 0:
            raise ValueError(f"`--limit` must be non-negative, got {limit}.")
        records = records[:limit]
    return records


def _user_errors(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Bad input (a ``ValueError``, e.g. a :class:`~oir.data.DatasetError`) -> a one-line message, exit status 2."""

    def wrapper(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except ValueError as error:
            print(f"oir bench: error: {error}", file=sys.stderr)
            return 2

    wrapper.__name__ = wrapper.__qualname__ = command.__name__
    wrapper.__doc__ = command.__doc__
    return wrapper


def _build_tiny_tokenizer_in_turn(state) -> None:
    """Builds ``oir.testing``'s offline CLIP tokenizer one process after the other: its first call in a process
    (re)writes the shared vocabulary files, which a process reading them at the same moment would find half-written."""
    from .testing import clip_tokenizer

    for index in range(state.num_processes):
        if state.process_index == index:
            clip_tokenizer()
        state.wait_for_everyone()


@_user_errors
def cmd_run(args: argparse.Namespace) -> int:
    """``oir bench run``."""
    from accelerate import PartialState

    if args.tiny_random and args.resolution is None:
        args.resolution = TINY_RESOLUTION
    resolution = DEFAULT_RESOLUTION if args.resolution is None else args.resolution
    if resolution < 0 or resolution % 8:
        raise ValueError(f"`--resolution` must be a multiple of 8 (0: keep the size), got {resolution}.")
    state = PartialState(cpu=args.device == "cpu" or not torch.cuda.is_available())
    device = torch.device(args.device) if args.device else state.device
    if args.device and state.num_processes > 1 and device.type != "cpu":
        logger.warning("--device %s is ignored under a multi-process launch: each process uses %s.", args.device,
                       state.device)
        device = state.device

    dataset_format = detect_format(args.spec) if args.format in (None, "auto") else args.format
    records, problems = read_dataset(args.spec, dataset_format, args.data_root)
    if problems:
        if state.is_main_process:
            for problem in problems:
                logger.warning("invalid record left out: %s", problem)
        if args.strict:
            from .data import DatasetError

            raise DatasetError(problems, args.spec)
    records = select_records(records, args.ids, args.limit)
    if not records:
        raise ValueError(f"no valid records to run in {args.spec}.")

    if args.tiny_random and state.num_processes > 1:
        _build_tiny_tokenizer_in_turn(state)
    method = make_method(args, device)
    settings = {
        "dataset": str(Path(args.spec).resolve()),
        "format": dataset_format,
        "model": "tiny-random" if args.tiny_random else (args.model or DEFAULT_MODEL),
        "dtype": None if args.tiny_random else (args.dtype or "auto"),
    }
    if args.method == "oir":
        settings["clip"] = None if args.tiny_random else (args.clip or DEFAULT_SEARCH_CLIP)
    if args.method == "sd-inpaint":
        settings["model"] = "tiny-random" if args.tiny_random else (args.inpaint_model or DEFAULT_INPAINT_MODEL)
    summary = run_benchmark(
        records, args.out, method, settings=settings, resolution=resolution, seed=args.seed,
        mask_generator=LazyMaskGenerator(args.mask_generator, device) if args.mask_generator else None,
        mask_generator_name=args.mask_generator,
        problems=problems, state=state, stop_on_error=args.stop_on_error, show_progress=not args.no_progress,
    )
    if state.is_main_process:
        print(
            f"{method.name}: {summary['complete']}/{summary['records']} records complete "
            f"({summary['skipped_complete']} already done, {summary['ran']} run, {len(summary['failed'])} failed, "
            f"{len(problems)} invalid) -> {Path(args.out) / method.name}"
        )
        for failure in summary["failed"]:
            print(f"  failed {failure['id']}: {failure['error']}")
    return 1 if summary["failed"] else 0


# ----------------------------------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------------------------------

SCORE_COLUMNS = ("clip_score", "ms_ssim", "lpips", "psnr", "ms_ssim_bg", "lpips_bg", "psnr_bg")
_HEADERS = {
    "clip_score": "CLIP score ↑", "ms_ssim": "MS-SSIM ↑", "lpips": "LPIPS ↓", "psnr": "PSNR ↑",
    "ms_ssim_bg": "MS-SSIM (non-edited) ↑", "lpips_bg": "LPIPS (non-edited) ↓", "psnr_bg": "PSNR (non-edited) ↑",
}
_DIGITS = {"clip_score": 2, "ms_ssim": 3, "lpips": 3, "psnr": 2, "ms_ssim_bg": 3, "lpips_bg": 3, "psnr_bg": 2}


def _method_order(name: str) -> tuple:
    base = "fixed-step" if name.startswith("fixed-step") else name
    return (_PAPER_ORDER.index(base) if base in _PAPER_ORDER else len(_PAPER_ORDER), name)


def find_methods(out_dir: str | os.PathLike) -> list[str]:
    """The method folders of a bench output folder (those holding a ``run.json``), in the paper's row order."""
    out_dir = Path(out_dir)
    names = [p.name for p in out_dir.iterdir() if p.is_dir() and p.name != INPUTS_DIR and (p / RUN_FILE).is_file()]
    return sorted(names, key=_method_order)


def _display(name: str) -> str:
    if name.startswith("fixed-step-"):
        return f"Fixed inversion step ({name[len('fixed-step-'):]})"
    return _DISPLAY.get(name, name)


def _load_union_mask(out_dir: Path, masks: Sequence[str] | None) -> np.ndarray | None:
    if not masks:
        return None
    arrays = []
    for mask in masks:
        with PIL.Image.open(out_dir / mask) as image:
            arrays.append(np.asarray(image.convert("L")) >= 128)
    return np.maximum.reduce(arrays)


def score_directory(out_dir: str | os.PathLike, scorer, methods: Sequence[str] | None = None,
                    show_progress: bool = True) -> tuple[list[dict], str]:
    """Scores every complete record of every method under ``out_dir``; returns the per-record rows and the
    markdown table (means over the records every listed method completed)."""
    from tqdm.auto import tqdm

    from .metrics import mean

    out_dir = Path(out_dir)
    available = find_methods(out_dir)
    if methods:
        missing = [m for m in methods if m not in available]
        if missing:
            raise ValueError(f"`--methods`: no run of {', '.join(missing)} under {out_dir} (found: {', '.join(available)}).")
        available = [m for m in available if m in methods]
    if not available:
        raise ValueError(f"no method runs (folders with {RUN_FILE}) under {out_dir}.")
    rows = []
    for name in available:
        method_dir = out_dir / name
        files = sorted(p for p in method_dir.glob("*.json") if p.name not in (RUN_FILE, SUMMARY_FILE)
                       and not p.name.endswith(".error.json"))
        for path in tqdm(files, desc=f"scoring {name}", unit="record", disable=not show_progress):
            if not is_complete(method_dir, path.stem):
                continue
            data = json.loads(path.read_text(encoding="utf-8"))
            with PIL.Image.open(out_dir / data["input_image"]) as source:
                source = source.convert("RGB")
            with PIL.Image.open(method_dir / data["image"]) as edited:
                edited = edited.convert("RGB")
            if edited.size != source.size:
                logger.warning("%s/%s: the edited image is %s, the input %s: resizing it to the input's size.",
                               name, data["id"], edited.size, source.size)
                edited = edited.resize(source.size, PIL.Image.Resampling.LANCZOS)
            mask = _load_union_mask(out_dir, data.get("masks"))
            scores = scorer(edited, source, data["target_prompt"], mask)
            rows.append({"method": name, "id": data["id"], **scores})
    return rows, markdown_table(rows, available, mean)


def markdown_table(rows: Sequence[dict], methods: Sequence[str], mean: Callable) -> str:
    """One row per method (the paper's Table 1 columns first), averaged over the records all methods have."""
    ids_per_method = [{r["id"] for r in rows if r["method"] == m} for m in methods]
    common = set.intersection(*ids_per_method) if ids_per_method else set()
    if any(ids != common for ids in ids_per_method):
        logger.warning("methods completed different records: the table averages the %d records they all have.",
                       len(common))
    lines = ["| Method | " + " | ".join(_HEADERS[c] for c in SCORE_COLUMNS) + " | Records |",
             "|---|" + "---:|" * (len(SCORE_COLUMNS) + 1)]
    for name in methods:
        chosen = [r for r in rows if r["method"] == name and r["id"] in common]
        cells = []
        for column in SCORE_COLUMNS:
            value = mean([r[column] for r in chosen])
            cells.append("n/a" if math.isnan(value) else ("inf" if math.isinf(value) else f"{value:.{_DIGITS[column]}f}"))
        lines.append(f"| {_display(name)} | " + " | ".join(cells) + f" | {len(chosen)} |")
    return "\n".join(lines) + "\n"


def write_scores(out_dir: str | os.PathLike, rows: Sequence[dict], table: str) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["method", "id", *SCORE_COLUMNS], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    csv_path, md_path = out_dir / "scores.csv", out_dir / "scores.md"
    atomic_write_bytes(csv_path, buffer.getvalue().encode("utf-8"))
    atomic_write_bytes(md_path, table.encode("utf-8"))
    return csv_path, md_path


def make_scorer(args: argparse.Namespace):
    from .metrics import CLIPScorer, EditScorer, LPIPSScorer

    device = _device(args)
    if args.tiny_random:
        from .testing import tiny_components

        components = tiny_components(seed=0)
        clip = CLIPScorer("tiny-random", components["clip_model"], components["clip_processor"], device=device)
        return EditScorer(clip, LPIPSScorer(args.lpips_net, random_backbone=True, device=device))
    return EditScorer(CLIPScorer(args.clip, device=device), LPIPSScorer(args.lpips_net, device=device))


@_user_errors
def cmd_score(args: argparse.Namespace) -> int:
    """``oir bench score``."""
    rows, table = score_directory(args.out_dir, make_scorer(args), args.methods, show_progress=not args.no_progress)
    csv_path, md_path = write_scores(args.out_dir, rows, table)
    print(table, end="")
    print(f"{len(rows)} scored records -> {csv_path}, {md_path}")
    return 0


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="dataset: an edit spec YAML, an OIR-Bench YAML or PIE-Bench's mapping_file.json")
    parser.add_argument("--out", required=True, help="output folder (results go to OUT/<method>/)")
    parser.add_argument("--method", choices=METHODS, default="oir", help="method to run (default: oir)")
    parser.add_argument("--name", help="folder name of this run under OUT (default: the method's name)")
    parser.add_argument("--format", choices=("auto", *FORMATS), default="auto", help="dataset format (default: auto)")
    parser.add_argument("--data-root", help="folder the dataset's relative image/mask paths are under")
    parser.add_argument("--ids", nargs="+", help="only these record ids (space- or comma-separated)")
    parser.add_argument("--limit", type=int, help="only the first N records")
    parser.add_argument("--strict", action="store_true", help="stop if any record is invalid (default: skip it)")
    parser.add_argument("--stop-on-error", action="store_true", help="stop at the first record that fails")
    models = parser.add_argument_group("model and sampling (as `oir edit`)")
    models.add_argument("--model", help=f"Stable Diffusion model id or folder (default: {DEFAULT_MODEL})")
    models.add_argument("--clip", help=f"CLIP of OIR's search (default: {DEFAULT_SEARCH_CLIP})")
    models.add_argument("--inpaint-model", help=f"inpainting model for sd-inpaint (default: {DEFAULT_INPAINT_MODEL})")
    models.add_argument("--steps", type=int, help=f"inversion / sampling steps N (default: record's, else {DEFAULT_STEPS})")
    models.add_argument("--guidance", type=float, help=f"CFG scale (default: record's, else {DEFAULT_GUIDANCE})")
    models.add_argument("--reassembly-step", type=_parse_number, help="i_r: steps (int) or share of N (default 0.2)")
    models.add_argument("--reinversion-steps", type=_parse_number, help="i_re: steps (int) or share of N (default 0.2)")
    models.add_argument("--candidate-batch-size", type=int, help="OIR candidate chains per UNet call")
    models.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"seed (default {DEFAULT_SEED}, as the paper)")
    models.add_argument("--device", help="device (default: accelerate's per-process device, else cuda if available)")
    models.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), default=None,
                        help="weights dtype (default auto: float16 on GPU, float32 on CPU)")
    models.add_argument("--tiny-random", action="store_true",
                        help="offline smoke run on tiny random models (oir.testing.tiny_components); 64px images")
    models.add_argument("--resolution", type=int, default=None,
                        help=f"centre-crop to a square and resize to this size (default {DEFAULT_RESOLUTION}; 0 keeps "
                             "the size)")
    baselines = parser.add_argument_group("baselines")
    baselines.add_argument("--fixed-step", type=_parse_number, default=0.5,
                           help="fixed-step: the inversion step, int or share of N (default 0.5)")
    baselines.add_argument("--inpaint-variant", type=int, choices=(1, 2, 3), default=3,
                           help="sd-inpaint: the paper's multi-object variant (default 3: per-edit target phrase)")
    parser.add_argument("--mask-generator", help="'module:callable' making masks for records without them, e.g. "
                                                  "oir.masks:GroundedSAM")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    from .metrics import DEFAULT_CLIP_MODEL, DEFAULT_LPIPS_NET

    parser.add_argument("out_dir", help="the --out folder of `bench run`")
    parser.add_argument("--clip", default=DEFAULT_CLIP_MODEL, help=f"evaluation CLIP (default: {DEFAULT_CLIP_MODEL})")
    parser.add_argument("--lpips-net", choices=("alex", "vgg", "squeeze"), default=DEFAULT_LPIPS_NET,
                        help=f"LPIPS backbone (default: {DEFAULT_LPIPS_NET})")
    parser.add_argument("--methods", nargs="+", help="only these method folders")
    parser.add_argument("--device", help="device (default: cuda if available)")
    parser.add_argument("--tiny-random", action="store_true",
                        help="offline smoke scoring: tiny random CLIP, LPIPS with a random backbone (not real scores)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_commands(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench_command", metavar="{run,score}")
    sub.required = True
    run_parser = sub.add_parser("run", help="edit every record of a dataset with one method (resumable)",
                                description="Edits every record of a dataset with one method; resumable; split "
                                            "across processes under `accelerate launch`.")
    add_run_arguments(run_parser)
    run_parser.set_defaults(func=cmd_run)
    score_parser = sub.add_parser("score", help="score the runs of a bench folder (CLIP score, MS-SSIM, LPIPS, PSNR)",
                                  description="Scores every method run under a bench folder; writes scores.csv and "
                                              "scores.md.")
    add_score_arguments(score_parser)
    score_parser.set_defaults(func=cmd_score)


def register(subparsers) -> argparse.ArgumentParser:
    """Adds the ``bench`` command (``run``, ``score``) to the ``oir`` command line's subparsers; the chosen
    subcommand's handler is ``args.func(args) -> exit code``."""
    parser = subparsers.add_parser("bench", help="benchmark-scale evaluation (run, score)",
                                   description="Benchmark-scale evaluation: `run` edits a dataset, `score` scores it.")
    _add_commands(parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m oir.bench", description=__doc__.split("\n\n")[0])
    _add_commands(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
