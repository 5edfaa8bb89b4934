"""The ``oir`` command line (also ``python -m oir``).

``oir edit``       edit a photo (or every record of an edit spec) and write the edited image, one candidate grid and
                   one search plot per edit, and ``report.json``;
``oir export-hub`` write (and optionally upload) a Hub repository holding the pipeline file and its model card;
``oir bench``      the benchmark (added by ``oir.bench.register`` when that module is installed).

Run ``oir edit --help`` for every option. Heavy libraries are imported only when a command runs, so ``--help`` is
quick.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Sequence

__all__ = ["main", "build_parser", "CLIError", "parse_edit"]

DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"
DEFAULT_CLIP = "openai/clip-vit-base-patch16"
DEFAULT_RESOLUTION = 512
TINY_RESOLUTION = 128  # the tiny model works at any size; 128 px keeps thin masks (8 px latent cells) non-empty

# CLI flag (argparse dest) -> OIRPipeline.__call__ keyword, for the flags that are call arguments.
CALL_FLAGS = {
    "steps": "num_inference_steps",
    "guidance": "guidance_scale",
    "reassembly_step": "reassembly_step",
    "reinversion_steps": "reinversion_steps",
    "candidate_batch_size": "candidate_batch_size",
    "search": "search",
    "search_stride": "search_stride",
}
CALL_DEFAULTS = {"num_inference_steps": 50, "guidance_scale": 7.5, "reassembly_step": 0.2, "reinversion_steps": 0.2}
# Settings that a spec's `options` may set beside the call arguments (the shared spec format: see oir.data).
SPEC_SETTINGS = ("seed",)
# Settings only the command line sets.
CLI_SETTINGS = ("resolution", "auto_mask", "model", "clip", "detector", "sam", "device", "dtype")
# Call arguments the command sets itself.
RESERVED_CALL_ARGS = ("image", "source_prompt", "target_prompt", "edits", "masks", "mask_generator", "generator",
                      "output_type", "return_dict", "return_candidates", "inversion")
RUN_FILES = ("edited.png", "input.png", "report.json")
EDIT_FILE_PATTERN = re.compile(r"^edit\d+_(mask|candidates|search|figure)\.png$")


class CLIError(Exception):
    """A user error: printed as ``oir: error: <message>`` without a traceback (exit status 2)."""


# ----------------------------------------------------------------------------------------------------------------------
# Argument parsing
# ----------------------------------------------------------------------------------------------------------------------


def parse_edit(text: str) -> tuple[str, str]:
    """``"dumplings->fried rice"`` -> ``("dumplings", "fried rice")``."""
    if not isinstance(text, str) or "->" not in text:
        raise argparse.ArgumentTypeError(f"an edit must look like 'source phrase->target phrase', got {text!r}")
    source, target = (part.strip() for part in text.split("->", 1))
    if not source or not target or "->" in target:
        raise argparse.ArgumentTypeError(f"an edit must look like 'source phrase->target phrase', got {text!r}")
    return source, target


def _steps_or_share(text: str) -> int | float:
    """``0.2`` (a share of the steps) or ``10`` (a number of steps)."""
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a share of the steps like 0.2 or a step count like 10, got {text!r}"
        ) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


EDIT_EPILOG = """\
examples:
  oir edit examples/images/coffee.png --source "a cup of coffee with a spoon on a saucer on a wooden table" \\
      --target "a cup of tea with a fork on a saucer on a marble table" \\
      --edit "coffee->tea" --mask examples/masks/coffee_coffee.png \\
      --edit "spoon->fork" --mask examples/masks/coffee_spoon.png \\
      --edit "wooden table->marble table" --mask examples/masks/coffee_table.png --out outputs/coffee
  oir edit --spec examples/coffee.yaml                 # the same from an edit spec
  oir edit --spec examples/coffee.yaml --tiny-random   # offline smoke test (tiny random model: images are noise)
"""


def _add_edit_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "edit",
        help="edit a photo object by object",
        description="Edit a photo from a source prompt to a target prompt with OIR, object by object, and write the "
        "edited image, one candidate grid and one search plot per edit, and report.json.",
        epilog=EDIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Defaults are None so that a spec's options can fill what the command line does not set.
    io = p.add_argument_group("input and output")
    io.add_argument("image", nargs="?", help="the photo to edit (not with --spec)")
    io.add_argument("--source", help="source prompt: describes the photo")
    io.add_argument("--target", help="target prompt: describes the edited photo")
    io.add_argument("--edit", action="append", type=parse_edit, metavar="'SRC->TGT'",
                    help="an editing pair, e.g. 'dumplings->fried rice' (repeat per edit; default: the word diff of "
                    "the prompts)")
    io.add_argument("--spec", help="an edit spec (YAML, one record or `records:`) instead of IMAGE/--source/--target")
    io.add_argument("--id", action="append", dest="ids", metavar="ID",
                    help="with --spec: only the record(s) with this id (repeatable)")
    io.add_argument("--out", help="output folder (default: outputs/<image name or record id>; for a spec of several "
                    "records: <out>/<record id>)")
    io.add_argument("--overwrite", action="store_true", help="replace the files of an earlier run in --out")
    io.add_argument("--resolution", type=_non_negative_int,
                    help=f"resize the photo so that its longer side has this many pixels, sides rounded to multiples "
                    f"of 8 (default {DEFAULT_RESOLUTION}, with --tiny-random {TINY_RESOLUTION}; 0 keeps the size)")

    masks = p.add_argument_group("masks (one region per edit)")
    masks.add_argument("--mask", action="append", metavar="FILE",
                       help="mask image of an edit (white = edit), in the order of the edits (repeat per edit)")
    masks.add_argument("--auto-mask", choices=("grounded-sam", "builtin"),
                       help="find the masks: 'grounded-sam' (GroundingDINO + SAM, downloads both) or 'builtin' (the "
                       "pipeline's noise-difference mask, no extra weights); default builtin without --mask")
    masks.add_argument("--detector", help="with --auto-mask grounded-sam: GroundingDINO Hub id or folder "
                       "(default IDEA-Research/grounding-dino-tiny)")
    masks.add_argument("--sam", help="with --auto-mask grounded-sam: SAM Hub id or folder, or a segment_anything "
                       "checkpoint file (default facebook/sam-vit-base)")

    model = p.add_argument_group("models")
    model.add_argument("--model", help=f"Stable Diffusion 1.x: Hub id or local folder (default {DEFAULT_MODEL})")
    model.add_argument("--clip", help=f"CLIP of the search metric: Hub id or local folder (default {DEFAULT_CLIP})")
    model.add_argument("--tiny-random", action="store_true",
                       help="use a tiny randomly initialised model instead (offline smoke test: the images are noise)")
    model.add_argument("--device", help="cuda, cuda:1, mps, cpu, ... (default: cuda if available, else mps, else cpu)")
    model.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"),
                       help="weights' dtype (default auto: float16 on cuda, else float32)")

    method = p.add_argument_group("method")
    method.add_argument("--steps", type=_positive_int, help="DDIM steps N (default 50)")
    method.add_argument("--guidance", type=float, help="classifier-free guidance scale (default 7.5)")
    method.add_argument("--reassembly-step", type=_steps_or_share,
                        help="reassembly step i_r: a share of N like 0.2, or a step count (default 0.2)")
    method.add_argument("--reinversion-steps", type=_steps_or_share,
                        help="re-inversion steps i_re: a share of N like 0.2, or a step count (default 0.2)")
    method.add_argument("--candidate-batch-size", type=_positive_int,
                        help="candidate chains per UNet call (default: all at once; lower it if memory is short)")
    method.add_argument("--search", choices=("exhaustive", "coarse-to-fine"),
                        help="score every inversion step (exhaustive, the paper's; default), or every few steps and "
                        "then around the best (coarse-to-fine: about a third of the work, may miss the optimum)")
    method.add_argument("--search-stride", type=_positive_int,
                        help="with --search coarse-to-fine: the coarse stride (default about sqrt(N / 2))")
    method.add_argument("--seed", type=int, help="seed of the built-in automatic mask (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    p.set_defaults(func=_cmd_edit)


def _add_export_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export-hub",
        help="write a Hub repo folder (pipeline.py + model card), optionally upload it",
        description="Write a folder ready to upload as a Hugging Face Hub repository: pipeline.py (identical to "
        "pipeline_oir.py, for `custom_pipeline=`) and README.md (the model card with Hub metadata).",
    )
    p.add_argument("directory", help="the folder to write (must be empty or new, unless --overwrite)")
    p.add_argument("--repo-id", help="the Hub repo the card's usage examples name (default: the --push repo, else "
                   "<user>/oir)")
    p.add_argument("--push", metavar="REPO_ID", help="then upload the folder to this Hub repo (needs a login or "
                   "HF_TOKEN, and the network)")
    p.add_argument("--private", action="store_true", help="with --push: create the repo as private")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
    p.set_defaults(func=_cmd_export_hub)


def build_parser() -> argparse.ArgumentParser:
    from oir import __version__

    parser = argparse.ArgumentParser(
        prog="oir",
        description="Object-aware Inversion and Reassembly (OIR, ICLR 2024) for Hugging Face diffusers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_edit_parser(subparsers)
    _add_export_parser(subparsers)
    _register_bench(subparsers)
    return parser


def _register_bench(subparsers) -> None:
    """``oir bench`` comes from ``oir.bench.register(subparsers)`` when that module exists."""
    import importlib
    import importlib.util

    if importlib.util.find_spec("oir.bench") is None:
        return
    try:
        bench = importlib.import_module("oir.bench")
    except Exception as error:  # a broken optional module must not take `oir edit` down with it
        print(f"oir: warning: `oir bench` is unavailable: {type(error).__name__}: {error}", file=sys.stderr)
        return
    register = getattr(bench, "register", None)
    if callable(register):
        register(subparsers)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``oir`` console script; returns the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.command_line = ["oir", *argv]
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        status = func(args)
    except CLIError as error:
        print(f"oir: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("oir: interrupted", file=sys.stderr)
        return 130
    return 0 if status is None else int(status)


# ----------------------------------------------------------------------------------------------------------------------
# oir edit
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class EditJob:
    """One edit to run: from the command line, or one ``oir.data.EditRecord`` of a spec."""

    id: str
    image_path: str
    source_prompt: str
    target_prompt: str
    edits: list | None = None  # oir.Edit objects, or None for the prompts' word diff
    mask_files: list[str] | None = None  # mask files (one per edit) given on the command line
    record: Any = None  # the spec's EditRecord, whose masks it loads itself
    options: dict = field(default_factory=dict)  # the spec's options (call arguments and `seed`)
    in_collection: bool = False  # one of several records of a spec: its outputs go to <out>/<id>

    @property
    def has_masks(self) -> bool:
        return bool(self.mask_files) or (self.record is not None and self.record.masks is not None)

    def describe_masks(self) -> list[str] | None:
        if self.mask_files:
            return [os.path.abspath(m) for m in self.mask_files]
        if self.record is not None and self.record.masks is not None:
            return [os.path.abspath(m) if isinstance(m, (str, os.PathLike)) else type(m).__name__
                    for m in self.record.masks]
        return None

    def load_masks(self):
        if self.mask_files:
            return _load_masks(self.mask_files)
        if self.record is not None and self.record.masks is not None:
            try:
                return self.record.load_masks()
            except (OSError, ValueError) as error:
                raise CLIError(f"record {self.id!r}: cannot read its masks: {error}") from None
        return None


def _say(args, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


def _jobs_from_args(args) -> list[EditJob]:
    if args.spec:
        if args.image or args.source or args.target or args.edit or args.mask:
            raise CLIError("--spec takes the image, prompts, edits and masks from the spec file: do not also pass "
                           "IMAGE, --source, --target, --edit or --mask")
        return _jobs_from_spec(args.spec, args.ids)
    if args.ids:
        raise CLIError("--id selects records of a --spec file")
    missing = [name for name, value in (("IMAGE", args.image), ("--source", args.source), ("--target", args.target))
               if not value]
    if missing:
        raise CLIError(f"missing {', '.join(missing)} (or pass --spec FILE)")
    if not os.path.isfile(args.image):
        raise CLIError(f"IMAGE: no such file: {args.image}")
    edits = None
    if args.edit:
        from oir import Edit

        edits = [Edit(source, target) for source, target in args.edit]
    if args.mask:
        if args.edit and len(args.mask) != len(args.edit):
            raise CLIError(f"--mask: got {len(args.mask)} masks for {len(args.edit)} edits (one --mask per --edit)")
    stem = os.path.splitext(os.path.basename(args.image))[0]
    return [EditJob(stem, args.image, args.source, args.target, edits, list(args.mask) if args.mask else None)]


def _jobs_from_spec(path: str, ids: Sequence[str] | None) -> list[EditJob]:
    if not os.path.isfile(path):
        raise CLIError(f"--spec: no such file: {path}")
    try:
        from oir.data import load_spec
    except ImportError as error:
        raise CLIError(f"--spec needs `oir.data.load_spec`, which could not be imported ({error})") from None
    try:
        records = load_spec(path)
    except (ValueError, OSError) as error:  # oir.data.DatasetError lists every bad field
        raise CLIError(f"--spec {path}: {error}") from None
    jobs = [
        EditJob(record.id, os.fspath(record.image), record.source_prompt, record.target_prompt,
                None if record.edits is None else list(record.edits), None, record, dict(record.options))
        for record in records
    ]
    if ids:
        unknown = sorted(set(ids) - {job.id for job in jobs})
        if unknown:
            raise CLIError(f"--id: no record {', '.join(map(repr, unknown))} in {path} (it has: "
                           f"{', '.join(job.id for job in jobs)})")
        jobs = [job for job in jobs if job.id in ids]
    for job in jobs:
        job.in_collection = len(records) > 1  # outputs go to <out>/<id>, even when --id picks one record
    if not jobs:
        raise CLIError(f"--spec {path} holds no records")
    return jobs


def _settings(args, job: EditJob) -> tuple[dict, dict]:
    """(CLI settings, call keyword arguments): command-line flags over the spec's options over the defaults."""
    import inspect

    from oir import OIRPipeline

    options = dict(job.options)
    for flag, keyword in CALL_FLAGS.items():  # a spec may use the CLI names too
        if flag in options and flag != keyword:
            options.setdefault(keyword, options.pop(flag))
    settings = {
        "seed": 0,
        "resolution": TINY_RESOLUTION if args.tiny_random else DEFAULT_RESOLUTION,
        "auto_mask": None,
        "model": DEFAULT_MODEL,
        "clip": DEFAULT_CLIP,
        "detector": None,
        "sam": None,
        "device": None,
        "dtype": "auto",
    }
    for name in (*SPEC_SETTINGS, *CLI_SETTINGS):
        if name in SPEC_SETTINGS and name in options:
            settings[name] = options.pop(name)
        if getattr(args, name, None) is not None:
            settings[name] = getattr(args, name)

    accepted = set(inspect.signature(OIRPipeline.__call__).parameters) - {"self"}
    unknown = sorted(set(options) - accepted)
    reserved = sorted(set(options) & set(RESERVED_CALL_ARGS))
    if reserved:
        raise CLIError(f"record {job.id!r}: the spec option(s) {', '.join(reserved)} are set by `oir edit` itself")
    if unknown:
        raise CLIError(f"record {job.id!r}: unknown spec option(s) {', '.join(unknown)}; options are OIRPipeline "
                       f"arguments ({', '.join(sorted(accepted - set(RESERVED_CALL_ARGS)))}) or "
                       f"{', '.join(SPEC_SETTINGS)}")
    call = {**CALL_DEFAULTS, **options}
    for flag, keyword in CALL_FLAGS.items():
        if getattr(args, flag, None) is not None:
            call[keyword] = getattr(args, flag)
    return settings, call


def _output_folder(args, job: EditJob) -> str:
    if not args.out:
        return os.path.join("outputs", job.id)
    return os.path.join(args.out, job.id) if job.in_collection else args.out


def _check_output(folder: str, overwrite: bool) -> None:
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise CLIError(f"--out: {folder} exists and is not a folder")
    if overwrite or not os.path.isdir(folder):
        return
    existing = sorted(name for name in os.listdir(folder) if name in RUN_FILES or EDIT_FILE_PATTERN.match(name))
    if existing:
        raise CLIError(f"--out: {folder} already holds the output of an earlier run ({', '.join(existing[:4])}"
                       f"{', ...' if len(existing) > 4 else ''}); pass --overwrite to replace it, or choose another "
                       "--out")


def _load_image(path: str, resolution: int):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except (OSError, UnidentifiedImageError) as error:
        raise CLIError(f"cannot read the image {path}: {error}") from None
    width, height = image.size
    if resolution:
        scale = resolution / max(width, height)
        width, height = width * scale, height * scale
    size = (max(8, int(round(width / 8)) * 8), max(8, int(round(height / 8)) * 8))
    if size != image.size:
        image = image.resize(size, Image.LANCZOS)
    return image


def _load_masks(paths: Sequence[str]):
    from PIL import Image, UnidentifiedImageError

    masks = []
    for path in paths:
        if not os.path.isfile(path):
            raise CLIError(f"--mask: no such file: {path}")
        try:
            with Image.open(path) as opened:
                masks.append(opened.convert("L"))
        except (OSError, UnidentifiedImageError) as error:
            raise CLIError(f"--mask: cannot read {path}: {error}") from None
    return masks


def _device_and_dtype(device: str | None, dtype: str):
    import torch

    if device is None:
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    try:
        torch_device = torch.device(device)
    except RuntimeError as error:
        raise CLIError(f"--device: {error}") from None
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {device}: CUDA is not available on this machine")
    if dtype in (None, "auto"):
        dtype = "float16" if torch_device.type == "cuda" else "float32"
    return torch_device, getattr(torch, dtype)


def _looks_like_path(name: str) -> bool:
    return (name.startswith((".", "/", "~", "\\")) or os.path.isabs(name) or name.count("/") > 1
            or (os.sep != "/" and os.sep in name))


def _check_location(name: str, flag: str) -> str:
    """Fails early on a local folder that does not exist; returns 'local' or 'hub'."""
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        return "local"
    if os.path.exists(expanded):
        raise CLIError(f"{flag}: {name} is a file, not a model folder or a Hub id")
    if _looks_like_path(name) or not re.fullmatch(r"[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?", name):
        raise CLIError(f"{flag}: the local folder {name} does not exist (and it is not a Hub id like "
                       f"'{DEFAULT_MODEL}')")
    return "hub"


def _check_cached(name: str, kind: str, filename: str, flag: str) -> None:
    """Offline, a Hub model must already be in the cache: say so before loading anything."""
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.errors import LocalEntryNotFoundError

    if kind != "hub" or not constants.HF_HUB_OFFLINE:
        return
    if not isinstance(try_to_load_from_cache(name, filename), str):
        raise _loading_error(flag, name, kind, LocalEntryNotFoundError(f"{filename} of {name} is not in the cache"))


def _loading_error(flag: str, name: str, kind: str, error: BaseException) -> CLIError:
    """A clear message for a model that could not be loaded: missing download, missing folder, or bad content."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if kind == "local":
        return CLIError(f"{flag}: the local folder {name} could not be loaded as a model: {detail}")
    if isinstance(error, GatedRepoError):
        return CLIError(f"{flag}: {name} is a gated Hub repo: accept its terms on https://huggingface.co/{name} and "
                        "log in (`hf auth login`) or set HF_TOKEN")
    if isinstance(error, RepositoryNotFoundError):
        return CLIError(f"{flag}: {name} was not found on the Hub (and no local folder has that name): check the "
                        "spelling, or log in (`hf auth login`) for a private repo")
    if isinstance(error, RevisionNotFoundError):
        return CLIError(f"{flag}: {name}: {detail}")
    offline = bool(constants.HF_HUB_OFFLINE)
    text = str(error).lower()
    if isinstance(error, LocalEntryNotFoundError) or offline or any(
        word in text for word in ("connect", "offline", "cached", "cache", "network", "resolve")
    ):
        reason = "HF_HUB_OFFLINE=1 is set" if offline else "the Hub could not be reached"
        return CLIError(f"{flag}: {name} is neither a local folder nor a downloaded Hub model (it is not in the "
                        f"local Hugging Face cache), and {reason}: download it once online (`hf download {name}`), "
                        f"or pass the path of a local folder. ({detail})")
    return CLIError(f"{flag}: could not load {name} from the Hub: {detail}")


def _hub_errors() -> tuple:
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    return (OSError, ValueError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError)


def _dtype_keyword() -> str:
    """diffusers renamed ``from_pretrained``'s ``torch_dtype`` to ``dtype`` (the old name warns); use what it has."""
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"


def load_pipeline(settings: dict, tiny_random: bool, device, dtype, quiet: bool = False):
    """The OIRPipeline the settings name (or the tiny random one), on ``device`` in ``dtype``."""
    from oir import OIRPipeline

    if tiny_random:
        from oir.testing import tiny_components

        pipe = OIRPipeline(**tiny_components(seed=0))
    else:
        from transformers import CLIPModel, CLIPProcessor

        model_kind = _check_location(settings["model"], "--model")
        clip_kind = _check_location(settings["clip"], "--clip")
        _check_cached(settings["model"], model_kind, "model_index.json", "--model")
        _check_cached(settings["clip"], clip_kind, "config.json", "--clip")
        try:
            clip_model = CLIPModel.from_pretrained(os.path.expanduser(settings["clip"]))
            clip_processor = CLIPProcessor.from_pretrained(os.path.expanduser(settings["clip"]))
        except _hub_errors() as error:
            raise _loading_error("--clip", settings["clip"], clip_kind, error) from None
        try:
            pipe = OIRPipeline.from_pretrained(
                os.path.expanduser(settings["model"]), clip_model=clip_model.to(dtype=dtype),
                clip_processor=clip_processor, **{_dtype_keyword(): dtype},
            )
        except _hub_errors() as error:
            raise _loading_error("--model", settings["model"], model_kind, error) from None
    if tiny_random and dtype != pipe.unet.dtype:
        pipe = pipe.to(dtype=dtype)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=quiet, leave=False)
    return pipe


def load_mask_generator(settings: dict, device, dtype):
    """``oir.masks.GroundedSAM`` from the ``--detector`` / ``--sam`` settings."""
    try:
        from oir.masks import DEFAULT_DETECTOR, DEFAULT_SAM, GroundedSAM
    except ImportError as error:
        raise CLIError(f"--auto-mask grounded-sam needs `oir.masks` and its dependencies ({error}); "
                       "pip install 'oir-diffusers[masks]'") from None
    detector = settings["detector"] or DEFAULT_DETECTOR
    sam = settings["sam"] or DEFAULT_SAM
    detector_kind = _check_location(detector, "--detector")
    sam_kind = "local" if os.path.isfile(os.path.expanduser(sam)) else _check_location(sam, "--sam")
    try:
        return GroundedSAM.from_pretrained(os.path.expanduser(detector), os.path.expanduser(sam), device=device,
                                           torch_dtype=dtype)
    except _hub_errors() as error:
        text = str(error)
        flag, name, kind = ("--sam", sam, sam_kind) if sam in text else ("--detector", detector, detector_kind)
        raise _loading_error(flag, name, kind, error) from None


def _versions() -> dict:
    import diffusers
    import huggingface_hub
    import numpy
    import torch
    import transformers

    from oir import __version__

    return {
        "oir": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "huggingface_hub": huggingface_hub.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return str(value)


def _cmd_edit(args) -> int:
    started = time.perf_counter()
    jobs = _jobs_from_args(args)
    plans = []
    for job in jobs:  # check everything before loading any model
        settings, call = _settings(args, job)
        folder = _output_folder(args, job)
        _check_output(folder, args.overwrite)
        if job.has_masks and settings["auto_mask"] is not None:
            raise CLIError(f"record {job.id!r}: pass either masks (--mask, or the spec's) or --auto-mask, not both")
        masks = job.load_masks()
        plans.append((job, settings, call, folder, masks))

    pipes: dict = {}
    mask_generators: dict = {}
    for job, settings, call, folder, masks in plans:
        device, dtype = _device_and_dtype(settings["device"], settings["dtype"])
        key = (settings["model"], settings["clip"], str(device), str(dtype))
        timings = {}
        if key not in pipes:
            tick = time.perf_counter()
            what = "the tiny random model (its images are noise)" if args.tiny_random else settings["model"]
            _say(args, f"oir: loading {what} on {device} ({str(dtype).replace('torch.', '')})")
            pipes.clear()  # one pipeline in memory at a time
            pipes[key] = load_pipeline(settings, args.tiny_random, device, dtype, quiet=args.quiet)
            timings["load_s"] = round(time.perf_counter() - tick, 3)
        pipe = pipes[key]
        mask_generator = None
        if masks is None and settings["auto_mask"] == "grounded-sam":
            mask_key = (settings["detector"], settings["sam"], str(device))
            if mask_key not in mask_generators:
                tick = time.perf_counter()
                _say(args, "oir: loading Grounded-SAM")
                mask_generators.clear()
                mask_generators[mask_key] = load_mask_generator(settings, device, dtype)
                timings["mask_model_load_s"] = round(time.perf_counter() - tick, 3)
            mask_generator = mask_generators[mask_key]
        _run_job(args, pipe, job, settings, call, folder, masks, mask_generator, timings, device, dtype)
    _say(args, f"oir: done in {time.perf_counter() - started:.1f} s")
    return 0


def _run_job(args, pipe, job: EditJob, settings: dict, call: dict, folder: str, masks, mask_generator,
             timings: dict, device, dtype) -> None:
    import torch

    from oir import viz

    image = _load_image(job.image_path, settings["resolution"])
    generator = torch.Generator(device="cpu").manual_seed(int(settings["seed"]))
    mask_source = "given" if masks is not None else ("grounded-sam" if mask_generator is not None else "builtin")
    _say(args, f"oir: editing {job.image_path} ({image.width}x{image.height}): {job.source_prompt!r} -> "
               f"{job.target_prompt!r}, masks: {mask_source}")
    tick = time.perf_counter()
    try:
        output = pipe(
            image, job.source_prompt, job.target_prompt, edits=job.edits, masks=masks, mask_generator=mask_generator,
            generator=generator, return_candidates=True, **call,
        )
    except ValueError as error:
        raise CLIError(f"record {job.id!r}: {error}") from None
    timings["edit_s"] = round(time.perf_counter() - tick, 3)

    tick = time.perf_counter()
    os.makedirs(folder, exist_ok=True)
    written = {"edited": "edited.png", "input": "input.png"}
    edited = output.images[0]
    edited.save(os.path.join(folder, "edited.png"))
    image.save(os.path.join(folder, "input.png"))
    records = []
    for k, record in enumerate(output.search, start=1):
        files = {}
        if record.mask is not None:
            files["mask"] = f"edit{k}_mask.png"
            record.mask.save(os.path.join(folder, files["mask"]))
        if record.steps:
            files["search_plot"] = f"edit{k}_search.png"
            viz.plot_search(record).save(os.path.join(folder, files["search_plot"]))
            if record.candidates is not None:
                files["candidates"] = f"edit{k}_candidates.png"
                viz.candidate_grid(record).save(os.path.join(folder, files["candidates"]))
            files["figure"] = f"edit{k}_figure.png"
            viz.search_figure(record, image=image, edited=edited).save(os.path.join(folder, files["figure"]))
        records.append({
            "edit": {"source": record.edit.source, "target": record.edit.target,
                     "guided_prompt": record.edit.guided_prompt, "mask_phrase": record.edit.mask_phrase},
            "guided_prompt": record.guided_prompt,
            "optimal_step": int(record.optimal_step),
            "steps": [int(s) for s in record.steps],
            "editing_scores": [float(s) for s in record.editing_scores],
            "non_editing_scores": [float(s) for s in record.non_editing_scores],
            "scores": [float(s) for s in record.scores],
            "files": files,
        })
    timings["plots_s"] = round(time.perf_counter() - tick, 3)

    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": getattr(args, "command_line", None),
        "arguments": _jsonable({k: v for k, v in vars(args).items() if k not in ("func", "command_line")}),
        "id": job.id,
        "image": os.path.abspath(job.image_path),
        "image_size": list(image.size),
        "source_prompt": job.source_prompt,
        "target_prompt": job.target_prompt,
        "masks": job.describe_masks() or mask_source,
        "settings": _jsonable(settings),
        "call": _jsonable(call),
        "model": "tiny-random" if args.tiny_random else settings["model"],
        "clip": "tiny-random" if args.tiny_random else settings["clip"],
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "optimal_steps": [int(s) for s in output.optimal_steps],
        "search": records,
        "files": {**written, "report": "report.json"},
        "timings": timings,
        "versions": _versions(),
    }
    with open(os.path.join(folder, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    _say(args, f"oir: optimal steps {report['optimal_steps']}; wrote {folder}/edited.png and {len(records)} search "
               f"plot(s), report.json")


# ----------------------------------------------------------------------------------------------------------------------
# oir export-hub
# ----------------------------------------------------------------------------------------------------------------------


def _cmd_export_hub(args) -> int:
    from oir import hub

    repo_id = args.repo_id or args.push
    try:
        folder = hub.export_hub_folder(args.directory, repo_id=repo_id, overwrite=args.overwrite)
    except (OSError, ValueError) as error:  # a non-empty folder, a file in the way, no model card, a bad repo id
        raise CLIError(str(error)) from None
    print(f"oir: wrote {folder} (pipeline.py, README.md)")
    if args.push:
        try:
            url = hub.push_to_hub(folder, args.push, private=args.private)
        except _hub_errors() as error:
            raise CLIError(f"--push {args.push}: upload failed: {str(error).strip().splitlines()[0]}") from None
        print(f"oir: uploaded to {url}")
    else:
        target = repo_id or "<user>/oir"
        print(f"oir: upload it with `oir export-hub {args.directory} --overwrite --push {target}`, or "
              f"`hf upload {target} {args.directory} .`")
    return 0
