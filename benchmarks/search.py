"""Benchmark of the coarse-to-fine search: UNet work saved, and how often it picks the exhaustive optimum.

1. Seeded synthetic score curves (no model): ``Se`` rising and ``Sne`` falling with the inversion step (random
   sigmoids) plus Gaussian noise of each level. The coarse-to-fine choice uses the pipeline's own step sets
   (`coarse_search_steps`, `refine_search_steps`) and metric (`search_metric`) on the evaluated steps only.
2. The real pipeline on the tiny model (``--arch tiny``; ``sd15`` works too, slowly): seeded random images and masks,
   two edits each, `OIRPipeline.search` with ``strategy="exhaustive"`` and ``"coarse-to-fine"`` from the same
   inversion, counting the UNet samples of each.

Reported: the share of choices equal to the exhaustive optimum ("hits"), the mean distance in steps, the mean regret
(the exhaustive search's own normalised score ``S`` at its optimum minus at the coarse-to-fine choice, in [0, 1]) and
the guided UNet evaluations (sum of the chains' lengths) against the exhaustive N(N+1)/2.

    python benchmarks/search.py --steps 20 50 --model-steps 20 --images 10
"""

from __future__ import annotations

import time

import numpy as np
import torch

try:
    from . import _common as common
except ImportError:  # run as a script: python benchmarks/search.py
    import _common as common

from pipeline_oir import Edit, coarse_search_steps, default_search_stride, refine_search_steps, search_metric


def coarse_to_fine(steps, editing, non_editing, stride):
    """The choice of ``search="coarse-to-fine"`` from per-step raw scores; returns (evaluated steps, choice)."""
    coarse = coarse_search_steps(steps, stride)
    best = coarse[search_metric([editing[s] for s in coarse], [non_editing[s] for s in coarse])[1]]
    done = sorted(set(coarse) | set(refine_search_steps(steps, best, stride, coarse)))
    return done, done[search_metric([editing[s] for s in done], [non_editing[s] for s in done])[1]]


def synthetic(n: int, noise: float, trials: int, stride: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    steps = list(range(1, n + 1))
    x = np.arange(1, n + 1) / n
    hits, distance, regret, work = 0, [], [], []
    for _ in range(trials):
        rise = 1 / (1 + np.exp(-(x - rng.uniform(0.1, 0.6)) / rng.uniform(0.03, 0.15)))
        fall = -1 / (1 + np.exp(-(x - rng.uniform(0.3, 0.9)) / rng.uniform(0.03, 0.2)))
        editing = dict(zip(steps, rise + noise * rng.standard_normal(n)))
        non_editing = dict(zip(steps, fall + noise * rng.standard_normal(n)))
        scores, best = search_metric([editing[s] for s in steps], [non_editing[s] for s in steps])
        done, choice = coarse_to_fine(steps, editing, non_editing, stride)
        hits += choice == steps[best]
        distance.append(abs(choice - steps[best]))
        regret.append(float(scores[best] - scores[choice - 1]))
        work.append(sum(done))
    full = n * (n + 1) // 2
    return [
        n, stride, noise, trials, f"{100 * hits / trials:.1f}%", common.fmt(np.mean(distance)),
        common.fmt(np.mean(regret), 3), f"{np.mean(work):.0f} / {full}", f"{100 * (1 - np.mean(work) / full):.0f}%",
    ]


def on_model(args, n: int, stride: int) -> tuple[list, list]:
    pipe = common.build_pipeline(args)
    recorder = common.UNetRecorder(pipe.unet)
    size = args.resolution
    source, guided = "a photo of a cat and a ball", ["a photo of a dog and a ball", "a photo of a cat and an apple"]
    edits = [Edit("cat", "dog"), Edit("ball", "apple")]
    rows, totals = [], {"hits": 0, "count": 0, "distance": [], "samples": {"exhaustive": 0, "coarse-to-fine": 0},
                        "seconds": {"exhaustive": 0.0, "coarse-to-fine": 0.0}}
    for index in range(args.images):
        generator = torch.Generator().manual_seed(args.seed + index)
        image = torch.rand(3, size, size, generator=generator)
        masks = []
        for _ in edits:
            top, left = torch.randint(0, size // 2, (2,), generator=generator).tolist()
            mask = torch.zeros(size, size)
            mask[top : top + size // 2, left : left + size // 2] = 1
            masks.append(mask)
        masks = pipe.prepare_masks(masks, size, size)
        inversion = pipe.invert(image, source, num_inference_steps=n)
        reference = pipe.preprocess_image(image)
        chosen = {}
        for strategy in ("exhaustive", "coarse-to-fine"):
            recorder.reset()
            seconds, (records, _) = common.timed(
                lambda: pipe.search(
                    inversion, reference, edits, guided, masks, list(range(1, n + 1)), batch_size=args.batch_size,
                    strategy=strategy, stride=stride,
                ),
                args.device,
            )
            chosen[strategy] = [record.optimal_step for record in records]
            totals["samples"][strategy] += recorder.samples
            totals["seconds"][strategy] += seconds
        for exhaustive, fast in zip(chosen["exhaustive"], chosen["coarse-to-fine"]):
            totals["hits"] += exhaustive == fast
            totals["count"] += 1
            totals["distance"].append(abs(exhaustive - fast))
        rows.append([index, str(chosen["exhaustive"]), str(chosen["coarse-to-fine"])])
    summary = [
        args.label, n, stride, totals["count"], f"{100 * totals['hits'] / totals['count']:.1f}%",
        common.fmt(np.mean(totals["distance"])),
        f"{totals['samples']['coarse-to-fine']} / {totals['samples']['exhaustive']}",
        f"{100 * (1 - totals['samples']['coarse-to-fine'] / totals['samples']['exhaustive']):.0f}%",
        f"{common.fmt(totals['seconds']['coarse-to-fine'])} / {common.fmt(totals['seconds']['exhaustive'])}",
    ]
    return summary, rows


def main() -> None:
    parser = common.make_parser(__doc__.splitlines()[0], default_steps=[20, 50])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.02, 0.05, 0.1, 0.2],
                        help="noise levels of the synthetic scores")
    parser.add_argument("--trials", type=int, default=2000, help="synthetic curves per (N, noise)")
    parser.add_argument("--stride", type=int, default=None, help="coarse stride (default: default_search_stride)")
    parser.add_argument("--model-steps", type=int, default=20, help="N of the model runs (0: skip them)")
    parser.add_argument("--images", type=int, default=10, help="seeded images of the model runs")
    args = parser.parse_args()
    common.setup(args)
    started = time.perf_counter()

    synthetic_rows = []
    for n in args.steps:
        stride = args.stride or default_search_stride(n)
        for noise in args.noise:
            synthetic_rows.append(synthetic(n, noise, args.trials, stride, args.seed))
            print(synthetic_rows[-1], flush=True)
    body = "Synthetic score curves:\n\n" + common.markdown_table(
        ["N", "stride", "noise", "curves", "hits", "mean distance to the optimum (steps)", "mean regret (S)",
         "guided evaluations (coarse-to-fine / exhaustive)", "saved"],
        synthetic_rows,
    )
    if args.model_steps:
        stride = args.stride or default_search_stride(args.model_steps)
        summary, rows = on_model(args, args.model_steps, stride)
        print(summary, flush=True)
        body += "\n\nThe pipeline's search on the model (2 edits per image, random weights, random masks):\n\n"
        body += common.markdown_table(
            ["arch", "N", "stride", "edits", "hits", "mean distance to the optimum (steps)",
             "UNet samples (coarse-to-fine / exhaustive)", "saved", "search time (s, c2f / exhaustive)"],
            [summary],
        )
        body += "\n\nOptimal steps per image (exhaustive vs coarse-to-fine): " + "; ".join(
            f"{row[1]} vs {row[2]}" for row in rows
        )
    common.report(args, f"search: coarse-to-fine vs exhaustive ({args.label})", body, started)


if __name__ == "__main__":
    main()
