"""Dataset readers (our spec, the authors' OIR-Bench YAML, PIE-Bench's mapping_file.json) and PIE-Bench's RLE."""

import json
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from oir import Edit
from oir.data import (
    DatasetError,
    EditRecord,
    RLEMask,
    decode_pie_rle,
    detect_format,
    encode_pie_rle,
    load_dataset,
    load_spec,
    read_dataset,
    read_oir_bench,
    read_pie_bench,
    read_spec,
)


FIXTURES = Path(__file__).parent / "fixtures" / "bench"


def problems_by_record(problems):
    table = {}
    for problem in problems:
        table.setdefault(problem.record_id, set()).add(problem.field)
    return table


# ----------------------------------------------------------------------------------------------------------------------
# PIE-Bench run-length encoding
# ----------------------------------------------------------------------------------------------------------------------


def test_decode_pie_rle_exact_pixels():
    # Runs [start, length]: pixels 0-2 of row 0, pixels 1-2 of row 1 (513, 514), and a run cut at the image's end.
    counts = [0, 3, 513, 2, 512 * 512 - 1, 5]
    mask = decode_pie_rle(counts)
    assert mask.shape == (512, 512) and mask.dtype == bool
    assert mask.sum() == 3 + 2 + 1
    assert mask[0, :3].all() and not mask[0, 3]
    assert mask[1, 1:3].all() and not mask[1, 0] and not mask[1, 3]
    assert mask[511, 511]
    # No border filling (PIE-Bench's evaluation does that; the encoding does not).
    assert not mask[:, 0][2:].any() and not mask[-1, :-1].any()


def test_decode_pie_rle_matches_a_plain_loop_and_round_trips():
    rng = np.random.default_rng(0)
    shape = (16, 24)
    counts = []
    for _ in range(20):  # overlapping and out-of-range runs included
        counts += [int(rng.integers(0, 16 * 24 + 10)), int(rng.integers(0, 30))]
    expected = np.zeros(16 * 24, bool)
    for start, length in zip(counts[0::2], counts[1::2]):
        expected[start : start + length] = True
    np.testing.assert_array_equal(decode_pie_rle(counts, shape), expected.reshape(shape))

    mask = rng.random((512, 512)) > 0.7
    np.testing.assert_array_equal(decode_pie_rle(encode_pie_rle(mask)), mask)
    assert encode_pie_rle(np.zeros((4, 4))) == []


@pytest.mark.parametrize("counts", [[1, 2, 3], [[1, 2]], [-1, 4], [3, -2], [1.5, 2]])
def test_decode_pie_rle_rejects_malformed(counts):
    with pytest.raises(ValueError, match="PIE-Bench mask"):
        decode_pie_rle(counts)


# ----------------------------------------------------------------------------------------------------------------------
# Our spec
# ----------------------------------------------------------------------------------------------------------------------


def test_read_spec_records():
    records, problems = read_spec(FIXTURES / "spec.yaml")
    assert problems == []
    assert [r.id for r in records] == ["square-circle", "cat", "cup-plate", "car"]
    first = records[0]
    assert first.source_prompt == "a red square and a blue circle"
    assert first.edits == [Edit("red square", "green square"), Edit("blue circle", "yellow circle")]
    assert Path(first.image) == FIXTURES / "images" / "square_circle.png"
    assert [Path(m).name for m in first.masks] == ["square.png", "circle.png"]
    cup = records[2]
    assert cup.edits[1].guided_prompt == "a cup and a bowl on a table"
    assert cup.options == {"reassembly_step": 1, "reinversion_steps": 1}
    assert records[3].edits[0].mask_phrase == "yellow car"
    # Masks load as binary images of the image's size.
    masks = first.load_masks()
    assert masks[0].mode == "L" and masks[0].size == (64, 64)
    assert set(np.unique(np.asarray(masks[0]))) == {0, 255}
    kwargs = first.pipeline_kwargs()
    assert kwargs["image"].size == (64, 64) and kwargs["target_prompt"] == first.target_prompt
    assert len(kwargs["masks"]) == 2


def test_read_spec_single_record_defaults():
    (record,) = load_spec(FIXTURES / "spec_single.yaml")
    assert record.id == "spec_single"  # the file stem
    assert record.edits is None and record.masks is None
    assert record.resolved_edits() == [Edit("cat", "dog")]
    assert record.options == {"num_inference_steps": 4}


def test_read_spec_reports_every_bad_record_and_keeps_the_good():
    records, problems = read_spec(FIXTURES / "spec_bad.yaml")
    assert [r.id for r in records] == ["good"]
    assert Path(records[0].image).name == "cat.png"  # the first "good"; the duplicate is left out
    table = problems_by_record(problems)
    assert table["missing-files"] == {"image", "edits[0].mask"}
    assert table["bad-fields"] == {"source_prompt", "options.num_inference_steps", "options.resolution"}
    assert table["phrase-not-in-prompt"] == {"edits[0].source"}
    assert table["underivable"] == {"edits"}
    assert table["#6"] == {"id"}
    assert table["good"] == {"id"}
    message = str(next(p for p in problems if p.record_id == "phrase-not-in-prompt"))
    assert "'phrase-not-in-prompt'" in message and "dog" in message

    with pytest.raises(DatasetError) as error:
        load_spec(FIXTURES / "spec_bad.yaml")
    assert len(error.value.problems) == len(problems)
    assert "missing-files" in str(error.value) and "edits[0].mask" in str(error.value)
    assert [r.id for r in load_dataset(FIXTURES / "spec_bad.yaml", on_error="skip")] == ["good"]


def test_spec_options_accept_cli_flag_names(tmp_path):
    image = tmp_path / "cat.png"
    PIL.Image.new("RGB", (64, 64)).save(image)
    (tmp_path / "spec.yaml").write_text(
        "records:\n"
        "  - {id: a, image: cat.png, source_prompt: a cat, target_prompt: a dog, options: {steps: 10, guidance: 5}}\n"
        "  - {id: b, image: cat.png, source_prompt: a cat, target_prompt: a dog,\n"
        "     options: {steps: 10, num_inference_steps: 20, seed: 3}}\n"
    )
    records, problems = read_spec(tmp_path / "spec.yaml")
    assert records[0].options == {"num_inference_steps": 10, "guidance_scale": 5}
    assert [(p.record_id, p.field) for p in problems] == [("b", "options.steps")]


def test_read_spec_rejects_a_broken_file(tmp_path):
    (tmp_path / "broken.yaml").write_text("records: [unclosed\n")
    records, problems = read_spec(tmp_path / "broken.yaml")
    assert records == [] and problems[0].record_id == "<file>"
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(DatasetError, match="mapping"):
        load_spec(tmp_path / "list.yaml")


# ----------------------------------------------------------------------------------------------------------------------
# OIR-Bench
# ----------------------------------------------------------------------------------------------------------------------


def test_read_oir_bench_multi_and_single_object():
    path = FIXTURES / "oir_bench" / "configs" / "oir_bench.yaml"
    assert detect_format(path) == "oir-bench"
    records, problems = read_oir_bench(path)
    assert [r.id for r in records] == ["multi_object_001", "bird_0001_0-duck", "bird_0001_0-flamingo"]

    multi = records[0]
    assert multi.edits == [
        Edit("dumplings", "fry rice", "a bowl of fry rice on the left and chopsticks on the right", "dumplings"),
        Edit("chopsticks", "knife", "a bowl of dumplings on the left and knife on the right", "chopsticks"),
    ]
    # Paths are relative to the authors' repository root (the YAML's parent folder).
    assert Path(multi.image) == FIXTURES / "oir_bench" / "OIR-Bench/multi_object/dataset/multi_object_001.png"
    assert [Path(m).name for m in multi.masks] == ["dumplings.png", "chopsticks.png"]
    # The authors' 10 of 50 steps, kept as a share of N.
    assert multi.options == {"reassembly_step": 0.2, "reinversion_steps": 0.2}

    duck = records[1]
    assert duck.source_prompt == "a bird perched on a branch with white flowers"
    assert duck.target_prompt == "a duck perched on a branch with white flowers"
    assert duck.edits == [Edit("bird", "duck", duck.target_prompt, "bird")]
    # An absolute path from the authors' machine is found under the dataset's OIR-Bench folder.
    assert Path(duck.masks[0]) == FIXTURES / "oir_bench" / "OIR-Bench/single_object/mask/bird_0001_0/bird.png"

    table = problems_by_record(problems)
    assert table == {
        "multi_object_002": {"image_path", "prompt_change_mask", "reassembly_step"},
        "bird_0002_0": {"target_prompt_list"},
    }


def test_read_oir_bench_with_root(tmp_path):
    root = tmp_path / "elsewhere"
    shutil.copytree(FIXTURES / "oir_bench" / "OIR-Bench", root / "OIR-Bench")
    (tmp_path / "bench.yaml").write_text((FIXTURES / "oir_bench" / "configs" / "oir_bench.yaml").read_text())
    records, _ = read_dataset(tmp_path / "bench.yaml", root=root)
    assert Path(records[0].image).is_relative_to(root)
    records, problems = read_dataset(tmp_path / "bench.yaml")  # no root: nothing found beside the YAML
    assert records == [] and {p.field for p in problems} >= {"image_path", "prompt_change_mask[0]"}


def test_read_oir_bench_folder_of_authors_configs(tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    shutil.copytree(FIXTURES / "oir_bench" / "OIR-Bench", tmp_path / "OIR-Bench")
    multi = (FIXTURES / "oir_bench" / "configs" / "oir_bench.yaml").read_text().split("multi_object_002:")[0]
    for name in ("multi_object_001", "multi_object_007"):  # the authors' files all use the key `multi_object`
        (configs / f"{name}.yaml").write_text(multi.replace("multi_object_001:\n", "multi_object:\n", 1))
    (configs / "notes.txt").write_text("not a config")
    assert detect_format(configs) == "oir-bench"
    records, problems = read_dataset(configs)
    assert problems == []
    assert [r.id for r in records] == ["multi_object_001", "multi_object_007"]
    assert len(records[1].edits) == 2 and Path(records[1].image).is_file()


# ----------------------------------------------------------------------------------------------------------------------
# PIE-Bench
# ----------------------------------------------------------------------------------------------------------------------


def test_read_pie_bench():
    path = FIXTURES / "pie_bench" / "mapping_file.json"
    assert detect_format(path) == "pie-bench"
    records, problems = read_pie_bench(path)
    assert [r.id for r in records] == ["000000000000", "000000000001"]

    bike = records[0]
    assert bike.source_prompt == "a slanted mountain bicycle on the road in front of a building"
    assert bike.target_prompt == "a slanted rusty mountain bicycle on the road in front of a building"
    (edit,) = bike.edits
    assert edit.guided_prompt == bike.target_prompt
    assert edit.target == "rusty mountain bicycle" and edit.mask_phrase == "bicycle"
    assert bike.meta["editing_type_id"] == "0" and bike.meta["editing_instruction"].startswith("Make")
    assert Path(bike.image).parent.name == "0_random_140"
    (mask,) = bike.masks
    assert isinstance(mask, RLEMask)
    decoded = mask.decode()
    expected = np.zeros((512, 512), bool)
    expected[192:384, 64:448] = True
    np.testing.assert_array_equal(decoded, expected)
    image = bike.load_masks()[0]
    assert image.size == (512, 512) and np.asarray(image)[200, 100] == 255 and np.asarray(image)[100, 100] == 0

    orange = records[1]
    assert orange.source_prompt == "an orange sitting on the grass"
    assert orange.edits == [Edit("orange", "tennis ball", "a tennis ball sitting on the grass", "orange")]

    table = problems_by_record(problems)
    assert table == {"000000000002": {"image_path", "mask"}}


def test_pie_bench_deletion_and_bad_json(tmp_path):
    images = tmp_path / "annotation_images"
    images.mkdir()
    PIL.Image.new("RGB", (64, 64)).save(images / "x.png")
    mask = np.zeros((512, 512), bool)
    mask[10:20, 10:20] = True
    entry = {
        "image_path": "x.png", "original_prompt": "a [cat] on a sofa", "editing_prompt": "a on a sofa",
        "editing_instruction": "remove the cat", "editing_type_id": "3", "blended_word": "cat cat",
        "mask": encode_pie_rle(mask),
    }
    empty = dict(entry, mask=[])
    (tmp_path / "mapping_file.json").write_text(json.dumps({"del": entry, "empty": empty}))
    records, problems = read_dataset(tmp_path / "mapping_file.json")
    (record,) = records
    # Nothing bracketed in the editing prompt: the search scores the whole editing prompt.
    assert record.edits[0].source == "cat" and record.edits[0].target == "a on a sofa"
    assert [(p.record_id, p.field) for p in problems] == [("empty", "mask")]

    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(DatasetError, match="cannot read"):
        load_dataset(tmp_path / "broken.json")
    with pytest.raises(ValueError, match="not found"):
        read_dataset(tmp_path / "nope.json")
    with pytest.raises(ValueError, match="format"):
        read_dataset(tmp_path / "mapping_file.json", format="coco")


def test_edit_record_from_memory():
    image = PIL.Image.new("RGB", (32, 32), (10, 20, 30))
    mask = np.zeros((32, 32))
    mask[4:12, 4:12] = 1
    record = EditRecord("x", image, "a cat", "a dog", masks=[mask])
    assert record.load_image().getpixel((0, 0)) == (10, 20, 30)
    assert np.asarray(record.load_masks()[0])[5, 5] == 255
    assert record.to_dict()["masks"] == ["ndarray"]
