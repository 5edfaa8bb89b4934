"""Shared pieces of the benchmarks: command line, models, timing, UNet call recording and replay, peak memory and
the report appended to BENCHMARKS.md.

The benchmarks are scripts, not tests: run them from the repository root, e.g. ``python benchmarks/candidates.py``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch


REPO = Path(__file__).resolve().parents[1]
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# madebyollin/taesd's config.json (AutoencoderTiny for SD 1.x latents): the real decoder's cost, random weights.
TAESD_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    encoder_block_out_channels=(64, 64, 64, 64),
    decoder_block_out_channels=(64, 64, 64, 64),
    act_fn="relu",
    latent_channels=4,
    upsampling_scaling_factor=2,
    num_encoder_blocks=(1, 3, 3, 3),
    num_decoder_blocks=(3, 3, 3, 1),
    latent_magnitude=3,
    latent_shift=0.5,
    scaling_factor=1.0,
)
TINY_TAESD_CONFIG = dict(
    TAESD_CONFIG, encoder_block_out_channels=(4, 4, 4, 4), decoder_block_out_channels=(4, 4, 4, 4)
)


def batch_size_arg(value: str) -> int | str | None:
    if value.lower() in ("none", "all"):
        return None
    if value.lower() == "auto":
        return "auto"
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("--batch-size must be a positive integer, 'auto' or 'none'")
    return number


def make_parser(description: str, default_steps: list[int]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--arch", choices=["tiny", "sd15"], default="tiny",
                        help="tiny: the tests' model; sd15: Stable Diffusion 1.5's UNet/VAE/text encoder and CLIP "
                             "ViT-B/16 built from their configs with random weights (the real cost, no weights)")
    parser.add_argument("--pretrained", default=None,
                        help="real weights instead of --arch: a Stable Diffusion 1.x folder or Hub id (e.g. "
                             "CompVis/stable-diffusion-v1-4), with --clip for the search and --taesd as search_vae")
    parser.add_argument("--clip", default="openai/clip-vit-base-patch16", help="search CLIP with --pretrained")
    parser.add_argument("--taesd", default="madebyollin/taesd", help="search decoder with --pretrained")
    parser.add_argument("--resolution", type=int, default=None,
                        help="image side in pixels (default: 64 tiny, 256 sd15, 512 --pretrained)")
    parser.add_argument("--steps", type=int, nargs="+", default=default_steps, help="values of N")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="default: float16 on CUDA, float32 elsewhere")
    parser.add_argument("--batch-size", type=batch_size_arg, default=None,
                        help="lanes (chains) per UNet call: an integer, 'auto' or 'none' (the paper's splicing, "
                             "all candidates in one batch)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions (the median is reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads on CPU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(REPO / "BENCHMARKS.md"),
                        help="the Markdown file results are appended to")
    parser.add_argument("--no-append", action="store_true", help="print the table only")
    return parser


def setup(args: argparse.Namespace) -> None:
    """Resolves the defaults that depend on the device and pins the CPU threads."""
    args.device = torch.device(args.device)
    if args.dtype is None:
        args.dtype = "float16" if args.device.type == "cuda" else "float32"
    args.torch_dtype = DTYPES[args.dtype]
    args.label = args.pretrained or args.arch  # what the tables call the model
    if args.resolution is None:
        args.resolution = 512 if args.pretrained else 64 if args.arch == "tiny" else 256
    if args.resolution % 8:
        raise SystemExit("--resolution must be a multiple of 8")
    torch.set_num_threads(args.threads)
    if not args.pretrained:  # random weights: never reach for the Hub
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def build_pipeline(args: argparse.Namespace):
    """An `OIRPipeline` of the chosen architecture with random weights (or ``--pretrained`` weights), on
    ``args.device`` in ``args.dtype``."""
    from oir.testing import sd15_components, tiny_components
    from pipeline_oir import OIRPipeline

    if args.pretrained:
        from transformers import CLIPModel, CLIPProcessor

        pipe = OIRPipeline.from_pretrained(
            args.pretrained, clip_model=CLIPModel.from_pretrained(args.clip),
            clip_processor=CLIPProcessor.from_pretrained(args.clip), torch_dtype=args.torch_dtype,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(args.device)
    components = (tiny_components if args.arch == "tiny" else sd15_components)(seed=args.seed)
    pipe = OIRPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(args.device)
    return pipe if args.torch_dtype == torch.float32 else pipe.to(dtype=args.torch_dtype)


def build_search_vae(args: argparse.Namespace):
    """A randomly initialised `AutoencoderTiny`: TAESD's real config for sd15, a small one for the tiny model."""
    from diffusers import AutoencoderTiny

    if args.pretrained:
        return AutoencoderTiny.from_pretrained(args.taesd, torch_dtype=args.torch_dtype).to(args.device)
    torch.manual_seed(args.seed)
    config = TAESD_CONFIG if args.arch == "sd15" else TINY_TAESD_CONFIG
    return AutoencoderTiny(**config).eval().to(args.device, args.torch_dtype)


def example_image(resolution: int, seed: int = 0):
    """The astronaut example photo (``examples/images``) at ``resolution``, or seeded noise if it is missing."""
    import numpy as np
    import PIL.Image

    path = REPO / "examples" / "images" / "astronaut.png"
    if path.exists():
        return PIL.Image.open(path).convert("RGB").resize((resolution, resolution), PIL.Image.BICUBIC)
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray((rng.random((resolution, resolution, 3)) * 255).astype("uint8"))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable, device: torch.device):
    """``(seconds, result)`` of one call, synchronising the device before and after."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def median(values) -> float:
    return statistics.median(values)


class UNetRecorder:
    """Counts the UNet's calls and samples through a forward pre-hook and keeps each call's input shapes and
    timesteps, so that `floor` can replay exactly the same calls with nothing around them."""

    def __init__(self, unet: torch.nn.Module):
        self.unet = unet
        self.calls, self.samples, self.specs = 0, 0, []
        self._handle = unet.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        context = args[2] if len(args) > 2 else kwargs["encoder_hidden_states"]
        self.calls += 1
        self.samples += sample.shape[0]
        timestep = timestep.detach().clone() if torch.is_tensor(timestep) else timestep
        self.specs.append((tuple(sample.shape), sample.dtype, timestep, tuple(context.shape), context.dtype))

    def reset(self) -> "UNetRecorder":
        self.calls, self.samples, self.specs = 0, 0, []
        return self

    def remove(self) -> None:
        self._handle.remove()

    def floor(self, device: torch.device) -> Callable[[], None]:
        """A function running the recorded UNet calls (same batch sizes, timesteps, dtypes; random inputs made up
        front) and nothing else: the floor an implementation doing the same UNet work cannot beat."""
        generator = torch.Generator(device="cpu").manual_seed(0)
        inputs = [
            (
                torch.randn(shape, generator=generator).to(device, dtype),
                timestep.to(device) if torch.is_tensor(timestep) else timestep,
                torch.randn(context_shape, generator=generator).to(device, context_dtype),
            )
            for shape, dtype, timestep, context_shape, context_dtype in self.specs
        ]
        unet = self.unet

        @torch.no_grad()
        def run() -> None:
            for sample, timestep, context in inputs:
                unet(sample, timestep, encoder_hidden_states=context)

        return run


def peak_memory(fn: Callable, device: torch.device):
    """``(result, bytes)``: the peak of memory allocated by PyTorch during ``fn`` above what was allocated before.

    CUDA: `torch.cuda.max_memory_allocated`. CPU: the allocator's running total that the PyTorch profiler records
    with ``profile_memory=True`` (its "Total Allocated" counts from the start of profiling), so model weights and
    other tensors alive before the call are not counted, exactly as on CUDA.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    totals = [
        e["args"]["Total Allocated"]
        for e in events
        if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type", 0) == 0
    ]
    return result, max(totals, default=0)


def machine(args: argparse.Namespace) -> str:
    import diffusers
    import transformers

    if args.device.type == "cuda":
        where = f"{torch.cuda.get_device_name(args.device)} (CUDA {torch.version.cuda})"
    else:
        cpu = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
        where = f"CPU {cpu}, {os.cpu_count()} cores, {args.threads} torch threads"
    load = f", load average {os.getloadavg()[0]:.1f} at start" if hasattr(os, "getloadavg") else ""
    weights = f"weights {args.pretrained}" if getattr(args, "pretrained", None) else f"random weights ({args.arch})"
    return (
        f"{where}{load}; {weights}; Python {platform.python_version()}, torch {torch.__version__}, diffusers "
        f"{diffusers.__version__}, transformers {transformers.__version__}; {args.dtype}"
    )


def command() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def report(args: argparse.Namespace, title: str, body: str, started: float) -> None:
    """Prints ``body`` and appends it to ``args.output`` with the command, machine and versions."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    text = (
        f"\n### {title} ({stamp})\n\n"
        f"Command: `{command()}`  \n"
        f"Machine: {machine(args)}  \n"
        f"Run time: {time.perf_counter() - started:.0f} s\n\n{body}\n"
    )
    print(text)
    if not args.no_append:
        with open(args.output, "a", encoding="utf-8") as f:
            f.write(text)
        print(f"(appended to {args.output})")


def fmt(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}"


def mib(value: float) -> str:
    return f"{value / 2**20:.1f}"
