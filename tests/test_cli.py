"""The `oir` command line, end to end on the tiny random model (offline)."""

import argparse
import importlib.machinery
import json
import runpy
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from oir.cli import main, parse_edit

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
COFFEE_SOURCE = "a cup of coffee with a spoon on a saucer on a wooden table"
COFFEE_TARGET = "a cup of tea with a fork on a saucer on a wooden table"



def _edit_args(out, *extra):
    return [
        "edit", str(EXAMPLES / "images" / "coffee.png"), "--source", COFFEE_SOURCE, "--target", COFFEE_TARGET,
        "--edit", "coffee->tea", "--mask", str(EXAMPLES / "masks" / "coffee_coffee.png"),
        "--edit", "spoon->fork", "--mask", str(EXAMPLES / "masks" / "coffee_spoon.png"),
        "--tiny-random", "--steps", "3", "--resolution", "64", "--out", str(out), "--quiet", *extra,
    ]


def test_parse_edit():
    assert parse_edit("dumplings->fried rice") == ("dumplings", "fried rice")
    assert parse_edit(" a pair of chopsticks -> a knife ") == ("a pair of chopsticks", "a knife")
    for bad in ("dumplings", "->rice", "dumplings->", "a->b->c"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_edit(bad)


def test_edit_tiny_random_end_to_end_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_edit_args(out)) == 0
    names = sorted(p.name for p in out.iterdir())
    expected = ["edited.png", "input.png", "report.json"] + [
        f"edit{k}_{kind}.png" for k in (1, 2) for kind in ("candidates", "figure", "mask", "search")
    ]
    assert names == sorted(expected)
    assert Image.open(out / "edited.png").size == (64, 64)
    assert Image.open(out / "edit1_search.png").size == (720, 450)
    assert Image.open(out / "edit1_candidates.png").width > 3 * 64  # three labelled thumbnails in a row

    report = json.loads((out / "report.json").read_text())
    assert report["command"][:2] == ["oir", "edit"]
    assert report["arguments"]["steps"] == 3 and report["arguments"]["tiny_random"] is True
    assert report["call"]["num_inference_steps"] == 3 and report["call"]["reassembly_step"] == 0.2
    assert report["model"] == "tiny-random" and report["image_size"] == [64, 64]
    assert len(report["optimal_steps"]) == 2
    for record, (source, target) in zip(report["search"], [("coffee", "tea"), ("spoon", "fork")]):
        assert (record["edit"]["source"], record["edit"]["target"]) == (source, target)
        assert record["steps"] == [1, 2, 3]
        for key in ("editing_scores", "non_editing_scores", "scores"):
            assert len(record[key]) == 3
        assert record["optimal_step"] == record["steps"][max(range(3), key=lambda i: (record["scores"][i], -i))]
    assert report["optimal_steps"] == [r["optimal_step"] for r in report["search"]]
    assert {"load_s", "edit_s", "plots_s"} <= set(report["timings"])
    assert {"torch", "diffusers", "transformers", "oir", "python"} <= set(report["versions"])

    before = (out / "report.json").read_bytes()
    capsys.readouterr()
    assert main(_edit_args(out)) == 2  # a second run is refused
    err = capsys.readouterr().err
    assert "--overwrite" in err and "Traceback" not in err
    assert (out / "report.json").read_bytes() == before
    coarse = ["--overwrite", "--steps", "6", "--search", "coarse-to-fine", "--search-stride", "3"]
    assert main(_edit_args(out, *coarse)) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["call"]["search"] == "coarse-to-fine" and report["call"]["num_inference_steps"] == 6
    for record in report["search"]:  # the evaluated steps only
        assert set(record["steps"]) <= set(range(1, 7)) and record["optimal_step"] in record["steps"]


def test_edit_spec_with_several_records(tmp_path):
    spec = {
        "records": [
            {
                "id": "drawn",
                "image": str(EXAMPLES / "images" / "coffee.png"),
                "source_prompt": COFFEE_SOURCE,
                "target_prompt": COFFEE_TARGET,
                "edits": [{"source": "coffee", "target": "tea", "mask": str(EXAMPLES / "masks" / "coffee_coffee.png")}],
                "options": {"num_inference_steps": 2, "reassembly_step": 0.0, "reinversion_steps": 0.0},
            },
            {
                "id": "builtin",
                "image": "images/cat.png",  # relative to the spec file
                "source_prompt": "a photo of a cat",
                "target_prompt": "a photo of a dog",
                "options": {"num_inference_steps": 2, "seed": 3},
            },
        ]
    }
    (tmp_path / "images").mkdir()
    Image.open(EXAMPLES / "images" / "chelsea.png").save(tmp_path / "images" / "cat.png")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    assert main(["edit", "--spec", str(path), "--tiny-random", "--resolution", "64", "--out", str(out), "--quiet"]) == 0
    drawn = json.loads((out / "drawn" / "report.json").read_text())
    builtin = json.loads((out / "builtin" / "report.json").read_text())
    assert drawn["id"] == "drawn" and drawn["call"]["num_inference_steps"] == 2
    assert drawn["masks"][0].endswith("coffee_coffee.png")
    assert builtin["masks"] == "builtin" and builtin["settings"]["seed"] == 3
    assert [r["edit"]["source"] for r in builtin["search"]] == ["cat"]  # from the prompts' word diff
    assert builtin["search"][0]["edit"]["target"] == "dog"
    assert builtin["image"] == str(tmp_path / "images" / "cat.png")
    # --id picks records; a flag overrides the spec's options
    out2 = tmp_path / "out2"
    args = ["edit", "--spec", str(path), "--id", "builtin", "--steps", "2", "--tiny-random", "--resolution", "64",
            "--out", str(out2), "--quiet"]
    assert main(args) == 0
    assert sorted(p.name for p in out2.iterdir()) == ["builtin"]
    assert json.loads((out2 / "builtin" / "report.json").read_text())["call"]["num_inference_steps"] == 2


def test_edit_loads_local_model_folders(tmp_path):
    from oir.testing import save_tiny_stable_diffusion, tiny_components

    model = save_tiny_stable_diffusion(str(tmp_path / "tiny-sd"))
    clip = tiny_components()
    clip["clip_model"].save_pretrained(tmp_path / "tiny-clip")
    clip["clip_processor"].save_pretrained(tmp_path / "tiny-clip")
    out = tmp_path / "local"
    args = _edit_args(out)
    args.remove("--tiny-random")
    args += ["--model", model, "--clip", str(tmp_path / "tiny-clip"), "--device", "cpu", "--dtype", "float32"]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == model and report["device"] == "cpu" and report["dtype"] == "float32"


@pytest.mark.parametrize(
    "change, message",
    [
        (["--model", "/no/such/folder"], "the local folder /no/such/folder does not exist"),
        (["--model", "no-such-user/no-such-model"],
         "--model: no-such-user/no-such-model is neither a local folder nor a downloaded Hub model"),
        (["--clip", "./missing-clip"], "--clip: the local folder ./missing-clip does not exist"),
    ],
)
def test_models_that_cannot_be_loaded_give_a_clear_message(tmp_path, capsys, change, message):
    args = _edit_args(tmp_path / "never")
    args.remove("--tiny-random")
    assert main(args + change) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "never").exists()


def test_bad_arguments_give_a_clear_message(tmp_path, capsys):
    image = str(EXAMPLES / "images" / "coffee.png")
    cases = [
        (["edit", str(tmp_path / "missing.png"), "--source", "a", "--target", "b", "--tiny-random"], "no such file"),
        (["edit", image, "--source", "a cat", "--tiny-random"], "missing --target"),
        (["edit", image, "--source", "a cat", "--target", "a dog", "--edit", "cat->dog", "--mask", image, "--mask",
          image, "--tiny-random"], "2 masks for 1 edits"),
        (["edit", image, "--source", "a cat", "--target", "a dog", "--edit", "horse->dog", "--tiny-random",
          "--resolution", "64", "--steps", "2", "--out", str(tmp_path / "o")], "horse"),
        (["edit", "--spec", str(tmp_path / "nope.yaml")], "no such file"),
        (["edit", "--spec", str(EXAMPLES / "coffee.yaml"), "--source", "a cat"], "--spec takes"),
        (["edit", image, "--source", "a", "--target", "b", "--mask", image, "--auto-mask", "builtin",
          "--tiny-random"], "not both"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
    with pytest.raises(SystemExit) as error:
        main(["edit", image, "--edit", "no arrow here"])
    assert error.value.code == 2
    assert "source phrase->target phrase" in capsys.readouterr().err


def test_python_dash_m_and_bench_registration(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["oir", "--help"])
    with pytest.raises(SystemExit) as error:
        runpy.run_module("oir", run_name="__main__")
    assert error.value.code == 0
    help_text = capsys.readouterr().out
    assert "edit" in help_text and "export-hub" in help_text

    bench = types.ModuleType("oir.bench")
    bench.__spec__ = importlib.machinery.ModuleSpec("oir.bench", None)

    def register(subparsers):
        parser = subparsers.add_parser("bench", help="the benchmark")
        parser.add_argument("--n", type=int, default=1)
        parser.set_defaults(func=lambda args: 7 + args.n)

    bench.register = register
    monkeypatch.setitem(sys.modules, "oir.bench", bench)
    assert main(["bench", "--n", "2"]) == 9


def test_auto_mask_grounded_sam_is_loaded_from_the_flags_and_used(tmp_path, monkeypatch):
    from oir import masks as oir_masks

    loaded, asked = [], []

    def fake_from_pretrained(detector, sam, **kwargs):
        loaded.append((detector, sam, str(kwargs.get("device"))))

        def generator(image, phrases):
            asked.append((image.size, list(phrases)))
            mask = Image.new("L", image.size, 0)
            mask.paste(255, (0, 0, image.width // 2, image.height // 2))
            return [mask for _ in phrases]

        return generator

    monkeypatch.setattr(oir_masks.GroundedSAM, "from_pretrained", staticmethod(fake_from_pretrained))
    out = tmp_path / "gsam"
    argv = ["edit", str(EXAMPLES / "images" / "chelsea.png"), "--source", "a photo of a cat", "--target",
            "a photo of a dog", "--auto-mask", "grounded-sam", "--detector", "my/detector", "--sam", "my/sam",
            "--tiny-random", "--steps", "2", "--resolution", "64", "--device", "cpu", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    assert loaded == [("my/detector", "my/sam", "cpu")]
    assert asked == [((64, 64), ["cat"])]
    report = json.loads((out / "report.json").read_text())
    assert report["masks"] == "grounded-sam"
    assert (np.asarray(Image.open(out / "edit1_mask.png")) > 0).mean() == 0.25
