"""Pictures of OIR's search: the score curves, the candidate grid and a whole-edit figure like the paper's Fig. 6.

Every function takes one :class:`~pipeline_oir.OIRSearchRecord` (an item of ``OIRPipelineOutput.search``; any
object with the same fields works) and returns a ``PIL.Image.Image``:

* :func:`plot_search` - the editing score ``Se``, the non-editing score ``Sne`` and the search metric ``S`` over the
  inversion step, with the chosen step marked;
* :func:`candidate_grid` - every candidate edit as a thumbnail labelled with its step and ``S``, the chosen one
  framed (needs the pipeline to be run with ``return_candidates=True``);
* :func:`search_figure` - input, mask, edited result, curves and a strip of candidates in one picture.

Plots use matplotlib's Agg canvas directly (no ``pyplot`` state, no display needed).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

__all__ = ["normalized_scores", "plot_search", "candidate_grid", "search_figure"]

# Colours (matplotlib's tab10): editing score, non-editing score, search metric, chosen step.
SE_COLOR = "#1f77b4"
SNE_COLOR = "#ff7f0e"
S_COLOR = "#111111"
CHOSEN_COLOR = "#d62728"


def _require_matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("oir.viz needs matplotlib: pip install 'oir-diffusers[viz]'") from error
    return Figure, FigureCanvasAgg


def _minmax(values: Sequence[float]) -> np.ndarray:
    """Min-max normalisation as in the search metric: ``(x - min) / (max - min)``, all zeros when flat."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return array
    low, high = np.nanmin(array), np.nanmax(array)
    if not np.isfinite(high - low) or high - low <= 0:
        return np.zeros_like(array)
    return (array - low) / (high - low)


def _check_record(record: Any) -> None:
    for name in ("steps", "editing_scores", "non_editing_scores", "scores", "optimal_step"):
        if not hasattr(record, name):
            raise ValueError(f"`record` must be an OIRSearchRecord (or have its fields); it has no `{name}`.")
    n = len(record.steps)
    if n == 0:
        raise ValueError("`record.steps` is empty: there is no search to show.")
    for name in ("editing_scores", "non_editing_scores", "scores"):
        if len(getattr(record, name)) != n:
            raise ValueError(f"`record.{name}` has {len(getattr(record, name))} values for {n} steps.")


def normalized_scores(record: Any) -> dict:
    """The curves that :func:`plot_search` draws, as arrays.

    Returns a dict with ``steps``, ``editing`` (``Se`` min-max normalised over the searched steps),
    ``non_editing`` (``Sne`` likewise), ``score`` (``S`` as the pipeline reported it) and ``optimal_step``.
    """
    _check_record(record)
    return {
        "steps": np.asarray(record.steps, dtype=np.int64),
        "editing": _minmax(record.editing_scores),
        "non_editing": _minmax(record.non_editing_scores),
        "score": np.asarray(record.scores, dtype=np.float64),
        "optimal_step": int(record.optimal_step),
    }


def _edit_title(record: Any) -> str:
    edit = getattr(record, "edit", None)
    source = getattr(edit, "source", None)
    target = getattr(edit, "target", None)
    if source is None and isinstance(edit, (tuple, list)) and len(edit) == 2:
        source, target = edit
    if source is None:
        return "OIR search"
    return f'"{source}" \u2192 "{target}"'


def _draw_curves(ax, record: Any, title: str | None = None, fontsize: float = 9.0) -> None:
    from matplotlib.ticker import MaxNLocator

    curves = normalized_scores(record)
    steps, best = curves["steps"], curves["optimal_step"]
    marker = "o" if len(steps) <= 30 else None
    ax.plot(steps, curves["editing"], color=SE_COLOR, marker=marker, markersize=3, linewidth=1.4,
            label="$S_e$ editing: CLIP(masked candidate, target)")
    ax.plot(steps, curves["non_editing"], color=SNE_COLOR, marker=marker, markersize=3, linewidth=1.4,
            label="$S_{ne}$ non-editing: \u2212MSE outside the mask")
    ax.plot(steps, curves["score"], color=S_COLOR, linewidth=2.4, label="$S = (S_e + S_{ne})\\,/\\,2$")
    ax.axvline(best, color=CHOSEN_COLOR, linestyle="--", linewidth=1.2)
    matches = np.flatnonzero(steps == best)
    if matches.size:
        best_score = float(curves["score"][matches[0]])
        ax.plot([best], [best_score], marker="*", markersize=14, color=CHOSEN_COLOR, linestyle="none",
                label=f"optimal step $i^*$ = {best} (S = {best_score:.2f})")
    ax.set_xlabel("inversion step $i$ (candidate edited from $z_i$)", fontsize=fontsize)
    ax.set_ylabel("score ($S_e$, $S_{ne}$ min-max normalised)", fontsize=fontsize)
    ax.set_ylim(-0.05, 1.12)
    ax.set_xlim(steps.min() - 0.5, steps.max() + 0.5)
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=fontsize - 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="best", fontsize=fontsize - 1.5, framealpha=0.85)
    ax.set_title(title if title is not None else _edit_title(record), fontsize=fontsize + 1)


def _figure_to_image(fig, canvas) -> Image.Image:
    canvas.draw()
    image = Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")
    fig.clear()
    return image


def plot_search(record: Any, size: tuple[int, int] = (720, 450), dpi: int = 100, title: str | None = None
                ) -> Image.Image:
    """Curves of ``Se``, ``Sne`` and ``S`` over the inversion step, the optimal step marked; a ``size`` RGB image.

    ``Se`` and ``Sne`` are shown min-max normalised over the searched steps (as they enter ``S``), which the
    y-axis label says; ``S`` is the pipeline's own search metric.
    """
    width, height = size
    if width <= 0 or height <= 0:
        raise ValueError(f"`size` must be two positive pixel counts, got {size!r}.")
    Figure, FigureCanvasAgg = _require_matplotlib()
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    _draw_curves(ax, record, title=title)
    fig.tight_layout()
    return _figure_to_image(fig, canvas)


def _to_pil(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    array = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, 0, -1)
    if array.dtype != np.uint8:
        array = np.clip(array * (255.0 if array.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return Image.fromarray(array.squeeze())


def _candidates(record: Any, candidates: Sequence[Any] | None) -> list[Image.Image]:
    candidates = candidates if candidates is not None else getattr(record, "candidates", None)
    if candidates is None:
        raise ValueError(
            "This search record holds no candidate images: run the pipeline with `return_candidates=True`, "
            "or pass `candidates=`."
        )
    candidates = [_to_pil(c).convert("RGB") for c in candidates]
    if len(candidates) != len(record.steps):
        raise ValueError(f"Got {len(candidates)} candidate images for {len(record.steps)} searched steps.")
    return candidates


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def candidate_grid(record: Any, candidates: Sequence[Any] | None = None, columns: int | None = None,
                   thumb_size: int = 128, border: int = 4, background: str = "white") -> Image.Image:
    """All candidate edits as labelled thumbnails (``i`` = inversion step, ``S`` = search metric).

    The chosen candidate (``record.optimal_step``) gets a red frame and a red label. ``candidates`` defaults to
    ``record.candidates``; ``columns`` to at most 10 per row.
    """
    _check_record(record)
    if thumb_size < 16:
        raise ValueError(f"`thumb_size` must be at least 16 pixels, got {thumb_size}.")
    images = _candidates(record, candidates)
    n = len(images)
    columns = min(n, 10) if columns is None else int(columns)
    if columns < 1:
        raise ValueError(f"`columns` must be a positive integer, got {columns}.")
    rows = math.ceil(n / columns)
    font_size = max(10, thumb_size // 9)
    font = _font(font_size)
    label_height = font_size + 8
    cell_w, cell_h = thumb_size + 2 * border, thumb_size + 2 * border + label_height
    grid = Image.new("RGB", (columns * cell_w, rows * cell_h), background)
    draw = ImageDraw.Draw(grid)
    for index, (image, step, score) in enumerate(zip(images, record.steps, record.scores)):
        x, y = (index % columns) * cell_w, (index // columns) * cell_h
        chosen = int(step) == int(record.optimal_step)
        if chosen:
            draw.rectangle([x, y, x + cell_w - 1, y + thumb_size + 2 * border - 1], fill=CHOSEN_COLOR)
        thumb = ImageOps.contain(image, (thumb_size, thumb_size))
        grid.paste(thumb, (x + border + (thumb_size - thumb.width) // 2, y + border + (thumb_size - thumb.height) // 2))
        label = f"i={int(step)}  S={float(score):.2f}" + ("  *" if chosen else "")
        draw.text((x + cell_w / 2, y + thumb_size + 2 * border + label_height / 2), label,
                  fill=CHOSEN_COLOR if chosen else "black", font=font, anchor="mm")
    return grid


def _pick(n: int, keep: int, must: int) -> list[int]:
    """At most ``keep`` indices out of ``range(n)``, evenly spread, always containing ``must``."""
    if n <= keep:
        return list(range(n))
    picked = sorted({int(round(v)) for v in np.linspace(0, n - 1, keep)})
    if must not in picked:
        picked[int(np.argmin([abs(p - must) for p in picked]))] = must
    return sorted(set(picked))


def _mask_overlay(mask: Image.Image, image: Image.Image | None) -> Image.Image:
    mask_l = mask.convert("L")
    if image is None:
        return mask_l.convert("RGB")
    base = image.convert("RGB")
    mask_l = mask_l.resize(base.size, Image.NEAREST)
    tint = Image.new("RGB", base.size, CHOSEN_COLOR)
    overlay = Image.composite(Image.blend(base, tint, 0.5), base, mask_l.point(lambda v: 255 if v >= 128 else 0))
    return overlay


def search_figure(record: Any, image: Any = None, edited: Any = None, max_candidates: int = 10,
                  width: int = 1600, dpi: int = 100) -> Image.Image:
    """One picture of a whole edit's search, like Fig. 6 of the paper.

    Top row: the input ``image`` (if given), the edit's mask (over the input when given), the ``edited`` result
    (if given) and the score curves. Bottom row (when the record holds candidates): up to ``max_candidates``
    candidates spread over the searched steps, always including the chosen one (framed in red).
    """
    _check_record(record)
    if max_candidates < 1:
        raise ValueError(f"`max_candidates` must be a positive integer, got {max_candidates}.")
    Figure, FigureCanvasAgg = _require_matplotlib()
    image = None if image is None else _to_pil(image).convert("RGB")
    edited = None if edited is None else _to_pil(edited).convert("RGB")
    mask = getattr(record, "mask", None)
    panels = []
    if image is not None:
        panels.append(("input", image))
    if mask is not None:
        panels.append(("edit mask", _mask_overlay(_to_pil(mask), image)))
    if edited is not None:
        panels.append(("edited", edited))
    candidates = getattr(record, "candidates", None)
    strip = []
    if candidates is not None:
        images = _candidates(record, candidates)
        steps = [int(s) for s in record.steps]
        best_index = steps.index(int(record.optimal_step)) if int(record.optimal_step) in steps else 0
        strip = [(steps[i], float(record.scores[i]), images[i], steps[i] == int(record.optimal_step))
                 for i in _pick(len(images), max_candidates, best_index)]

    top_units = len(panels) + 2  # the curves take two panel widths
    unit = width / dpi / max(top_units, 1)
    top_height = max(unit, 2.6)
    strip_columns = max(len(strip), 8)  # few candidates: keep the thumbnails small and centred
    bottom_height = (width / dpi / strip_columns) + 0.45 if strip else 0.0
    fig = Figure(figsize=(width / dpi, top_height + bottom_height + 0.5), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    outer = fig.add_gridspec(2 if strip else 1, 1, height_ratios=[top_height, bottom_height] if strip else None)
    top = outer[0].subgridspec(1, len(panels) + 1, width_ratios=[1] * len(panels) + [2])
    for column, (name, picture) in enumerate(panels):
        ax = fig.add_subplot(top[0, column])
        ax.imshow(np.asarray(picture))
        ax.set_title(name, fontsize=10)
        ax.set_axis_off()
    _draw_curves(fig.add_subplot(top[0, len(panels)]), record)
    if strip:
        bottom = outer[1].subgridspec(1, strip_columns)
        offset = (strip_columns - len(strip)) // 2
        for column, (step, score, picture, chosen) in enumerate(strip):
            ax = fig.add_subplot(bottom[0, offset + column])
            ax.imshow(np.asarray(picture))
            ax.set_xticks([])
            ax.set_yticks([])
            color = CHOSEN_COLOR if chosen else "#888888"
            for spine in ax.spines.values():
                spine.set_edgecolor(color)
                spine.set_linewidth(4 if chosen else 0.8)
            ax.set_title(f"i={step}  S={score:.2f}", fontsize=9, color=color if chosen else "black",
                         fontweight="bold" if chosen else "normal")
    fig.suptitle(f"OIR search for {_edit_title(record)}", fontsize=12)
    fig.tight_layout()
    return _figure_to_image(fig, canvas)
