"""Grounded-SAM masks (oir/masks.py), offline: tiny random GroundingDINO / SAM models and stubs with known boxes."""

import copy
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from _tiny_detectors import (
    StubDetector,
    fill_boxes,
    tiny_grounding_dino,
    tiny_segment_anything,
    tiny_transformers_sam,
)
from oir.masks import GroundedSAM, PhraseNotFoundError, load_segment_anything

WIDTH, HEIGHT = 80, 48


@pytest.fixture(scope="module")
def photo():
    return Image.fromarray((np.random.RandomState(0).rand(HEIGHT, WIDTH, 3) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """A tiny GroundingDINO and its processor, also saved to a folder as on the Hub."""
    folder = str(tmp_path_factory.mktemp("grounding-dino"))
    model, processor = tiny_grounding_dino(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor, folder


# A stub GroundingDINO: one query per row, with its probability on the word's tokens and its (cx, cy, w, h) box.
DETECTIONS = [
    ("cat", 0.90, (0.25, 0.50, 0.20, 0.50)),  # cat's best box: x 12..28, y 12..36
    ("cat", 0.60, (0.75, 0.50, 0.20, 0.50)),  # a weaker cat
    ("dog", 0.40, (0.60, 0.25, 0.50, 0.25)),  # the only dog: x 28..68, y 6..18
    ("bird", 0.30, (0.50, 0.50, 0.10, 0.10)),  # below the default box threshold 0.35
]


def stub_gsam(processor, **kwargs):
    return GroundedSAM(StubDetector(processor.tokenizer, DETECTIONS), processor, fill_boxes, **kwargs)


def box_mask(x0, y0, x1, y1, pad=0):
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[max(y0 - pad, 0) : y1 + pad, max(x0 - pad, 0) : x1 + pad] = 255
    return mask


def check_masks(masks, count):
    assert len(masks) == count
    for mask in masks:
        assert mask.mode == "L" and mask.size == (WIDTH, HEIGHT)
        assert set(np.unique(np.asarray(mask))) <= {0, 255}


def test_best_box_becomes_the_mask(detector, photo):
    _, processor, _ = detector
    gsam = stub_gsam(processor)
    boxes, scores = gsam.detect(photo, ["cat", "the dog"])
    torch.testing.assert_close(boxes, torch.tensor([[12.0, 12.0, 28.0, 36.0], [28.0, 6.0, 68.0, 18.0]]))
    torch.testing.assert_close(scores, torch.tensor([0.90, 0.40]))

    masks = gsam(photo, ["The Dog", "cat.", "the dog"])  # order kept, duplicates and case handled
    check_masks(masks, 3)
    np.testing.assert_array_equal(np.asarray(masks[0]), box_mask(28, 6, 68, 18))
    np.testing.assert_array_equal(np.asarray(masks[1]), box_mask(12, 12, 28, 36))
    np.testing.assert_array_equal(np.asarray(masks[2]), np.asarray(masks[0]))
    # all phrases went to the detector in one caption, each once
    assert gsam.detector.captions == ["cat. the dog.", "the dog. cat."]


def test_thresholds_and_dilation(detector, photo):
    _, processor, _ = detector
    # the dog's box (0.40) is dropped by a box threshold above it; the weaker cat is not chosen either way
    with pytest.raises(PhraseNotFoundError):
        stub_gsam(processor, box_threshold=0.5)(photo, ["dog"])
    # the bird (0.30) is found once the box threshold is below it
    (bird,) = stub_gsam(processor, box_threshold=0.25)(photo, ["bird"])
    np.testing.assert_array_equal(np.asarray(bird), box_mask(36, 22, 44, 26))
    # a text threshold above a phrase's token probability drops its boxes too
    with pytest.raises(PhraseNotFoundError):
        stub_gsam(processor, text_threshold=0.95)(photo, ["cat"])

    (cat,) = stub_gsam(processor, dilation=3)(photo, ["cat"])
    np.testing.assert_array_equal(np.asarray(cat), box_mask(12, 12, 28, 36, pad=3))


def test_phrase_not_found_names_phrase_and_best_score(detector, photo):
    _, processor, _ = detector
    gsam = stub_gsam(processor)
    with pytest.raises(PhraseNotFoundError, match=r"'bird'.*best score is 0\.300") as caught:
        gsam(photo, ["cat", "bird"])
    assert isinstance(caught.value, ValueError)
    assert caught.value.phrase == "bird" and caught.value.best_score == pytest.approx(0.30)
    # a word the detector never sees scores only the background probability
    with pytest.raises(PhraseNotFoundError, match=r"'tree'.*best score is 0\.050"):
        gsam(photo, ["tree"])


def test_long_captions_are_split_to_fit_the_text_length(detector, photo):
    _, processor, _ = detector
    gsam = stub_gsam(processor)  # max_text_len 32 tokens
    phrases = ["cat", "the dog"] + [f"the small red cat {'on the table ' * k}" for k in range(1, 5)]
    masks = gsam(photo, phrases)
    check_masks(masks, len(phrases))
    for mask in masks[2:]:
        np.testing.assert_array_equal(np.asarray(mask), box_mask(12, 12, 28, 36))
    assert len(gsam.detector.captions) > 1
    for caption in gsam.detector.captions:
        assert len(processor.tokenizer(caption)["input_ids"]) <= 32
    with pytest.raises(ValueError, match="max_text_len"):
        gsam(photo, ["cat " * 40])


def test_tiny_grounding_dino_with_segment_anything_checkpoint(detector, photo, tmp_path):
    model, processor, folder = detector
    sam = tiny_segment_anything()
    checkpoint = tmp_path / "tiny_sam.pth"
    torch.save(sam.state_dict(), checkpoint)

    gsam = GroundedSAM.from_pretrained(
        folder, checkpoint, sam_type=tiny_segment_anything, box_threshold=0.0, text_threshold=0.0, dilation=1
    )
    for name, tensor in sam.state_dict().items():
        assert torch.equal(gsam.segment_boxes.predictor.model.state_dict()[name], tensor), name

    phrases = ["a cat", "chopsticks", "fried rice"]
    check_masks(gsam(photo, phrases), 3)

    # the mask is SAM's mask for the phrase's best box, as segment_anything's own numpy predictor makes it
    from segment_anything import SamPredictor

    boxes, _ = gsam.detect(photo, phrases)
    predictor = SamPredictor(sam)
    predictor.set_image(np.asarray(photo))
    undilated = GroundedSAM(model, processor, sam, box_threshold=0.0, text_threshold=0.0)(photo, phrases)
    for mask, box in zip(undilated, boxes.numpy()):
        expected, _, _ = predictor.predict(box=box, multimask_output=False)
        np.testing.assert_array_equal(np.asarray(mask) > 0, expected[0])


def test_segment_anything_checkpoints_load_weights_only(tmp_path):
    from safetensors.torch import save_file

    sam = tiny_segment_anything()
    save_file(sam.state_dict(), tmp_path / "tiny.safetensors")
    loaded = load_segment_anything(tmp_path / "tiny.safetensors", sam_type=tiny_segment_anything)
    for name, tensor in sam.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name

    class Payload:  # unpickling this would run code
        def __reduce__(self):
            return (os.system, ("echo unpickled",))

    torch.save({**sam.state_dict(), "payload": Payload()}, tmp_path / "sam_vit_b_evil.pth")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_segment_anything(tmp_path / "sam_vit_b_evil.pth")  # sam_type read from the name

    torch.save(sam.state_dict(), tmp_path / "tiny.pth")
    with pytest.raises(ValueError, match="sam_type"):
        load_segment_anything(tmp_path / "tiny.pth")
    with pytest.raises(ValueError, match="sam_type"):
        load_segment_anything(tmp_path / "tiny.pth", sam_type="vit_x")
    with pytest.raises(ValueError, match="does not fit"):
        load_segment_anything(tmp_path / "tiny.pth", sam_type=lambda: tiny_segment_anything().image_encoder)
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        load_segment_anything(tmp_path / "missing_vit_b.pth")


def test_tiny_grounding_dino_with_transformers_sam(detector, photo, tmp_path):
    model, processor, folder = detector
    sam, sam_processor = tiny_transformers_sam()
    sam.save_pretrained(tmp_path)
    sam_processor.save_pretrained(tmp_path)

    gsam = GroundedSAM.from_pretrained(folder, str(tmp_path), box_threshold=0.0, text_threshold=0.0)
    phrases = ["a cat", "the dog"]
    masks = gsam(photo, phrases)
    check_masks(masks, 2)

    # the mask is SAM's mask for the phrase's best box (in the photo's pixel coordinates)
    boxes, _ = gsam.detect(photo, phrases)
    for mask, box in zip(masks, boxes.tolist()):
        inputs = sam_processor(images=photo, input_boxes=[[box]], return_tensors="pt")
        with torch.no_grad():
            outputs = sam(**inputs, multimask_output=False)
        expected = sam_processor.post_process_masks(
            outputs.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )[0]
        np.testing.assert_array_equal(np.asarray(mask) > 0, expected[0, 0].numpy())


def test_reduced_precision(detector, photo):
    model, processor, _ = detector
    gsam = GroundedSAM(
        copy.deepcopy(model).to(torch.bfloat16), processor, tiny_segment_anything().to(torch.bfloat16),
        box_threshold=0.0, text_threshold=0.0,
    )
    check_masks(gsam(photo, ["a cat", "the dog"]), 2)


def test_bad_inputs(detector, photo):
    model, processor, _ = detector
    sam = tiny_segment_anything()
    with pytest.raises(ValueError, match="box_threshold"):
        GroundedSAM(model, processor, sam, box_threshold=1.5)
    with pytest.raises(ValueError, match="text_threshold"):
        GroundedSAM.from_pretrained("never/loaded", "never/loaded", text_threshold=-0.1)
    with pytest.raises(ValueError, match="dilation"):
        GroundedSAM(model, processor, sam, dilation=-1)
    with pytest.raises(ValueError, match="sam_processor"):
        GroundedSAM(model, processor, tiny_transformers_sam()[0])
    with pytest.raises(ValueError, match="`sam`"):
        GroundedSAM(model, processor, "sam")
    with pytest.raises(ValueError, match="sam_type"):
        GroundedSAM.from_pretrained("never/loaded", "facebook/sam-vit-base", sam_type="vit_b")

    gsam = GroundedSAM(model, processor, sam)
    with pytest.raises(ValueError, match="image"):
        gsam(np.asarray(photo), ["cat"])
    with pytest.raises(ValueError, match="phrases"):
        gsam(photo, "cat")
    with pytest.raises(ValueError, match="phrases"):
        gsam(photo, ["cat", " . "])
    assert gsam(photo, []) == []

    wrong_size = GroundedSAM(model, processor, lambda image, boxes: torch.ones(len(boxes), 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="shape"):
        wrong_size(photo, ["cat"])


def test_as_the_pipelines_mask_generator(detector, image, tiny_pipe):
    _, processor, _ = detector
    # the pipeline's test image is 64x64: boxes in relative coordinates, the stub fills them
    gsam = GroundedSAM(
        StubDetector(
            processor.tokenizer, [("cat", 0.9, (0.25, 0.5, 0.25, 0.5)), ("blanket", 0.8, (0.75, 0.5, 0.25, 1.0))]
        ),
        processor,
        fill_boxes,
    )
    output = tiny_pipe(
        image,
        "a photo of a cat on a blanket",
        "a photo of a dog on a bed",
        edits=[("cat", "dog"), ("blanket", "bed")],
        mask_generator=gsam,
        num_inference_steps=4,
    )
    expected = gsam(Image.new("RGB", (64, 64)), ["cat", "blanket"])  # the stubs only look at the image's size
    assert len(output.search) == 2
    for record, mask in zip(output.search, expected):
        np.testing.assert_array_equal(np.asarray(record.mask), np.asarray(mask))
