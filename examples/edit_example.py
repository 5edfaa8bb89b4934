"""Runs OIR on the records of an edit spec with the Python API, and saves the edit and its search figures.

    python examples/edit_example.py examples/coffee.yaml                 # SD v1.4 + CLIP ViT-B/16 (downloads them)
    python examples/edit_example.py examples/coffee.yaml --tiny-random   # offline, tiny random model (noise images)

It is the script form of ``oir edit --spec``: read the spec with ``oir.data.load_spec``, load the pipeline with
``OIRPipeline.from_pretrained``, call it with each record's image, prompts, edits, masks and options, and draw the
search with ``oir.viz``.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from transformers import CLIPModel, CLIPProcessor

from oir import OIRPipeline, viz
from oir.data import load_spec


def load_pipeline(model: str, clip: str, device: str, tiny_random: bool) -> OIRPipeline:
    if tiny_random:
        from oir.testing import tiny_components

        return OIRPipeline(**tiny_components(seed=0)).to(device)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    pipe = OIRPipeline.from_pretrained(
        model,  # a Hub id or a local folder of a Stable Diffusion 1.x pipeline
        clip_model=CLIPModel.from_pretrained(clip).to(dtype=dtype),  # the search metric's CLIP (paper: ViT-B/16)
        clip_processor=CLIPProcessor.from_pretrained(clip),
        torch_dtype=dtype,
    )
    return pipe.to(device)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="an edit spec (YAML), e.g. examples/coffee.yaml")
    parser.add_argument("--out", default=os.path.join("outputs", "examples"), help="output folder")
    parser.add_argument("--model", default="CompVis/stable-diffusion-v1-4", help="Stable Diffusion 1.x id or folder")
    parser.add_argument("--clip", default="openai/clip-vit-base-patch16", help="CLIP id or folder for the search")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, help="override the spec's num_inference_steps")
    parser.add_argument("--tiny-random", action="store_true",
                        help="a tiny random model instead (offline smoke test: 128x128 images of noise)")
    parser.add_argument("--overwrite", action="store_true", help="replace earlier outputs")
    args = parser.parse_args(argv)

    records = load_spec(args.spec)
    pipe = load_pipeline(args.model, args.clip, args.device, args.tiny_random)
    for record in records:
        folder = os.path.join(args.out, record.id)
        if os.path.exists(os.path.join(folder, "edited.png")) and not args.overwrite:
            print(f"{folder} holds an earlier result: pass --overwrite to replace it", file=sys.stderr)
            return 1
        kwargs = record.pipeline_kwargs()  # image, prompts, edits, masks and the spec's options
        seed = record.options.get("seed", 0)
        if args.tiny_random:
            kwargs["image"] = kwargs["image"].resize((128, 128))  # small and quick; masks are resized for us
        if args.steps:
            kwargs["num_inference_steps"] = args.steps
        kwargs.update(generator=torch.Generator().manual_seed(seed), return_candidates=True)
        output = pipe(**kwargs)

        os.makedirs(folder, exist_ok=True)
        edited = output.images[0]
        edited.save(os.path.join(folder, "edited.png"))
        for k, search in enumerate(output.search, start=1):
            figure = viz.search_figure(search, image=kwargs["image"], edited=edited)
            figure.save(os.path.join(folder, f"edit{k}_figure.png"))
            print(f"{record.id}: {search.edit.source!r} -> {search.edit.target!r}: optimal inversion step "
                  f"{search.optimal_step} of {len(search.steps)} searched")
        print(f"{record.id}: wrote {folder}/edited.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
