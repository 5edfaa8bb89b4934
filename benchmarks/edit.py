"""Benchmark of a whole OIR edit with 1, 2 and 3 edits, broken down by stage.

Stages (each one's own time, nested calls excluded): inversion (`invert`), candidate denoising (the search's
`_denoise_chains`), candidate decoding (the search's `decode_latents`), CLIP scoring (`editing_scores` and the text
features), reassembly (`reassemble`, all its UNet work included), final decode, and the rest ("other": text encoder,
``Sne``, masks, pre- and post-processing). Every UNet call of the edit is recorded and replayed alone: ``floor`` is
the UNet work the edit cannot avoid, and ``total / floor`` what everything else costs on top.

``--search-vae both`` runs every edit twice: candidates decoded by the full VAE, then by TAESD (`AutoencoderTiny`
with madebyollin/taesd's config for sd15, random weights) passed as ``search_vae``.

    python benchmarks/edit.py --arch tiny --steps 50
    python benchmarks/edit.py --arch sd15 --resolution 256 --steps 10 --edits 2 --repeats 1          # CPU
    python benchmarks/edit.py --arch sd15 --resolution 512 --steps 50 --device cuda --dtype float16   # GPU
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict

import numpy as np
import torch

try:
    from . import _common as common
except ImportError:  # run as a script: python benchmarks/edit.py
    import _common as common

SOURCE = "a photo of an astronaut, a flag and a helmet"
EDITS = [("astronaut", "robot"), ("flag", "tree"), ("helmet", "pumpkin")]
STAGES = [
    "inversion", "candidate denoising", "candidate decoding", "CLIP scoring", "reassembly", "final decode", "other",
]


def boxes(resolution: int) -> list[np.ndarray]:
    """Three disjoint rectangular masks (one per edit)."""
    masks = []
    for top, left, bottom, right in [(0.35, 0.1, 0.95, 0.5), (0.05, 0.55, 0.45, 0.95), (0.55, 0.6, 0.95, 0.95)]:
        mask = np.zeros((resolution, resolution), dtype=bool)
        mask[int(top * resolution) : int(bottom * resolution), int(left * resolution) : int(right * resolution)] = True
        masks.append(mask)
    return masks


class StageTimer:
    """Wraps the pipeline's stage methods on the instance and adds up each stage's exclusive time."""

    def __init__(self, pipe, device: torch.device):
        self.pipe, self.device = pipe, device
        self.times: dict[str, float] = defaultdict(float)
        self._stack: list[list] = []  # [label, children's time]
        self._wrapped = []

    def _label(self, name: str, args, kwargs) -> str | None:
        inside_search = any(frame[0] == "search" for frame in self._stack)
        if name == "_denoise_chains":
            desc = kwargs.get("desc", args[4] if len(args) > 4 else "")
            return "candidate denoising" if inside_search and desc == "OIR candidates" else None
        if name == "decode_latents":
            return "candidate decoding" if inside_search else "final decode"
        return {
            "invert": "inversion", "editing_scores": "CLIP scoring", "_text_features": "CLIP scoring",
            "reassemble": "reassembly", "search": "search",
        }[name]

    def _wrap(self, name: str):
        original = getattr(self.pipe, name)

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            label = self._label(name, args, kwargs)
            if label is None:
                return original(*args, **kwargs)
            common.synchronize(self.device)
            start = time.perf_counter()
            self._stack.append([label, 0.0])
            try:
                return original(*args, **kwargs)
            finally:
                common.synchronize(self.device)
                elapsed = time.perf_counter() - start
                _, children = self._stack.pop()
                self.times[label] += elapsed - children
                if self._stack:
                    self._stack[-1][1] += elapsed

        setattr(self.pipe, name, wrapper)
        self._wrapped.append(name)

    def __enter__(self) -> "StageTimer":
        for name in ("invert", "search", "_denoise_chains", "decode_latents", "editing_scores", "_text_features",
                     "reassemble"):
            self._wrap(name)
        return self

    def __exit__(self, *exc) -> None:
        for name in self._wrapped:
            delattr(self.pipe, name)  # the class's method shows through again

    def breakdown(self, total: float) -> dict[str, float]:
        # The search's own time (Sne, bookkeeping) is not a stage of its own: it ends up in "other".
        stages = {stage: self.times.get(stage, 0.0) for stage in STAGES[:-1]}
        stages["other"] = total - sum(stages.values())
        return stages


def main() -> None:
    parser = common.make_parser(__doc__.splitlines()[0], default_steps=[50])
    parser.add_argument("--edits", type=int, nargs="+", default=[1, 2, 3], choices=[1, 2, 3], help="numbers of edits")
    parser.add_argument("--search-vae", choices=["none", "taesd", "both"], default="both",
                        help="decoder of the candidates: the full VAE, TAESD, or both (two runs per edit)")
    parser.add_argument("--decode-batch-size", type=int, default=8, help="candidates decoded and CLIP-scored at a time")
    parser.add_argument("--search", choices=["exhaustive", "coarse-to-fine"], default="exhaustive")
    parser.add_argument("--no-floor", action="store_true", help="skip the replay of the UNet calls")
    args = parser.parse_args()
    common.setup(args)
    started = time.perf_counter()
    pipe = common.build_pipeline(args)
    taesd = common.build_search_vae(args) if args.search_vae != "none" else None
    decoders = {"none": [("VAE", None)], "taesd": [("TAESD", taesd)], "both": [("VAE", None), ("TAESD", taesd)]}
    image = common.example_image(args.resolution, args.seed)
    masks = boxes(args.resolution)
    recorder = common.UNetRecorder(pipe.unet)

    rows = []
    for n in args.steps:
        for count in args.edits:
            edits = EDITS[:count]
            target = SOURCE
            for source, replacement in edits:
                target = target.replace(source, replacement, 1)
            for decoder_name, search_vae in decoders[args.search_vae]:
                kwargs = dict(
                    edits=edits, masks=masks[:count], num_inference_steps=n, candidate_batch_size=args.batch_size,
                    decode_batch_size=args.decode_batch_size, search=args.search, search_vae=search_vae,
                )
                # Warm-up (a short edit: every model runs once at these shapes).
                pipe(image, SOURCE, target, **dict(kwargs, num_inference_steps=min(n, 4)))
                runs = []
                for _ in range(args.repeats):
                    recorder.reset()
                    with StageTimer(pipe, args.device) as timer:
                        total, out = common.timed(lambda: pipe(image, SOURCE, target, **kwargs), args.device)
                    runs.append((total, timer.breakdown(total)))
                calls, samples = recorder.calls, recorder.samples
                floor_seconds = float("nan")
                if not args.no_floor:
                    floor = recorder.floor(args.device)
                    floor_seconds = common.median([common.timed(floor, args.device)[0] for _ in range(args.repeats)])
                total = common.median([run[0] for run in runs])
                stages = {stage: common.median([run[1][stage] for run in runs]) for stage in STAGES}
                decode_clip = (stages["candidate decoding"] + stages["CLIP scoring"]) / total
                rows.append(
                    [n, count, decoder_name, common.fmt(total)]
                    + [f"{common.fmt(stages[s])} ({100 * stages[s] / total:.1f}%)" for s in STAGES]
                    + [calls, samples, common.fmt(floor_seconds), common.fmt(total / floor_seconds),
                       f"{100 * decode_clip:.1f}%", str(out.optimal_steps)]
                )
                print(rows[-1], flush=True)

    header = (
        ["N", "edits", "search decoder", "total (s)"] + STAGES
        + ["UNet calls", "UNet samples", "UNet floor (s)", "total / floor", "decode + CLIP", "optimal steps"]
    )
    body = common.markdown_table(header, rows)
    body += (
        f"\n\n{args.label} at {args.resolution}px, --batch-size {args.batch_size}, --decode-batch-size "
        f"{args.decode_batch_size}, --search {args.search}, median of {args.repeats} run(s) after a warm-up; stage "
        "times in seconds (share of the total). With one edit there is no reassembly (the optimal candidate is the "
        "result). Random weights: the optimal steps say nothing about quality."
    )
    common.report(args, f"edit: {args.label}, {args.resolution}px, {args.device.type}", body, started)


if __name__ == "__main__":
    main()
