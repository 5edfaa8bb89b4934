"""examples/: the photos, their masks and edit specs, and the example script."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import import_example
from PIL import Image

from oir.data import load_spec
from pipeline_oir import guided_prompts

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SPECS = sorted(EXAMPLES.glob("*.yaml"))



@pytest.fixture(scope="module")
def make_examples():
    return import_example("make_examples")


def test_there_are_examples_of_single_and_multi_object_edits():
    assert {p.stem for p in SPECS} >= {"chelsea", "coffee", "astronaut", "rocket"}
    counts = [len(load_spec(p)[0].edits) for p in SPECS]
    assert 1 in counts and max(counts) >= 3


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_spec_parses_and_its_photo_and_masks_fit(spec):
    (record,) = load_spec(spec)
    assert record.id == spec.stem
    image = record.load_image()
    assert image.size == (512, 512) and image.mode == "RGB"
    guided_prompts(record.source_prompt, record.edits)  # every source phrase is in the source prompt
    masks = record.load_masks()
    assert masks is not None and len(masks) == len(record.edits)
    union = np.zeros((64, 64), dtype=int)
    for mask, path in zip(masks, record.masks):
        raw = np.asarray(Image.open(path))
        assert raw.shape == (512, 512) and set(np.unique(raw)) <= {0, 255}, path  # binary, at the photo's size
        cells = np.asarray(mask.resize((64, 64), Image.BOX)) >= 128  # SD's 8x8 latent cells
        assert 0.005 < cells.mean() < 0.95, path
        union += cells
    assert (union > 1).mean() < 0.01  # the objects' masks (nearly) do not overlap


def test_masks_and_photos_are_reproducible(make_examples):
    for stem, shapes in make_examples.MASKS.items():
        saved = np.asarray(Image.open(EXAMPLES / "masks" / f"{stem}.png"))
        np.testing.assert_array_equal(np.asarray(make_examples.draw_mask(shapes)), saved, err_msg=stem)
    for name in make_examples.PHOTOS:
        saved = np.asarray(Image.open(EXAMPLES / "images" / f"{name}.png"), dtype=float)
        assert np.abs(np.asarray(make_examples.load_photo(name), dtype=float) - saved).mean() < 1.0, name


def test_make_examples_refuses_to_overwrite(make_examples, capsys):
    assert make_examples.main([]) == 1
    assert "--overwrite" in capsys.readouterr().err


def test_license_note_names_every_photo():
    readme = (EXAMPLES / "README.md").read_text()
    assert "public domain" in readme.lower() and "CC0" in readme
    for spec in SPECS:
        assert f"images/{spec.stem}.png" in readme


def test_edit_example_script_runs_on_the_tiny_model(tmp_path, capsys):
    sys.path.insert(0, str(EXAMPLES))
    try:
        import edit_example
    finally:
        sys.path.remove(str(EXAMPLES))
    assert edit_example.main([str(EXAMPLES / "astronaut.yaml"), "--tiny-random", "--steps", "2", "--device", "cpu",
                              "--out", str(tmp_path)]) == 0
    folder = tmp_path / "astronaut"
    assert sorted(p.name for p in folder.iterdir()) == ["edit1_figure.png", "edit2_figure.png", "edited.png"]
    assert Image.open(folder / "edited.png").size == (128, 128)
    assert "optimal inversion step" in capsys.readouterr().out
    assert edit_example.main([str(EXAMPLES / "astronaut.yaml"), "--tiny-random", "--out", str(tmp_path)]) == 1


def test_cli_reads_the_example_specs(tmp_path):
    from oir.cli import main

    out = tmp_path / "chelsea"
    assert main(["edit", "--spec", str(EXAMPLES / "chelsea.yaml"), "--tiny-random", "--steps", "2", "--resolution",
                 "64", "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["id"] == "chelsea" and report["search"][0]["edit"] == {
        "source": "tabby cat", "target": "tiger", "guided_prompt": None, "mask_phrase": None}
