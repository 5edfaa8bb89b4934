"""Benchmark of stage 2, the candidates: for each N, three ways to get the N clean candidate latents of one edit.

* ``serial``: the naive loop, every chain alone (one CFG UNet call per step, `DDIMScheduler.step`), N(N+1)/2 calls;
* ``ours``: `OIRPipeline.generate_candidates` (spliced chains, ``--batch-size`` lanes per call);
* ``floor``: exactly the UNet calls ``ours`` made (same batch sizes, timesteps and dtypes, inputs made up front) and
  nothing else; ``ours / floor`` is the overhead of everything around the UNet.

Timings are medians over ``--repeats`` round-robin repetitions after a warm-up, so that the ratios come from one run
on the same (possibly noisy) machine. The peak memory is what PyTorch allocates during one call above what was
allocated before it (CUDA: `max_memory_allocated`; CPU: the profiler's allocation total).

    python benchmarks/candidates.py --arch tiny --steps 10 20 50
    python benchmarks/candidates.py --arch sd15 --resolution 256 --steps 10 --repeats 1          # CPU
    python benchmarks/candidates.py --arch sd15 --resolution 512 --device cuda --dtype float16    # GPU
"""

from __future__ import annotations

import time

import torch

try:
    from . import _common as common
except ImportError:  # run as a script: python benchmarks/candidates.py
    import _common as common

SOURCE = "a photo of an astronaut in a white space suit"
GUIDED = "a photo of a robot in a white space suit"


@torch.no_grad()
def serial_candidates(pipe, inversion, prompt: str, guidance_scale: float = 7.5) -> torch.Tensor:
    """The naive way (as in the authors' code): every chain alone, one CFG UNet call per step, `DDIMScheduler.step`."""
    from diffusers import DDIMScheduler

    n = inversion.num_inference_steps
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(n)
    device, dtype = pipe._execution_device, pipe.unet.dtype
    cond, uncond = pipe.encode_prompt([prompt, inversion.prompt]).chunk(2)
    context = torch.cat([uncond, cond])
    results = []
    for i in range(1, n + 1):
        z = inversion.latents[i : i + 1].to(device, dtype)
        for t in scheduler.timesteps[n - i :]:
            eps_uncond, eps_cond = pipe.unet(torch.cat([z, z]), t, encoder_hidden_states=context).sample.chunk(2)
            z = scheduler.step(eps_uncond + guidance_scale * (eps_cond - eps_uncond), t, z).prev_sample
        results.append(z[0])
    return torch.stack(results)


def main() -> None:
    parser = common.make_parser(__doc__.splitlines()[0], default_steps=[10, 20, 50])
    parser.add_argument("--no-serial", action="store_true", help="skip the serial loop (slow on big models)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory run of ours")
    parser.add_argument("--serial-memory", action="store_true",
                        help="also measure the serial loop's peak memory (one more serial run; default on tiny)")
    parser.add_argument("--memory-only", action="store_true",
                        help="only one untimed run of ours per N, for its peak memory and UNet calls")
    args = parser.parse_args()
    common.setup(args)
    started = time.perf_counter()
    pipe = common.build_pipeline(args)
    image = common.example_image(args.resolution, args.seed)
    recorder = common.UNetRecorder(pipe.unet)

    rows, checks = [], []
    for n in args.steps:
        inversion = pipe.invert(image, SOURCE, num_inference_steps=n)

        def ours():
            return pipe.generate_candidates(inversion, GUIDED, batch_size=args.batch_size)

        if args.memory_only:
            recorder.reset()
            peak = common.peak_memory(ours, args.device)[1]
            batch = max(spec[0][0] for spec in recorder.specs)
            rows.append([n, "ours", "", recorder.calls, recorder.samples, batch, common.mib(peak), "", "", ""])
            print(rows[-1], flush=True)
            continue
        recorder.reset()
        spliced = ours()  # warm-up, and the UNet calls the floor replays
        calls, samples = recorder.calls, recorder.samples
        largest = max(spec[0][0] for spec in recorder.specs)
        floor = recorder.floor(args.device)
        floor()  # warm-up
        methods = {"ours": ours, "floor": floor}
        if not args.no_serial:
            methods = {"serial": lambda: serial_candidates(pipe, inversion, GUIDED), **methods}
        times = {name: [] for name in methods}
        serial_counts, difference = None, float("nan")
        for _ in range(args.repeats):
            for name, fn in methods.items():
                recorder.reset()
                seconds, result = common.timed(fn, args.device)
                times[name].append(seconds)
                if name == "serial" and serial_counts is None:
                    serial_counts = (recorder.calls, recorder.samples)
                    difference = (result.float() - spliced.float()).abs().max().item()
        memory = {}
        if not args.no_memory:
            serial_memory = not args.no_serial and (args.serial_memory or args.arch == "tiny")
            for name in ("ours", "serial") if serial_memory else ("ours",):
                memory[name] = common.peak_memory(methods[name], args.device)[1]

        median = {name: common.median(values) for name, values in times.items()}
        speedup = median["serial"] / median["ours"] if "serial" in median else float("nan")
        overhead = median["ours"] / median["floor"]
        checks.append((n, speedup, overhead))
        counts = {"serial": serial_counts or (0, 0), "ours": (calls, samples), "floor": (calls, samples)}
        batch = {"serial": 2, "ours": largest, "floor": largest}
        for name in methods:
            rows.append([
                n, name, common.fmt(median[name], 3), counts[name][0], counts[name][1], batch[name],
                common.mib(memory[name]) if name in memory else "",
                common.fmt(speedup) if name == "ours" else "",
                common.fmt(overhead) if name == "ours" else "",
                f"{difference:.1e}" if name == "serial" else "",
            ])
        print(rows[-len(methods):], flush=True)

    header = [
        "N", "method", "time (s, median)", "UNet calls", "UNet samples", "largest UNet batch", "peak memory (MiB)",
        "serial / ours", "ours / floor", "max abs diff vs ours",
    ]
    body = common.markdown_table(header, rows)
    if checks:
        body += "\n\n" + "\n".join(
            f"- N={n}: serial/ours = {common.fmt(s)}, ours/floor = {common.fmt(o, 3)}" for n, s, o in checks
        )
    body += (
        f"\n\n{args.label} at {args.resolution}px, --batch-size {args.batch_size}, {args.repeats} repeats; "
        "UNet samples count CFG's doubled batch."
    )
    common.report(args, f"candidates: {args.label}, {args.resolution}px, {args.device.type}", body, started)


if __name__ == "__main__":
    main()
