"""A Gradio web demo of OIR: upload a photo, type the prompts, draw a mask per edit (or let one be found), and get the
edit, its masks and the search pictures (every candidate, the curves of Se, Sne and S, the chosen step).

    python examples/gradio_app.py                  # Stable Diffusion v1.4 + CLIP ViT-B/16 (downloads them)
    python examples/gradio_app.py --tiny-random    # offline, on a tiny random model (its images are noise)
    python examples/gradio_app.py --auto-mask grounded-sam   # also offer Grounded-SAM masks

On a Hugging Face Space, use this file as ``app.py`` (with the project installed from ``requirements.txt``): it
reads ``OIR_MODEL`` / ``OIR_CLIP`` from the environment and listens where the Space expects.

In Python, :func:`build_demo` turns any :class:`oir.OIRPipeline` into the demo's ``gr.Blocks``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable

import gradio as gr
import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))

MASK_DRAWN = "Drawn: one editor layer per edit"
MASK_BUILTIN = "Built-in (automatic, coarse)"
MASK_GROUNDED = "Grounded-SAM (automatic)"

INTRO = """\
# OIR: Object-aware Inversion and Reassembly

Edit a photo **object by object** ([ICLR 2024](https://arxiv.org/abs/2310.12149)). OIR finds, for every editing pair
(e.g. *coffee → tea*), its own best inversion step with a search over candidate edits, edits each object at its step
and reassembles them with the untouched background.

1. Upload the photo in the editor.
2. Describe it (source prompt) and the result (target prompt).
3. Optionally list the editing pairs, one `source -> target` per line (default: the words that differ).
4. Masks: draw each edit's region on its own layer of the editor (layer 1 = first edit, ...; add layers with the
   layer button), or choose an automatic mask.
5. Press **Edit**. The search pictures show every candidate, the curves of Se, Sne and S and the chosen step.
"""


def parse_edits(text: str | None) -> list[tuple[str, str]] | None:
    """``"coffee -> tea\\nspoon -> fork"`` -> ``[("coffee", "tea"), ("spoon", "fork")]``; blank -> ``None``."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not lines:
        return None
    edits = []
    for line in lines:
        source, arrow, target = line.partition("->")
        if not arrow or not source.strip() or not target.strip():
            raise gr.Error(f"Editing pairs: write one 'source -> target' per line, got {line!r}")
        edits.append((source.strip(), target.strip()))
    return edits


def _fit(image: Image.Image, resolution: int) -> Image.Image:
    """Resize so that the longer side is ``resolution`` and both sides are multiples of 8."""
    width, height = image.size
    scale = resolution / max(width, height) if resolution else 1.0
    size = (max(8, int(round(width * scale / 8)) * 8), max(8, int(round(height * scale / 8)) * 8))
    return image if size == image.size else image.resize(size, Image.LANCZOS)


def _layer_masks(editor_value: dict) -> list[Image.Image]:
    """The editor's non-empty layers as binary "L" masks (painted = 255)."""
    masks = []
    for layer in editor_value.get("layers") or []:
        if layer is None:
            continue
        layer = layer if isinstance(layer, Image.Image) else Image.fromarray(np.asarray(layer))
        if layer.mode in ("RGBA", "LA"):
            painted = np.asarray(layer.getchannel("A")) > 0
        else:
            painted = np.asarray(layer.convert("L")) > 0
        if painted.any():
            masks.append(Image.fromarray(painted.astype(np.uint8) * 255, mode="L"))
    return masks


def _overlay(image: Image.Image, mask: Image.Image) -> Image.Image:
    mask = mask.convert("L").resize(image.size, Image.NEAREST)
    tinted = Image.blend(image, Image.new("RGB", image.size, (214, 39, 40)), 0.5)
    return Image.composite(tinted, image, mask)


def _example_rows(resolution: int) -> list[list[Any]]:
    """The specs of ``examples/`` as demo examples (their masks as editor layers)."""
    import glob
    import tempfile

    try:
        from oir.data import load_spec
    except ImportError:  # pragma: no cover - the project is not installed
        return []
    rows = []
    folder = os.path.join(tempfile.gettempdir(), "oir-demo-examples")
    os.makedirs(folder, exist_ok=True)
    for spec in sorted(glob.glob(os.path.join(HERE, "*.yaml"))):
        for record in load_spec(spec):
            layers = []
            for k, mask in enumerate(record.load_masks() or []):
                layer = Image.new("RGBA", mask.size, (255, 255, 255, 0))
                layer.putalpha(mask.point(lambda v: 255 if v >= 128 else 0))
                path = os.path.join(folder, f"{record.id}_layer{k + 1}.png")
                layer.save(path)
                layers.append(path)
            edits = "\n".join(f"{e.source} -> {e.target}" for e in record.resolved_edits())
            editor = {"background": os.fspath(record.image), "layers": layers, "composite": None}
            rows.append([editor, record.source_prompt, record.target_prompt, edits,
                         MASK_DRAWN if layers else MASK_BUILTIN])
    return rows


def build_demo(
    pipe,
    mask_generator: Callable | None = None,
    resolution: int = 512,
    default_steps: int = 50,
    max_steps: int = 100,
    examples: bool = True,
    title: str = "OIR image editing",
) -> gr.Blocks:
    """The demo's ``gr.Blocks`` around an :class:`oir.OIRPipeline`.

    Args:
        pipe: the pipeline (with its CLIP model for the search).
        mask_generator: an optional ``(image, phrases) -> masks`` callable (e.g. ``oir.masks.GroundedSAM``), offered
            as an automatic mask.
        resolution: photos are resized so that their longer side has this many pixels (multiples of 8).
        default_steps, max_steps: the DDIM steps slider.
        examples: show the photos and specs of ``examples/`` as clickable examples.
    """
    from oir import viz

    if not 1 <= default_steps <= max_steps:
        raise ValueError(f"`default_steps` must be in 1..max_steps ({max_steps}), got {default_steps}")
    mask_choices = [MASK_DRAWN, MASK_BUILTIN] + ([MASK_GROUNDED] if mask_generator is not None else [])

    def edit(editor_value, source_prompt, target_prompt, edits_text, mask_mode, steps, guidance, reassembly,
             reinversion, seed, progress=gr.Progress(track_tqdm=True)):
        import torch

        if not editor_value or editor_value.get("background") is None:
            raise gr.Error("Upload a photo in the editor first.")
        if not (source_prompt or "").strip() or not (target_prompt or "").strip():
            raise gr.Error("Type both the source prompt (the photo) and the target prompt (the edit).")
        progress(0.0, desc="Preparing")
        background = editor_value["background"]
        background = background if isinstance(background, Image.Image) else Image.fromarray(np.asarray(background))
        image = _fit(background.convert("RGB"), resolution)
        edits = parse_edits(edits_text)
        kwargs: dict[str, Any] = {}
        if mask_mode == MASK_DRAWN:
            masks = _layer_masks(editor_value)
            if not masks:
                raise gr.Error("Draw each edit's region on its own editor layer, or choose an automatic mask.")
            expected = len(edits) if edits is not None else None
            if expected is not None and len(masks) != expected:
                raise gr.Error(f"{len(masks)} drawn layer(s) for {expected} editing pair(s): draw one layer per pair.")
            kwargs["masks"] = masks
        elif mask_mode == MASK_GROUNDED:
            if mask_generator is None:
                raise gr.Error("Grounded-SAM is not loaded in this demo.")
            kwargs["mask_generator"] = mask_generator
        steps = int(steps)
        progress(0.05, desc="Editing (inversion, candidates, search, reassembly)")
        try:
            output = pipe(
                image, source_prompt.strip(), target_prompt.strip(), edits=edits, num_inference_steps=steps,
                guidance_scale=float(guidance), reassembly_step=float(reassembly), reinversion_steps=float(reinversion),
                generator=torch.Generator().manual_seed(int(seed)), return_candidates=True, **kwargs,
            )
        except ValueError as error:
            raise gr.Error(str(error))
        progress(0.9, desc="Drawing the search")
        edited = output.images[0]
        masks_out, figures, summary = [], [], []
        for record in output.search:
            label = f"{record.edit.source} → {record.edit.target}"
            if record.mask is not None:
                masks_out.append((_overlay(image, record.mask), f"{label}: mask"))
            if record.steps:
                figure = viz.search_figure(record, image=image, edited=edited)
                figures.append((figure, f"{label}: i* = {record.optimal_step}"))
            summary.append({
                "edit": {"source": record.edit.source, "target": record.edit.target},
                "guided_prompt": record.guided_prompt,
                "optimal_step": int(record.optimal_step),
                "steps": [int(s) for s in record.steps],
                "scores": [round(float(s), 4) for s in record.scores],
            })
        result = {"optimal_steps": [int(s) for s in output.optimal_steps], "num_inference_steps": steps,
                  "search": summary}
        return edited, masks_out, figures, result

    with gr.Blocks(title=title) as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=1):
                editor = gr.ImageEditor(
                    label="Photo (background) and masks (one layer per edit)",
                    type="pil",
                    image_mode="RGBA",
                    sources=("upload", "clipboard"),
                    layers=gr.LayerOptions(allow_additional_layers=True, layers=["Edit 1"]),
                    brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"),
                    transforms=(),
                    height=520,
                )
                source = gr.Textbox(label="Source prompt (describes the photo)",
                                    placeholder="a cup of coffee with a spoon on a saucer on a wooden table")
                target = gr.Textbox(label="Target prompt (describes the edit)",
                                    placeholder="a cup of tea with a fork on a saucer on a marble table")
                edits_box = gr.Textbox(label="Editing pairs, one 'source -> target' per line (optional)", lines=3,
                                       placeholder="coffee -> tea\nspoon -> fork\nwooden table -> marble table")
                mask_mode = gr.Radio(mask_choices, value=MASK_DRAWN, label="Masks")
                with gr.Accordion("Settings", open=False):
                    steps = gr.Slider(1, max_steps, value=default_steps, step=1, label="DDIM steps N")
                    guidance = gr.Slider(1.0, 15.0, value=7.5, step=0.5, label="Guidance scale")
                    reassembly = gr.Slider(0.0, 0.5, value=0.2, step=0.05, label="Reassembly step (share of N)")
                    reinversion = gr.Slider(0.0, 0.5, value=0.2, step=0.05, label="Re-inversion steps (share of N)")
                    seed = gr.Number(value=0, precision=0, label="Seed (built-in mask)")
                run = gr.Button("Edit", variant="primary")
            with gr.Column(scale=1):
                edited = gr.Image(label="Edited", type="pil", format="png")
                masks_gallery = gr.Gallery(label="Masks", columns=3, height=260, format="png")
                result = gr.JSON(label="Optimal inversion steps and scores")
        figures = gr.Gallery(label="Search: input, mask, edit, the curves of Se, Sne and S, candidates", columns=1,
                             height="auto", format="png")
        inputs = [editor, source, target, edits_box, mask_mode, steps, guidance, reassembly, reinversion, seed]
        run.click(edit, inputs=inputs, outputs=[edited, masks_gallery, figures, result], api_name="edit")
        if examples:
            rows = _example_rows(resolution)
            if rows:
                gr.Examples(rows, inputs=inputs[:5], label="Example photos (public domain, from scikit-image)")
    return demo


def load_pipeline(args):
    import torch

    from oir import OIRPipeline

    if args.tiny_random:
        from oir.testing import tiny_components

        return OIRPipeline(**tiny_components(seed=0))
    from transformers import CLIPModel, CLIPProcessor

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    pipe = OIRPipeline.from_pretrained(
        args.model,
        clip_model=CLIPModel.from_pretrained(args.clip).to(dtype=dtype),
        clip_processor=CLIPProcessor.from_pretrained(args.clip),
        torch_dtype=dtype,
    )
    return pipe.to(device)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="OIR Gradio demo")
    parser.add_argument("--model", default=os.environ.get("OIR_MODEL", "CompVis/stable-diffusion-v1-4"),
                        help="Stable Diffusion 1.x Hub id or folder")
    parser.add_argument("--clip", default=os.environ.get("OIR_CLIP", "openai/clip-vit-base-patch16"),
                        help="CLIP of the search metric: Hub id or folder")
    parser.add_argument("--tiny-random", action="store_true", help="tiny random model, offline (images are noise)")
    parser.add_argument("--auto-mask", choices=("grounded-sam",), help="also offer Grounded-SAM masks (downloads "
                        "GroundingDINO and SAM)")
    parser.add_argument("--device", help="cuda, cpu, ... (default: cuda if available)")
    parser.add_argument("--steps", type=int, help="default DDIM steps (default 50, with --tiny-random 10)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link")
    args = parser.parse_args(argv)

    pipe = load_pipeline(args)
    mask_generator = None
    if args.auto_mask == "grounded-sam":
        from oir.masks import GroundedSAM

        mask_generator = GroundedSAM.from_pretrained(device=pipe.device)
    demo = build_demo(
        pipe,
        mask_generator=mask_generator,
        resolution=64 if args.tiny_random else 512,
        default_steps=args.steps or (10 if args.tiny_random else 50),
    )
    demo.queue(max_size=8).launch(server_name=args.host, server_port=args.port, share=args.share)


if __name__ == "__main__":
    sys.exit(main())
