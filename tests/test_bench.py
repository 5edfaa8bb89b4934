"""`oir bench run` / `oir bench score` on tiny random models: runs, resuming, process splitting, baselines, scores."""

import argparse
import csv
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from oir.bench import (
    DiffEditMethod,
    FixedStepMethod,
    InpaintMethod,
    LazyMaskGenerator,
    OIRMethod,
    build_parser,
    is_complete,
    load_mask_generator,
    main,
    make_method,
    record_key,
    register,
    resolve_fixed_step,
    run_benchmark,
    select_records,
)
from oir.data import load_spec
from oir.testing import tiny_pipeline

FIXTURES = Path(__file__).parent / "fixtures" / "bench"
SPEC = FIXTURES / "spec.yaml"
ROOT = Path(__file__).resolve().parent.parent
IDS = ["square-circle", "cat", "cup-plate", "car"]


def env():
    environment = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environment.get("PYTHONPATH")]))
    return environment


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline(seed=0)


@pytest.fixture(scope="module")
def records():
    return load_spec(SPEC)


class Spy:
    """Wraps a method: records the ids it edits and can fail on some."""

    def __init__(self, method, fail=()):
        self.method, self.fail, self.seen = method, set(fail), []
        self.name, self.overrides, self.settings = method.name, method.overrides, method.settings

    @property
    def pipe(self):
        return self.method.pipe

    def edit(self, item):
        self.seen.append(item.record.id)
        if item.record.id in self.fail:
            raise RuntimeError(f"boom on {item.record.id}")
        return self.method.edit(item)


def run(records, out, method, **kwargs):
    return run_benchmark(records, out, method, resolution=64, show_progress=False, **kwargs)


@pytest.fixture(scope="module")
def oir_run(tmp_path_factory, pipe, records):
    out = tmp_path_factory.mktemp("bench")
    method = OIRMethod(pipe, overrides={"num_inference_steps": 2})
    summary = run(records[:3], out, method)
    return out, summary


# ----------------------------------------------------------------------------------------------------------------------
# Runs and resuming
# ----------------------------------------------------------------------------------------------------------------------


def test_oir_run_writes_images_and_records(oir_run, pipe, records):
    out, summary = oir_run
    assert summary["complete"] == summary["ran"] == 3 and summary["failed"] == []
    assert summary["assignment"] == {"0": IDS[:3]}
    for record in records[:3]:
        data = json.loads((out / "oir" / f"{record.id}.json").read_text())
        assert data["complete"] is True and data["id"] == record.id
        assert len(data["optimal_steps"]) == len(record.edits)
        assert all(1 <= s <= 2 for s in data["optimal_steps"])
        for search, step in zip(data["search"], data["optimal_steps"]):
            assert search["steps"] == [1, 2] and len(search["scores"]) == 2
            assert step == search["steps"][int(np.argmax(search["scores"]))]
        assert data["timings"]["edit_s"] > 0 and data["timings"]["total_s"] >= data["timings"]["edit_s"]
        with PIL.Image.open(out / "oir" / data["image"]) as image:
            assert image.size == (64, 64)
        with PIL.Image.open(out / data["input_image"]) as image:
            assert image.size == (64, 64)
        assert len(data["masks"]) == len(record.edits)
    cup = json.loads((out / "oir" / "cup-plate.json").read_text())
    assert cup["options"] == {"reassembly_step": 1, "reinversion_steps": 1, "num_inference_steps": 2}
    assert json.loads((out / "oir" / "summary.json").read_text())["complete"] == 3

    # Run again over all four: the three done ones are skipped, only the new one runs.
    spy = Spy(OIRMethod(pipe, overrides={"num_inference_steps": 2}))
    again = run(records, out, spy)
    assert spy.seen == ["car"]
    assert again["skipped_complete"] == 3 and again["ran"] == 1 and again["complete"] == 4

    # Other settings in the same folder are refused rather than mixed in.
    with pytest.raises(ValueError, match="num_inference_steps: 2 -> 3"):
        run(records, out, OIRMethod(pipe, overrides={"num_inference_steps": 3}))


def test_failed_and_half_written_records_are_redone_exactly(tmp_path, pipe, records):
    method = FixedStepMethod(pipe, step=1, overrides={"num_inference_steps": 2})
    first = run(records, tmp_path, Spy(method, fail={"cat"}))
    assert first["ran"] == 3 and [f["id"] for f in first["failed"]] == ["cat"]
    folder = tmp_path / "fixed-step-1"
    error = json.loads((folder / "cat.error.json").read_text())
    assert "boom on cat" in error["error"] and "Traceback" in error["traceback"]
    assert not (folder / "cat.json").exists()

    # Damage two finished records the way a crash could: a truncated JSON, an image gone.
    text = (folder / "car.json").read_text()
    (folder / "car.json").write_text(text[: len(text) // 2])
    (folder / "cup-plate.png").unlink()
    assert not is_complete(folder, "car") and not is_complete(folder, "cup-plate") and is_complete(folder, "square-circle")

    spy = Spy(method)
    second = run(records, tmp_path, spy)
    assert sorted(spy.seen) == ["car", "cat", "cup-plate"]
    assert second["skipped_complete"] == 1 and second["ran"] == 3 and second["failed"] == []
    assert not (folder / "cat.error.json").exists()
    assert all(is_complete(folder, key) for key in IDS)
    data = json.loads((folder / "cat.json").read_text())
    assert data["inversion_step"] == 1 and data["num_inference_steps"] == 2


KILL_SCRIPT = r"""
import os, signal, sys
import oir.bench as bench

original = bench.atomic_write_bytes

def dying_write(path, data):
    if os.path.basename(path) == "cat.json":
        # Killed in the middle of writing the record that marks "cat" as done.
        with open(os.path.join(os.path.dirname(path), ".cat.json.partial.tmp"), "wb") as f:
            f.write(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return original(path, data)

bench.atomic_write_bytes = dying_write
sys.exit(bench.main(sys.argv[1:]))
"""


def test_killed_process_then_resume(tmp_path):
    args = ["run", str(SPEC), "--out", str(tmp_path), "--method", "fixed-step", "--fixed-step", "1",
            "--tiny-random", "--steps", "2", "--no-progress"]
    killed = subprocess.run([sys.executable, "-c", KILL_SCRIPT, *args], env=env(), cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    folder = tmp_path / "fixed-step-1"
    assert is_complete(folder, "square-circle")
    assert (folder / "cat.png").exists() and not (folder / "cat.json").exists()  # image written, record not done
    assert not is_complete(folder, "cat") and (folder / ".cat.json.partial.tmp").exists()
    finished = json.loads((folder / "square-circle.json").read_text())["finished"]

    assert main(args) == 0
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["skipped_complete"] == 1 and summary["ran"] == 3  # exactly cat, cup-plate and car
    assert summary["assignment"] == {"0": ["cat", "cup-plate", "car"]}
    assert json.loads((folder / "square-circle.json").read_text())["finished"] == finished
    assert all(is_complete(folder, key) for key in IDS)
    assert not list(folder.glob(".*.tmp"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_accelerate_launch_splits_records_without_overlap_or_gap(tmp_path):
    # accelerate's `--cpu` flag alone starts a single process; `--multi_gpu` starts torchrun workers, which run on
    # the CPU (gloo) here because `oir bench` builds its PartialState with cpu=True when CUDA is unavailable.
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()),
        "-m", "oir.bench", "run", str(SPEC), "--out", str(tmp_path), "--method", "fixed-step", "--fixed-step", "1",
        "--tiny-random", "--steps", "2", "--no-progress",
    ]
    result = subprocess.run(command, env=env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + "\n----\n" + result.stderr[-8000:]
    folder = tmp_path / "fixed-step-1"
    summary = json.loads((folder / "summary.json").read_text())
    assignment = summary["assignment"]
    assert set(assignment) == {"0", "1"} and all(assignment.values())
    assigned = [i for ids in assignment.values() for i in ids]
    assert sorted(assigned) == sorted(IDS)  # no gap, no overlap
    assert len(summary["processes"]) == 2 and summary["complete"] == 4
    for process, ids in assignment.items():
        for record_id in ids:
            data = json.loads((folder / f"{record_id}.json").read_text())
            assert data["process_index"] == int(process) and is_complete(folder, record_id)
    assert "4/4 records complete" in result.stdout


def left_half_masks(image, phrases):
    mask = np.zeros((image.height, image.width), np.uint8)
    mask[:, : image.width // 2] = 255
    return [PIL.Image.fromarray(mask) for _ in phrases]


def test_generated_masks_are_saved_and_shared_across_methods(tmp_path, pipe):
    (record,) = load_spec(FIXTURES / "spec_single.yaml")  # no masks; edits derived from the prompts
    calls = []

    def generator(image, phrases):
        calls.append(phrases)
        return left_half_masks(image, phrases)

    options = dict(mask_generator=generator, mask_generator_name="test:left_half")
    summary = run([record], tmp_path, OIRMethod(pipe, overrides={"num_inference_steps": 2}), **options)
    assert summary["ran"] == 1, summary["failed"]
    assert calls == [["cat"]]
    data = json.loads((tmp_path / "oir" / "spec_single.json").read_text())
    assert data["masks"] == ["inputs/spec_single/mask_0.png"] and data["mask_share"] == 0.5
    assert data["options"]["num_inference_steps"] == 2  # the command line wins over the record's 4
    assert json.loads((tmp_path / "inputs" / "spec_single" / "masks.json").read_text())["source"] == "generated:test:left_half"
    # Another method on the same folder reuses the saved masks.
    run([record], tmp_path, FixedStepMethod(pipe, step=1, overrides={"num_inference_steps": 2}), **options)
    assert calls == [["cat"]]


def test_load_mask_generator(monkeypatch):
    module = types.ModuleType("fake_masks")

    class Finder:
        def __init__(self, device=None):
            self.device = device

        @classmethod
        def from_pretrained(cls, device=None):
            return cls(device)

        def __call__(self, image, phrases):
            return left_half_masks(image, phrases)

    module.Finder, module.function = Finder, left_half_masks
    monkeypatch.setitem(sys.modules, "fake_masks", module)
    generator = load_mask_generator("fake_masks:Finder", torch.device("cpu"))
    assert isinstance(generator, Finder) and generator.device == torch.device("cpu")
    assert load_mask_generator("fake_masks:function") is left_half_masks
    lazy = LazyMaskGenerator("fake_masks:Finder")
    assert len(lazy(PIL.Image.new("RGB", (16, 16)), ["a", "b"])) == 2
    for bad in ("fake_masks", "fake_masks:nope", "no_such_module:x"):
        with pytest.raises(ValueError, match="mask-generator"):
            load_mask_generator(bad)


# ----------------------------------------------------------------------------------------------------------------------
# Baselines
# ----------------------------------------------------------------------------------------------------------------------


def tiny_args(method, **extra):
    args = build_parser().parse_args(["run", str(SPEC), "--out", "unused", "--method", method, "--tiny-random",
                                      "--steps", "2", *extra.pop("argv", [])])
    return args


def region_change(out, folder, key, masks):
    edited = np.asarray(PIL.Image.open(out / folder / f"{key}.png").convert("RGB")).astype(int)
    source = np.asarray(PIL.Image.open(out / "inputs" / key / "image.png").convert("RGB")).astype(int)
    inside = np.zeros(edited.shape[:2], bool)
    for k in range(masks):
        inside |= np.asarray(PIL.Image.open(out / "inputs" / key / f"mask_{k}.png")) > 0
    diff = np.abs(edited - source).sum(-1)
    return diff[inside].mean(), diff[~inside]


def test_sd_inpaint_baseline_edits_only_inside_the_masks(tmp_path, records):
    method = make_method(tiny_args("sd-inpaint"))
    assert isinstance(method, InpaintMethod) and method.name == "sd-inpaint"
    summary = run(records[:1], tmp_path, method)
    assert summary["ran"] == 1, summary["failed"]
    assert method.pipe.unet.config.in_channels == 9
    data = json.loads((tmp_path / "sd-inpaint" / "square-circle.json").read_text())
    assert data["prompts"] == ["green square", "yellow circle"]  # the paper's method 3: one target phrase per edit
    changed, outside = region_change(tmp_path, "sd-inpaint", "square-circle", 2)
    assert changed > 10 and (outside == 0).all()

    variant1 = InpaintMethod(method.pipe, variant=1, overrides={"num_inference_steps": 2})
    run(records[:1], tmp_path, variant1)
    data = json.loads((tmp_path / "sd-inpaint-m1" / "square-circle.json").read_text())
    assert data["prompts"] == ["a green square and a yellow circle"]


def test_diffedit_baseline(tmp_path, records):
    method = make_method(tiny_args("diffedit"))
    assert isinstance(method, DiffEditMethod)
    summary = run(records[1:2], tmp_path, method)
    assert summary["ran"] == 1, summary["failed"]
    data = json.loads((tmp_path / "diffedit" / "cat.json").read_text())
    assert 0 <= data["diffedit_mask_share"] <= 1 and data["num_inference_steps"] == 2
    assert type(method.pipe.inverse_scheduler).__name__ == "DDIMInverseScheduler"
    with PIL.Image.open(tmp_path / "diffedit" / "cat.png") as image:
        assert image.size == (64, 64)


def test_fixed_step_equals_the_target_prompt_candidate(tmp_path, pipe, records):
    method = FixedStepMethod(pipe, step=0.5, overrides={"num_inference_steps": 2})
    assert method.name == "fixed-step-0.5"
    run(records[1:2], tmp_path, method)
    edited = np.asarray(PIL.Image.open(tmp_path / "fixed-step-0.5" / "cat.png"))
    # By hand: invert, denoise from step 1 of 2 with the target prompt against the source prompt.
    image = PIL.Image.open(tmp_path / "inputs" / "cat" / "image.png").convert("RGB")
    inversion = pipe.invert(image, "a cat on the grass", num_inference_steps=2)
    latent = pipe.generate_candidates(inversion, "a tiger on the grass", steps=[1])
    expected = np.asarray(pipe.image_processor.postprocess(pipe.decode_latents(latent) * 2 - 1, output_type="pil")[0])
    assert np.abs(edited.astype(int) - expected.astype(int)).max() <= 1
    assert resolve_fixed_step(0.5, 50) == 25 and resolve_fixed_step(0.01, 50) == 1 and resolve_fixed_step(7, 50) == 7
    for bad in (0.0, 1.5, 0, 51, "3"):
        with pytest.raises(ValueError, match="fixed_step"):
            resolve_fixed_step(bad, 50)


def test_loaders_read_local_model_folders(tmp_path):
    # The loading code users run (--model / --clip as folders, as saved from the Hub), on tiny saved models.
    from oir.bench import load_diffedit_pipeline, load_pipeline
    from oir.testing import save_tiny_stable_diffusion, tiny_components

    save_tiny_stable_diffusion(str(tmp_path / "sd"))
    components = tiny_components(seed=0)
    components["clip_model"].save_pretrained(tmp_path / "clip")
    components["clip_processor"].save_pretrained(tmp_path / "clip")
    args = build_parser().parse_args(["run", "spec.yaml", "--out", "o", "--model", str(tmp_path / "sd"),
                                      "--clip", str(tmp_path / "clip"), "--device", "cpu", "--dtype", "float32"])
    pipe = load_pipeline(args)
    assert type(pipe).__name__ == "OIRPipeline" and pipe.clip_model is not None
    assert pipe.clip_model.config.projection_dim == 8 and pipe.device.type == "cpu"
    diffedit = load_diffedit_pipeline(args)
    assert type(diffedit.scheduler).__name__ == "DDIMScheduler"
    assert type(diffedit.inverse_scheduler).__name__ == "DDIMInverseScheduler"
    assert diffedit.safety_checker is None


# ----------------------------------------------------------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------------------------------------------------------


def test_score_writes_csv_and_paper_table(oir_run):
    out, _ = oir_run
    out = Path(shutil.copytree(out, out.parent / "scored"))
    # A "method" that returns the input unchanged: MS-SSIM 1, LPIPS 0, PSNR inf.
    copy = out / "copy"
    copy.mkdir()
    (copy / "run.json").write_text(json.dumps({"settings": {"method": "copy"}}))
    done = [p for p in (out / "oir").glob("*.json") if p.name not in ("run.json", "summary.json")]
    for path in done:
        data = json.loads(path.read_text())
        shutil.copy(out / data["input_image"], copy / data["image"])
        (copy / path.name).write_text(json.dumps(dict(data, method="copy")))

    assert main(["score", str(out), "--tiny-random", "--no-progress"]) == 0
    with open(out / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(done) >= 3 and len(rows) == 2 * len(done) and {r["method"] for r in rows} == {"oir", "copy"}
    for row in rows:
        values = {k: float(v) for k, v in row.items() if k not in ("method", "id")}
        assert 0 <= values["clip_score"] <= 100
        if row["method"] == "copy":
            assert values["ms_ssim"] == pytest.approx(1, abs=1e-5) and values["lpips"] == pytest.approx(0, abs=1e-5)
            assert math.isinf(values["psnr"]) and values["ms_ssim_bg"] == pytest.approx(1, abs=1e-5)
        else:
            assert 0 <= values["ms_ssim"] < 1 and values["lpips"] > 0 and math.isfinite(values["psnr"])
    table = (out / "scores.md").read_text().splitlines()
    assert table[0].startswith("| Method | CLIP score ↑ | MS-SSIM ↑ | LPIPS ↓ |")
    assert table[2].startswith("| OIR |") and table[3].startswith("| copy |")
    assert table[3].endswith(f"| {len(done)} |")
    assert "| inf |" in table[3]

    assert main(["score", str(out), "--tiny-random", "--no-progress", "--methods", "nope"]) == 2


# ----------------------------------------------------------------------------------------------------------------------
# Command line and small pieces
# ----------------------------------------------------------------------------------------------------------------------


def test_register_adds_the_bench_command():
    parser = argparse.ArgumentParser(prog="oir")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "run", "spec.yaml", "--out", "o", "--method", "fixed-step", "--fixed-step", "10",
                              "--reassembly-step", "0.3", "--ids", "a,b", "c", "--limit", "2"])
    assert args.func.__name__ == "cmd_run" and args.fixed_step == 10 and args.reassembly_step == 0.3
    assert args.ids == ["a,b", "c"] and args.limit == 2
    args = parser.parse_args(["bench", "score", "o", "--lpips-net", "vgg"])
    assert args.func.__name__ == "cmd_score" and args.clip == "openai/clip-vit-large-patch14"
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "run", "spec.yaml"])  # --out is required


def test_select_records_and_keys(records, tmp_path):
    assert [r.id for r in select_records(records, ["car,cat"], None)] == ["cat", "car"]
    assert [r.id for r in select_records(records, None, 2)] == ["square-circle", "cat"]
    with pytest.raises(ValueError, match="unknown .* nope"):
        select_records(records, ["nope"], None)
    assert record_key("bird_0001_0-duck") == "bird_0001_0-duck"
    assert record_key("summary") != "summary" and record_key("a.json") != "a.json"
    unsafe = record_key("../a b/c")
    assert "/" not in unsafe and " " not in unsafe and unsafe != record_key("../a b/d")
    assert main(["run", str(SPEC), "--out", str(tmp_path), "--tiny-random", "--ids", "nope"]) == 2
