"""oir.viz: search curves, candidate grid and the whole-edit figure, on hand-made search records."""

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageDraw

from oir import viz


def _record(n=12, optimal=None, candidates=True, flat=False):
    rng = np.random.default_rng(0)
    steps = list(range(1, n + 1))
    editing = [0.2 + 0.01 * i for i in steps] if not flat else [0.3] * n
    non_editing = [-0.002 * i * i for i in steps]
    s = 0.5 * (viz._minmax(editing) + viz._minmax(non_editing))
    optimal = steps[int(np.argmax(s))] if optimal is None else optimal
    mask = Image.new("L", (64, 64))
    ImageDraw.Draw(mask).ellipse([8, 8, 40, 40], fill=255)
    images = None
    if candidates:
        images = [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in steps]
    return SimpleNamespace(
        edit=SimpleNamespace(source="cat", target="tiger"), guided_prompt="a tiger", steps=steps,
        editing_scores=editing, non_editing_scores=non_editing, scores=list(s), optimal_step=optimal, mask=mask,
        candidates=images,
    )


def _count_color(image, rgb, tolerance=20):
    array = np.asarray(image.convert("RGB")).astype(int)
    return int((np.abs(array - np.array(rgb)).max(-1) <= tolerance).sum())


RED = (0xD6, 0x27, 0x28)
BLUE = (0x1F, 0x77, 0xB4)
ORANGE = (0xFF, 0x7F, 0x0E)


def test_normalized_scores_follow_the_search_metric():
    record = _record()
    curves = viz.normalized_scores(record)
    assert curves["editing"].min() == 0 and curves["editing"].max() == 1
    assert curves["non_editing"][0] == 1 and curves["non_editing"][-1] == 0  # -MSE falls with the step
    np.testing.assert_allclose(0.5 * (curves["editing"] + curves["non_editing"]), curves["score"])
    flat = viz.normalized_scores(_record(flat=True))
    assert not flat["editing"].any()  # flat scores normalise to zeros, without dividing by zero


def test_plot_search_is_an_image_of_the_requested_size_with_the_curves_and_the_optimum():
    record = _record()
    image = viz.plot_search(record, size=(640, 400))
    assert image.size == (640, 400) and image.mode == "RGB"
    assert len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) > 50  # not a blank canvas
    assert _count_color(image, BLUE) > 200 and _count_color(image, ORANGE) > 200  # Se and Sne curves
    assert _count_color(image, RED) > 100  # the optimal step's line and star
    moved = viz.plot_search(_record(optimal=2), size=(640, 400))
    assert np.abs(np.asarray(moved, dtype=int) - np.asarray(image, dtype=int)).sum() > 0


def test_plot_search_rejects_bad_records():
    record = _record()
    record.scores = record.scores[:-1]
    with pytest.raises(ValueError, match="scores"):
        viz.plot_search(record)
    with pytest.raises(ValueError, match="size"):
        viz.plot_search(_record(), size=(0, 100))
    with pytest.raises(ValueError, match="steps"):
        viz.plot_search(SimpleNamespace(scores=[]))


def test_candidate_grid_labels_every_candidate_and_frames_the_chosen_one():
    record = _record(n=12, optimal=7)
    grid = viz.candidate_grid(record, columns=4, thumb_size=64, border=4)
    cell_w, cell_h = 64 + 8, 64 + 8 + max(10, 64 // 9) + 8
    assert grid.size == (4 * cell_w, 3 * cell_h)
    array = np.asarray(grid).astype(int)

    def frame_is_red(index):
        x, y = (index % 4) * cell_w, (index // 4) * cell_h
        return (np.abs(array[y + 1, x + 1 : x + cell_w - 1] - RED).max(-1) < 10).all()

    assert frame_is_red(6)  # step 7 is the 7th candidate
    assert not any(frame_is_red(i) for i in range(12) if i != 6)
    thumb = array[cell_h + 4 : cell_h + 4 + 64, 2 * cell_w + 4 : 2 * cell_w + 4 + 64]  # candidate 7 (row 1, col 2)
    np.testing.assert_array_equal(thumb, np.asarray(record.candidates[6]))


def test_candidate_grid_needs_the_candidates():
    with pytest.raises(ValueError, match="return_candidates=True"):
        viz.candidate_grid(_record(candidates=False))
    record = _record()
    with pytest.raises(ValueError, match="candidate images"):
        viz.candidate_grid(record, candidates=record.candidates[:3])


def test_search_figure_shows_input_mask_edit_curves_and_candidates():
    record = _record(n=20, optimal=13)
    image = Image.new("RGB", (64, 64), (30, 160, 60))
    full = viz.search_figure(record, image=image, edited=image, width=1200)
    assert full.width == 1200 and full.mode == "RGB"
    assert _count_color(full, (30, 160, 60), tolerance=3) > 2000  # the input / edited panels
    without = viz.search_figure(_record(n=20, optimal=13, candidates=False), width=1200)
    assert without.height < full.height  # no strip of candidates
    assert _count_color(full, RED) > _count_color(without, RED)  # the chosen candidate's frame


def test_pick_spreads_the_candidates_and_keeps_the_optimum():
    picked = viz._pick(50, 10, 22)
    assert len(picked) == 10 and 22 in picked and picked[0] == 0 and picked[-1] == 49
    assert viz._pick(5, 10, 3) == [0, 1, 2, 3, 4]
