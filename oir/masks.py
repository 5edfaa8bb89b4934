"""Edit masks from phrases: Grounded-SAM (GroundingDINO finds a box for a phrase, SAM turns the box into a mask).

:class:`GroundedSAM` is a ``mask_generator`` for :class:`~pipeline_oir.OIRPipeline`: called as
``gsam(image, ["dumplings", "chopsticks"])`` it returns one binary PIL ``"L"`` mask (0 / 255, the image's size)
per phrase. Two SAM implementations are supported: transformers' ``SamModel`` (``facebook/sam-vit-base``, ...) and
Meta's ``segment_anything`` package with its original checkpoints (``sam_vit_b_01ec64.pth``, ...), which are loaded
as plain tensors (``torch.load(..., weights_only=True)`` or safetensors), never by unpickling arbitrary objects.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.image_transforms import center_to_corners_format

__all__ = [
    "DEFAULT_DETECTOR",
    "DEFAULT_SAM",
    "SEGMENT_ANYTHING_CHECKPOINTS",
    "GroundedSAM",
    "PhraseNotFoundError",
    "load_segment_anything",
]

DEFAULT_DETECTOR = "IDEA-Research/grounding-dino-tiny"
DEFAULT_SAM = "facebook/sam-vit-base"
# Meta's original SAM checkpoints (https://github.com/facebookresearch/segment-anything#model-checkpoints).
SEGMENT_ANYTHING_CHECKPOINTS = {
    "vit_b": "sam_vit_b_01ec64.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_h": "sam_vit_h_4b8939.pth",
}
_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors")


class PhraseNotFoundError(ValueError):
    """GroundingDINO found no box for a phrase above the thresholds."""

    def __init__(self, phrase: str, best_score: float, box_threshold: float, text_threshold: float):
        self.phrase = phrase
        self.best_score = best_score
        super().__init__(
            f"GroundingDINO found no box for the phrase {phrase!r}: its best score is {best_score:.3f} "
            f"(box_threshold={box_threshold}, text_threshold={text_threshold}). Lower the thresholds, rephrase it, "
            "or pass this edit's mask yourself."
        )


def _import_segment_anything():
    try:
        import segment_anything
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "SAM checkpoints in Meta's format need the `segment_anything` package: "
            "pip install segment-anything (or pip install 'oir-diffusers[masks]')"
        ) from error
    return segment_anything


def load_segment_anything(
    checkpoint: str | os.PathLike,
    sam_type: str | Callable[[], torch.nn.Module] | None = None,
    device: str | torch.device | None = None,
    torch_dtype: torch.dtype | None = None,
):
    """Builds a ``segment_anything`` SAM and loads a checkpoint into it without unpickling arbitrary objects.

    Args:
        checkpoint: a ``.pth`` / ``.pt`` file holding a plain state dict (Meta's ``sam_vit_b_01ec64.pth``,
            ``sam_vit_l_0b3195.pth``, ``sam_vit_h_4b8939.pth``), read with ``torch.load(..., weights_only=True)``,
            or a ``.safetensors`` file.
        sam_type: ``"vit_b"``, ``"vit_l"`` or ``"vit_h"`` (a key of ``segment_anything.sam_model_registry``), or a
            callable without arguments that builds the (empty) ``Sam`` module. ``None`` reads the type from the file
            name (``sam_vit_b_01ec64.pth`` -> ``"vit_b"``).
        device, torch_dtype: where to put the model.
    """
    segment_anything = _import_segment_anything()
    path = os.fspath(checkpoint)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"`checkpoint`: no SAM checkpoint file at {path!r}")

    if sam_type is None:
        name = os.path.basename(path).lower()
        matches = [key for key in SEGMENT_ANYTHING_CHECKPOINTS if key in name]
        if len(matches) != 1:
            raise ValueError(
                f"`sam_type`: cannot tell the SAM type from the file name {os.path.basename(path)!r}; pass "
                f"sam_type= one of {sorted(SEGMENT_ANYTHING_CHECKPOINTS)}"
            )
        sam_type = matches[0]
    if isinstance(sam_type, str):
        if sam_type not in segment_anything.sam_model_registry:
            known = sorted(segment_anything.sam_model_registry)
            raise ValueError(f"`sam_type` must be one of {known} or a builder, got {sam_type!r}")
        build = partial(segment_anything.sam_model_registry[sam_type], checkpoint=None)
    elif callable(sam_type):
        build = sam_type
    else:
        raise ValueError(f"`sam_type` must be a string, a callable or None, got {type(sam_type).__name__}")

    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state_dict = load_file(path)
    else:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)

    from accelerate import init_empty_weights

    # Parameters are created empty (meta) and take the checkpoint's tensors: no random initialisation of a 600M
    # model just to overwrite it. Buffers are built normally (SAM's pixel mean/std are not in the checkpoint).
    with init_empty_weights(include_buffers=False):
        sam = build()
    try:
        sam.load_state_dict(state_dict, assign=True)
    except RuntimeError as error:
        raise ValueError(f"`checkpoint` {path!r} does not fit the SAM type {sam_type!r}: {error}") from error
    return sam.to(device=device, dtype=torch_dtype).eval()


class _SegmentAnythingBoxes:
    """Box prompts -> masks with ``segment_anything.SamPredictor`` (one image embedding for all boxes)."""

    def __init__(self, sam):
        SamPredictor = _import_segment_anything().SamPredictor
        self.predictor = sam if isinstance(sam, SamPredictor) else SamPredictor(sam)

    def __call__(self, image: Image.Image, boxes: torch.Tensor) -> torch.Tensor:
        predictor = self.predictor
        # segment_anything mixes float32 tensors into its computation: run a half-precision model under autocast
        dtype = next(predictor.model.parameters()).dtype
        with torch.autocast(predictor.device.type, dtype=dtype, enabled=dtype != torch.float32):
            predictor.set_image(np.asarray(image))
            boxes = predictor.transform.apply_boxes_torch(boxes, predictor.original_size).to(predictor.device)
            masks, _, _ = predictor.predict_torch(None, None, boxes=boxes, multimask_output=False)
        predictor.reset_image()
        return masks[:, 0]


class _TransformersSamBoxes:
    """Box prompts -> masks with transformers' ``SamModel`` and ``SamProcessor``."""

    def __init__(self, model, processor):
        self.model = model
        self.processor = processor

    @torch.no_grad()
    def __call__(self, image: Image.Image, boxes: torch.Tensor) -> torch.Tensor:
        inputs = self.processor(images=image, input_boxes=[boxes.tolist()], return_tensors="pt")
        inputs = inputs.to(self.model.device, dtype=self.model.dtype)
        outputs = self.model(
            pixel_values=inputs["pixel_values"], input_boxes=inputs["input_boxes"], multimask_output=False
        )
        masks = self.processor.post_process_masks(
            outputs.pred_masks.float().cpu(), inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu()
        )[0]
        return masks[:, 0]


def _box_segmenter(sam, sam_processor):
    """Wraps a SAM of either implementation as ``(image, boxes (K, 4) xyxy pixels) -> bool masks (K, H, W)``."""
    from transformers import SamModel

    if isinstance(sam, SamModel):
        if sam_processor is None:
            raise ValueError("`sam_processor`: a transformers `SamModel` needs its `SamProcessor`")
        return _TransformersSamBoxes(sam, sam_processor)
    try:
        from segment_anything import SamPredictor
        from segment_anything.modeling import Sam
    except ImportError:  # pragma: no cover - depends on the environment
        Sam = SamPredictor = ()
    if isinstance(sam, (Sam, SamPredictor)):
        return _SegmentAnythingBoxes(sam)
    if callable(sam):
        return sam
    raise ValueError(
        "`sam` must be a transformers `SamModel`, a `segment_anything` `Sam` or `SamPredictor`, or a callable "
        f"(image, boxes) -> masks; got {type(sam).__name__}"
    )


def _normalise_phrase(phrase) -> str:
    if not isinstance(phrase, str) or not phrase.strip(" .\t\n"):
        raise ValueError(f"`phrases` must hold non-empty strings, got {phrase!r}")
    return phrase.strip(" .\t\n").lower()


def _check_options(box_threshold: float, text_threshold: float, dilation: int) -> None:
    for name, value in (("box_threshold", box_threshold), ("text_threshold", text_threshold)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"`{name}` must lie in [0, 1], got {value}")
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 0:
        raise ValueError(f"`dilation` must be a non-negative number of pixels, got {dilation!r}")


class GroundedSAM:
    """Grounded-SAM mask generator: ``(image, phrases) -> [PIL "L" mask per phrase]``.

    GroundingDINO reads all phrases in one pass as the caption ``"phrase one. phrase two."`` (its own multi-phrase
    format; captions longer than the model's ``max_text_len`` are split into several passes). As in GroundingDINO's
    post-processing, a predicted box is kept if its highest token probability exceeds ``box_threshold``, and it
    belongs to every phrase one of whose tokens exceeds ``text_threshold``. Each phrase takes its best box (highest
    probability over the phrase's tokens) and SAM turns that box into the mask. A phrase without any box raises
    :class:`PhraseNotFoundError`, never an empty mask.

    Args:
        detector: a GroundingDINO model (``AutoModelForZeroShotObjectDetection``), or any module called like one.
        detector_processor: its ``GroundingDinoProcessor`` (``AutoProcessor``), with a fast tokenizer.
        sam: a transformers ``SamModel`` (with ``sam_processor``), a ``segment_anything`` ``Sam`` or ``SamPredictor``,
            or any callable ``(image, boxes) -> masks`` taking a ``(K, 4)`` tensor of ``x0, y0, x1, y1`` pixel boxes
            and returning ``K`` boolean masks of the image's size.
        sam_processor: the ``SamProcessor`` of a transformers ``SamModel``.
        box_threshold, text_threshold: GroundingDINO thresholds (Grounded-SAM's defaults 0.35 / 0.25).
        dilation: grow every mask by this many pixels (a square neighbourhood), e.g. to cover object borders.

    Use :meth:`from_pretrained` to load the models by Hub id or path.
    """

    def __init__(
        self,
        detector,
        detector_processor,
        sam,
        sam_processor=None,
        *,
        box_threshold: float = 0.35,
        text_threshold: float = 0.25,
        dilation: int = 0,
    ):
        _check_options(box_threshold, text_threshold, dilation)
        if not getattr(getattr(detector_processor, "tokenizer", None), "is_fast", False):
            raise ValueError("`detector_processor` must be a GroundingDINO processor with a fast tokenizer")
        self.detector = detector
        self.detector_processor = detector_processor
        self.segment_boxes = _box_segmenter(sam, sam_processor)
        self.box_threshold = box_threshold
        self.text_threshold = text_threshold
        self.dilation = dilation

    @classmethod
    def from_pretrained(
        cls,
        detector: str | os.PathLike = DEFAULT_DETECTOR,
        sam: str | os.PathLike = DEFAULT_SAM,
        *,
        sam_type: str | Callable[[], torch.nn.Module] | None = None,
        device: str | torch.device | None = None,
        torch_dtype: torch.dtype | None = None,
        box_threshold: float = 0.35,
        text_threshold: float = 0.25,
        dilation: int = 0,
        **kwargs,
    ) -> "GroundedSAM":
        """Loads GroundingDINO and SAM.

        Args:
            detector: Hub id or folder of a GroundingDINO model (``IDEA-Research/grounding-dino-tiny`` or ``-base``).
            sam: Hub id or folder of a transformers SAM (``facebook/sam-vit-base``, ``-large``, ``-huge``), or the
                path of a ``segment_anything`` checkpoint file (``.pth`` / ``.pt`` / ``.safetensors``).
            sam_type: for a ``segment_anything`` checkpoint: ``"vit_b"``, ``"vit_l"``, ``"vit_h"`` or a builder
                (``None``: read from the file name). See :func:`load_segment_anything`.
            device, torch_dtype: where to put both models (``torch_dtype`` e.g. ``torch.float16`` on a GPU).
            kwargs: passed to the transformers ``from_pretrained`` calls (``cache_dir``, ``local_files_only``, ...).
        """
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor, SamModel, SamProcessor

        _check_options(box_threshold, text_threshold, dilation)
        sam_path = os.fspath(sam)
        if os.path.isfile(sam_path) or sam_path.endswith(_CHECKPOINT_SUFFIXES):
            sam_model = load_segment_anything(sam_path, sam_type, device=device, torch_dtype=torch_dtype)
            sam_processor = None
        else:
            if sam_type is not None:
                raise ValueError("`sam_type` only applies to `segment_anything` checkpoint files, not to " + sam_path)
            sam_model = SamModel.from_pretrained(sam_path, **kwargs).to(device=device, dtype=torch_dtype).eval()
            sam_processor = SamProcessor.from_pretrained(sam_path, **kwargs)
        detector_model = AutoModelForZeroShotObjectDetection.from_pretrained(detector, **kwargs)
        return cls(
            detector_model.to(device=device, dtype=torch_dtype).eval(),
            AutoProcessor.from_pretrained(detector, **kwargs),
            sam_model,
            sam_processor,
            box_threshold=box_threshold,
            text_threshold=text_threshold,
            dilation=dilation,
        )

    def __call__(self, image: Image.Image, phrases: Sequence[str]) -> list[Image.Image]:
        """One binary PIL ``"L"`` mask (0 / 255) of the image's size per phrase, in the order of ``phrases``."""
        image, phrases = self._check_inputs(image, phrases)
        if not phrases:
            return []
        unique = list(dict.fromkeys(phrases))
        boxes, _ = self._find_boxes(image, unique)
        masks = torch.as_tensor(self.segment_boxes(image, boxes)).cpu()
        expected = (len(unique), image.height, image.width)
        if tuple(masks.shape) != expected:
            raise ValueError(f"`sam` returned masks of shape {tuple(masks.shape)}, expected {expected}")
        masks = masks.bool()
        if self.dilation:
            size = 2 * self.dilation + 1
            masks = F.max_pool2d(masks[:, None].float(), size, stride=1, padding=self.dilation)[:, 0] > 0
        by_phrase = {phrase: mask for phrase, mask in zip(unique, masks.numpy())}
        return [Image.fromarray(by_phrase[phrase].astype(np.uint8) * 255, mode="L") for phrase in phrases]

    def detect(self, image: Image.Image, phrases: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each phrase's best GroundingDINO box.

        Returns ``(boxes, scores)``: a ``(K, 4)`` float tensor of ``x0, y0, x1, y1`` pixel boxes (clamped to the
        image) and the ``K`` box scores (the highest probability over the phrase's tokens), on the CPU.
        Raises :class:`PhraseNotFoundError` for the first phrase without a box.
        """
        return self._find_boxes(*self._check_inputs(image, phrases))

    def _find_boxes(self, image: Image.Image, phrases: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        boxes, scores, best_scores = self._detect(image, phrases)
        for phrase, score, best in zip(phrases, scores.tolist(), best_scores.tolist()):
            if score < 0:
                raise PhraseNotFoundError(phrase, best, self.box_threshold, self.text_threshold)
        return boxes, scores

    @torch.no_grad()
    def _detect(self, image: Image.Image, phrases: list[str]):
        """Boxes, scores (-1 where no box qualifies) and best seen scores for the phrases, in as few passes as fit."""
        caption, spans, start = "", [], 0
        for phrase in phrases:
            spans.append((start, start + len(phrase)))
            caption += phrase + ". "
            start = len(caption)
        inputs = self.detector_processor(
            images=image, text=caption.strip(), return_offsets_mapping=True, return_tensors="pt"
        )
        offsets = inputs.pop("offset_mapping")[0]
        max_text_len = self.detector.config.max_text_len
        if offsets.shape[0] > max_text_len:
            if len(phrases) == 1:
                raise ValueError(
                    f"`phrases`: {phrases[0]!r} is {offsets.shape[0]} tokens long, more than the detector's "
                    f"max_text_len ({max_text_len})"
                )
            half = len(phrases) // 2
            parts = [self._detect(image, phrases[:half]), self._detect(image, phrases[half:])]
            return tuple(torch.cat(tensors) for tensors in zip(*parts))

        parameter = next(self.detector.parameters())
        outputs = self.detector(**inputs.to(parameter.device, dtype=parameter.dtype))
        probs = outputs.logits[0].float().sigmoid().cpu()  # (queries, max_text_len)
        # token t belongs to phrase k when its characters lie inside the phrase (special tokens have empty spans)
        spans = torch.tensor(spans)
        in_phrase = (offsets[None, :, 0] >= spans[:, :1]) & (offsets[None, :, 1] <= spans[:, 1:])
        in_phrase &= (offsets[:, 1] > offsets[:, 0])[None]  # (phrases, tokens)
        phrase_probs = torch.where(in_phrase[None], probs[:, None, : offsets.shape[0]], 0.0).amax(-1)
        kept = (probs.amax(-1) > self.box_threshold)[:, None] & (phrase_probs > self.text_threshold)
        scores, best = torch.where(kept, phrase_probs, -1.0).max(0)  # (phrases,)

        size = torch.tensor([image.width, image.height] * 2, dtype=torch.float32)
        boxes = center_to_corners_format(outputs.pred_boxes[0, best].float().cpu()) * size
        boxes = boxes.clamp(torch.zeros_like(size), size)
        return boxes, scores, phrase_probs.amax(0)

    @staticmethod
    def _check_inputs(image, phrases) -> tuple[Image.Image, list[str]]:
        if not isinstance(image, Image.Image):
            raise ValueError(f"`image` must be a PIL image, got {type(image).__name__}")
        if isinstance(phrases, str) or not isinstance(phrases, Sequence):
            raise ValueError(f"`phrases` must be a list of strings, got {type(phrases).__name__}")
        return image.convert("RGB"), [_normalise_phrase(phrase) for phrase in phrases]
