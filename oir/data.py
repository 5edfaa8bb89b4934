"""Edit records and the readers of the datasets OIR is evaluated on.

One record type, :class:`EditRecord` (an image, a source and a target prompt, the editing pairs with their masks and
guided prompts, and per-record pipeline options such as the reassembly step), and three readers:

* :func:`read_spec`: this project's YAML edit spec (one record, or ``records:``), shared with ``oir edit --spec``;
* :func:`read_oir_bench`: the authors' OIR-Bench YAML (a mapping of records keyed by id, multi-object records with
  ``origin_change`` / ``prompt_change`` / ``prompt_change_mask``, single-object records with ``target_changes``);
* :func:`read_pie_bench`: PIE-Bench's ``mapping_file.json`` (prompts with ``[bracketed]`` differences and a
  run-length-encoded 512x512 mask per record).

Every reader validates every record and returns ``(records, problems)``: a bad record is reported as one
:class:`RecordProblem` per bad field (record id, field, message) and left out, without stopping the others.
:func:`load_spec` and :func:`load_dataset` raise a :class:`DatasetError` listing all problems instead (or, with
``on_error="skip"``, log them and return the good records).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import PIL.Image

from pipeline_oir import Edit, OIRPipeline, derive_edits, guided_prompts, mask_to_tensor


logger = logging.getLogger(__name__)

__all__ = [
    "AUTHORS_NUM_INFERENCE_STEPS",
    "DatasetError",
    "EditRecord",
    "PIE_BENCH_MASK_SHAPE",
    "RLEMask",
    "RecordProblem",
    "decode_pie_rle",
    "detect_format",
    "encode_pie_rle",
    "load_dataset",
    "load_spec",
    "open_mask",
    "read_dataset",
    "read_oir_bench",
    "read_pie_bench",
    "read_spec",
]

#: The authors' code runs 50 DDIM steps; OIR-Bench's integer ``reassembly_step`` / ``reinversion_steps`` count in them.
AUTHORS_NUM_INFERENCE_STEPS = 50
#: PIE-Bench's masks are run-length encoded over a 512x512 image, row-major.
PIE_BENCH_MASK_SHAPE = (512, 512)
FORMATS = ("spec", "oir-bench", "pie-bench")

# Arguments of OIRPipeline.__call__ that a record's `options` may not set: they come from the record itself or the
# runner.
_NOT_OPTIONS = {
    "self", "image", "source_prompt", "target_prompt", "edits", "masks", "inversion", "generator", "output_type",
    "return_dict", "mask_generator",
}
# Extra per-record options understood by the runners (not pipeline arguments).
_EXTRA_OPTIONS = {"seed"}
# Command-line flag names a spec may use in `options` instead of the pipeline's argument names.
OPTION_ALIASES = {"steps": "num_inference_steps", "guidance": "guidance_scale"}


def _pipeline_options() -> set[str]:
    parameters = inspect.signature(OIRPipeline.__call__).parameters
    return (set(parameters) - _NOT_OPTIONS) | _EXTRA_OPTIONS


# ----------------------------------------------------------------------------------------------------------------------
# Problems
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordProblem:
    """One bad field of one record: ``record_id`` (or ``"<file>"`` for the file itself), ``field`` and why."""

    record_id: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"record {self.record_id!r}, field {self.field!r}: {self.message}"

    def to_dict(self) -> dict:
        return {"record_id": self.record_id, "field": self.field, "message": self.message}


class DatasetError(ValueError):
    """A dataset or spec file with bad records; ``problems`` lists every one of them."""

    def __init__(self, problems: Sequence[RecordProblem], path: str | os.PathLike | None = None):
        self.problems = list(problems)
        self.path = None if path is None else str(path)
        where = f" in {self.path}" if self.path else ""
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"{len(self.problems)} problem(s){where}:\n{lines}")


# ----------------------------------------------------------------------------------------------------------------------
# PIE-Bench run-length encoding
# ----------------------------------------------------------------------------------------------------------------------


def decode_pie_rle(counts: Sequence[int], shape: tuple[int, int] = PIE_BENCH_MASK_SHAPE) -> np.ndarray:
    """Decodes a PIE-Bench mask: ``counts`` is a flat list ``[start_0, length_0, start_1, length_1, ...]`` of runs of
    ones over the row-major flattened ``shape`` (512x512). A run is cut at the end of the image; runs may overlap.

    Returns a boolean array of ``shape``. (PIE-Bench's own evaluation additionally sets the one-pixel image border to
    1 "to avoid annotation errors"; that is an evaluation choice, not part of the encoding, and is not done here.)
    """
    values = np.asarray(counts)
    if values.ndim != 1 or len(values) % 2 or (len(values) and not np.issubdtype(values.dtype, np.integer)):
        raise ValueError("a PIE-Bench mask must be a flat list of integers [start, length, start, length, ...].")
    values = values.astype(np.int64)
    height, width = shape
    size = height * width
    starts, lengths = values[0::2], values[1::2]
    if (starts < 0).any() or (lengths < 0).any():
        raise ValueError("a PIE-Bench mask has a negative run start or length.")
    inside = starts < size
    starts, ends = starts[inside], np.minimum(starts[inside] + lengths[inside], size)
    delta = np.zeros(size + 1, dtype=np.int64)
    np.add.at(delta, starts, 1)
    np.add.at(delta, ends, -1)
    return (np.cumsum(delta[:-1]) > 0).reshape(height, width)


def encode_pie_rle(mask: np.ndarray) -> list[int]:
    """The inverse of :func:`decode_pie_rle`: maximal runs of nonzero pixels of a 2-D mask, row-major."""
    flat = np.asarray(mask).astype(bool).reshape(-1)
    padded = np.concatenate([[False], flat, [False]])
    changes = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = changes[0::2], changes[1::2]
    return [int(v) for pair in zip(starts, ends - starts) for v in pair]


@dataclass
class RLEMask:
    """A run-length-encoded mask (PIE-Bench format), decoded on demand."""

    counts: list[int]
    shape: tuple[int, int] = PIE_BENCH_MASK_SHAPE

    def decode(self) -> np.ndarray:
        return decode_pie_rle(self.counts, self.shape)

    def to_image(self) -> PIL.Image.Image:
        return PIL.Image.fromarray(self.decode().astype(np.uint8) * 255, mode="L")


# ----------------------------------------------------------------------------------------------------------------------
# The record
# ----------------------------------------------------------------------------------------------------------------------


MaskSource = Any  # a path, an RLEMask, a numpy array, a torch tensor or a PIL image


def open_mask(mask: MaskSource) -> PIL.Image.Image:
    """Any mask (a path, an :class:`RLEMask`, an array, a tensor or an image) as a binary ``"L"`` image (0 / 255)."""
    if isinstance(mask, RLEMask):
        return mask.to_image()
    if isinstance(mask, (str, os.PathLike)):
        with PIL.Image.open(mask) as opened:
            mask = opened.copy()
    binary = (mask_to_tensor(mask).numpy() >= 0.5).astype(np.uint8) * 255
    return PIL.Image.fromarray(binary, mode="L")


@dataclass
class EditRecord:
    """One image to edit, as every reader returns it.

    Args:
        id (`str`): unique within its dataset.
        image (`str` or `PIL.Image.Image`): the input image (a resolved path, or an image).
        source_prompt (`str`): ``P_o``.
        target_prompt (`str`): ``P_t``.
        edits (`list[Edit]`, *optional*): the editing pairs, with their guided prompts and mask phrases where the
            dataset gives them; ``None``: derived from a word diff of the prompts (:meth:`resolved_edits`).
        masks (`list`, *optional*): one mask per edit (a path, an :class:`RLEMask`, an array or an image).
        options (`dict`): per-record keyword arguments of :class:`~pipeline_oir.OIRPipeline` (``num_inference_steps``,
            ``reassembly_step``, ``reinversion_steps``, ``optimal_steps``, ...) and ``seed``.
        meta (`dict`): what the dataset says beyond that (editing type, instruction, source file, ...).
    """

    id: str
    image: str | PIL.Image.Image
    source_prompt: str
    target_prompt: str
    edits: list[Edit] | None = None
    masks: list[MaskSource] | None = None
    options: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def load_image(self) -> PIL.Image.Image:
        """The input image, RGB."""
        if isinstance(self.image, PIL.Image.Image):
            return self.image.convert("RGB")
        with PIL.Image.open(self.image) as image:
            return image.convert("RGB")

    def load_masks(self) -> list[PIL.Image.Image] | None:
        """The masks as binary PIL ``"L"`` images (0 / 255) at their own resolution, or ``None``."""
        return None if self.masks is None else [open_mask(mask) for mask in self.masks]

    def resolved_edits(self) -> list[Edit]:
        """The editing pairs, derived from the prompts when the record gives none."""
        if self.edits is not None:
            return [Edit.from_any(edit) for edit in self.edits]
        return derive_edits(self.source_prompt, self.target_prompt)

    def pipeline_kwargs(self) -> dict:
        """Keyword arguments for :class:`~pipeline_oir.OIRPipeline` (without ``seed``)."""
        kwargs = {k: v for k, v in self.options.items() if k not in _EXTRA_OPTIONS}
        kwargs.update(
            image=self.load_image(),
            source_prompt=self.source_prompt,
            target_prompt=self.target_prompt,
            edits=None if self.edits is None else list(self.edits),
            masks=self.load_masks(),
        )
        return kwargs

    def to_dict(self) -> dict:
        """A JSON-friendly summary (masks as paths, or ``"rle"`` / ``"array"``)."""

        def describe(mask):
            if isinstance(mask, (str, os.PathLike)):
                return str(mask)
            return "rle" if isinstance(mask, RLEMask) else type(mask).__name__

        return {
            "id": self.id,
            "image": self.image if isinstance(self.image, str) else "<image>",
            "source_prompt": self.source_prompt,
            "target_prompt": self.target_prompt,
            "edits": None if self.edits is None else [vars(Edit.from_any(e)) for e in self.edits],
            "masks": None if self.masks is None else [describe(m) for m in self.masks],
            "options": dict(self.options),
            "meta": dict(self.meta),
        }


# ----------------------------------------------------------------------------------------------------------------------
# Shared validation
# ----------------------------------------------------------------------------------------------------------------------


class _Checker:
    """Collects the problems of one record."""

    def __init__(self, record_id: str):
        self.record_id = record_id
        self.problems: list[RecordProblem] = []

    def add(self, field_name: str, message: str) -> None:
        self.problems.append(RecordProblem(self.record_id, field_name, message))

    def string(self, data: dict, key: str, required: bool = True, prefix: str = "") -> str | None:
        value = data.get(key)
        if value is None:
            if required:
                self.add(prefix + key, "is required")
            return None
        if not isinstance(value, str) or not value.strip():
            self.add(prefix + key, f"must be a non-empty string, got {value!r}")
            return None
        return value

    def unknown_keys(self, data: dict, allowed: Iterable[str], prefix: str = "") -> None:
        for key in sorted(set(data) - set(allowed), key=str):
            self.add(f"{prefix}{key}", f"unknown field (expected one of: {', '.join(sorted(allowed))})")

    def image_file(self, field_name: str, path: Path | None) -> None:
        if path is None:
            return
        if not path.is_file():
            self.add(field_name, f"file not found: {path}")
            return
        try:
            with PIL.Image.open(path) as image:
                image.size  # noqa: B018 - reads the header only
        except (OSError, PIL.UnidentifiedImageError) as error:
            self.add(field_name, f"not a readable image: {path} ({error})")

    def options(self, options: Any, field_name: str = "options") -> dict:
        if options is None:
            return {}
        if not isinstance(options, dict):
            self.add(field_name, f"must be a mapping of pipeline options, got {type(options).__name__}")
            return {}
        allowed = _pipeline_options()
        options = dict(options)
        for alias, name in OPTION_ALIASES.items():
            if alias in options:
                if name in options:
                    self.add(f"{field_name}.{alias}", f"give either {alias!r} or {name!r}, not both")
                options[name] = options.pop(alias)
        for key in sorted(set(options) - allowed, key=str):
            self.add(f"{field_name}.{key}", f"unknown option (expected one of: {', '.join(sorted(allowed | set(OPTION_ALIASES)))})")
        for key in ("num_inference_steps", "seed", "candidate_batch_size"):
            value = options.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < (key != "seed")):
                self.add(f"{field_name}.{key}", f"must be a {'non-negative' if key == 'seed' else 'positive'} integer, got {value!r}")
        for key in ("guidance_scale", "reassembly_step", "reinversion_steps"):
            value = options.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                self.add(f"{field_name}.{key}", f"must be a non-negative number, got {value!r}")
        for key in ("optimal_steps", "search_steps"):
            value = options.get(key)
            if value is not None and not (
                isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
            ):
                self.add(f"{field_name}.{key}", f"must be a non-empty list of positive integers, got {value!r}")
        return {k: v for k, v in options.items() if k in allowed}

    def edits(self, source_prompt: str | None, target_prompt: str | None, edits: list[Edit] | None) -> None:
        """The edits must be derivable (when not given) and their source phrases must be in the source prompt."""
        if source_prompt is None or target_prompt is None:
            return
        try:
            edits = derive_edits(source_prompt, target_prompt) if edits is None else edits
        except ValueError as error:
            self.add("edits", f"cannot be derived from the prompts ({error}); list them explicitly")
            return
        for k, edit in enumerate(edits):
            if not edit.target.strip():
                self.add(f"edits[{k}].target", "must be a non-empty phrase")
        try:
            guided_prompts(source_prompt, edits)
        except ValueError as error:
            match = re.match(r"`edits\[(\d+)\]`", str(error))
            self.add(f"edits[{match.group(1)}].source" if match else "edits", str(error))


def _load_yaml(path: Path) -> Any:
    import yaml

    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _resolve(path_value: str, bases: Sequence[Path]) -> Path:
    """An absolute path that exists, else the first base that holds ``path_value``; else the first candidate."""
    path = Path(os.path.expanduser(path_value))
    candidates = [path] if path.is_absolute() else [base / path for base in bases]
    # Paths written on the authors' machines (e.g. /home/<user>/code/OIR/OIR-Bench/...): look for the part from
    # "OIR-Bench" on under the bases too.
    parts = path.parts
    if "OIR-Bench" in parts:
        tail = Path(*parts[parts.index("OIR-Bench") :])
        candidates += [base / tail for base in bases]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    return candidates[0]


def _duplicates(records: list[EditRecord], problems: list[RecordProblem]) -> list[EditRecord]:
    seen, unique = set(), []
    for record in records:
        if record.id in seen:
            problems.append(RecordProblem(record.id, "id", "duplicate id (the later record is left out)"))
            continue
        seen.add(record.id)
        unique.append(record)
    return unique


# ----------------------------------------------------------------------------------------------------------------------
# Our spec format
# ----------------------------------------------------------------------------------------------------------------------

_SPEC_KEYS = {"id", "image", "source_prompt", "target_prompt", "edits", "options"}
_SPEC_EDIT_KEYS = {"source", "target", "mask", "guided_prompt", "mask_phrase"}


def _spec_record(data: Any, record_id: str, base: Path) -> tuple[EditRecord | None, list[RecordProblem]]:
    check = _Checker(record_id)
    if not isinstance(data, dict):
        check.add("<record>", f"must be a mapping, got {type(data).__name__}")
        return None, check.problems
    check.unknown_keys(data, _SPEC_KEYS)
    image = check.string(data, "image")
    image_path = None if image is None else _resolve(image, [base])
    check.image_file("image", image_path)
    source_prompt = check.string(data, "source_prompt")
    target_prompt = check.string(data, "target_prompt")
    options = check.options(data.get("options"))

    edits, masks = None, None
    raw_edits = data.get("edits")
    if raw_edits is not None:
        if not isinstance(raw_edits, list) or not raw_edits:
            check.add("edits", "must be a non-empty list of {source, target} mappings")
        else:
            edits, masks = [], []
            for k, raw in enumerate(raw_edits):
                name = f"edits[{k}]"
                if not isinstance(raw, dict):
                    check.add(name, f"must be a mapping with 'source' and 'target', got {raw!r}")
                    continue
                check.unknown_keys(raw, _SPEC_EDIT_KEYS, prefix=f"{name}.")
                source = check.string(raw, "source", prefix=f"{name}.")
                target = check.string(raw, "target", prefix=f"{name}.")
                guided = check.string(raw, "guided_prompt", required=False, prefix=f"{name}.")
                phrase = check.string(raw, "mask_phrase", required=False, prefix=f"{name}.")
                mask = check.string(raw, "mask", required=False, prefix=f"{name}.")
                mask_path = None if mask is None else _resolve(mask, [base])
                if mask_path is not None:
                    check.image_file(f"{name}.mask", mask_path)
                if source is not None and target is not None:
                    edits.append(Edit(source, target, guided, phrase))
                masks.append(None if mask_path is None else str(mask_path))
            given = [m is not None for m in masks]
            if any(given) and not all(given):
                check.add("edits", "give a mask for every edit or for none")
            masks = masks if given and all(given) else None
            if len(edits) != len(raw_edits):
                edits = None
    if edits is not None or raw_edits is None:
        check.edits(source_prompt, target_prompt, edits)
    if options.get("optimal_steps") is not None and edits is not None and len(options["optimal_steps"]) != len(edits):
        check.add("options.optimal_steps", f"must hold one step per edit ({len(edits)})")
    if check.problems:
        return None, check.problems
    record = EditRecord(
        id=record_id,
        image=str(image_path),
        source_prompt=source_prompt,
        target_prompt=target_prompt,
        edits=edits,
        masks=masks,
        options=options,
        meta={"format": "spec"},
    )
    return record, []


def read_spec(path: str | os.PathLike) -> tuple[list[EditRecord], list[RecordProblem]]:
    """Reads this project's edit spec (see the README): one record, or ``records:`` with unique ``id``\\ s. Paths are
    relative to the spec file."""
    path = Path(path)
    try:
        data = _load_yaml(path)
    except Exception as error:  # yaml.YAMLError, OSError, UnicodeDecodeError
        return [], [RecordProblem("<file>", "<file>", f"cannot read {path}: {error}")]
    base = path.parent
    if not isinstance(data, dict):
        return [], [RecordProblem("<file>", "<file>", "a spec must be a mapping (one record) or have `records:`")]
    records, problems = [], []
    if "records" in data:
        extra = set(data) - {"records"}
        if extra:
            problems.append(RecordProblem("<file>", ", ".join(sorted(extra)), "unknown top-level field(s) beside `records`"))
        raw_records = data["records"]
        if not isinstance(raw_records, list) or not raw_records:
            return [], problems + [RecordProblem("<file>", "records", "must be a non-empty list of records")]
        for index, raw in enumerate(raw_records):
            record_id = raw.get("id") if isinstance(raw, dict) else None
            if not isinstance(record_id, (str, int)) or isinstance(record_id, bool) or str(record_id).strip() == "":
                problems.append(RecordProblem(f"#{index}", "id", "every record of `records:` needs a unique `id`"))
                continue
            record, record_problems = _spec_record(raw, str(record_id), base)
            problems += record_problems
            if record is not None:
                records.append(record)
    else:
        record_id = data.get("id", path.stem)
        record, record_problems = _spec_record(data, str(record_id), base)
        problems += record_problems
        if record is not None:
            records.append(record)
    return _duplicates(records, problems), problems


def load_spec(path: str | os.PathLike) -> list[EditRecord]:
    """Reads an edit spec; raises :class:`DatasetError` listing every problem if any record is bad."""
    records, problems = read_spec(path)
    if problems:
        raise DatasetError(problems, path)
    return records


# ----------------------------------------------------------------------------------------------------------------------
# OIR-Bench (the authors' YAML)
# ----------------------------------------------------------------------------------------------------------------------

_OIR_MULTI_KEYS = {
    "image_path", "origin_prompt", "target_prompt", "guided_prompt", "origin_change", "prompt_change",
    "prompt_change_mask", "reassembly_step", "reinversion_steps", "generation_image_path",
}
_OIR_SINGLE_KEYS = {
    "image_path", "origin_prompt", "target_prompt_list", "target_changes", "origin_prompt_mask", "generation_image_path",
}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "edit"


def _string_list(check: _Checker, data: dict, key: str, length: int | None = None) -> list[str] | None:
    value = data.get(key)
    if value is None:
        check.add(key, "is required")
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        check.add(key, f"must be a non-empty list of strings, got {value!r}")
        return None
    if length is not None and len(value) != length:
        check.add(key, f"must have one entry per edit ({length}), got {len(value)}")
        return None
    return value


def _oir_steps(check: _Checker, data: dict, key: str, options: dict) -> None:
    value = data.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        check.add(key, f"must be a non-negative number of steps, got {value!r}")
    elif isinstance(value, float) and value < 1:
        options[key] = float(value)
    elif float(value) != int(value) or value >= AUTHORS_NUM_INFERENCE_STEPS:
        check.add(key, f"must be an integer number of steps below {AUTHORS_NUM_INFERENCE_STEPS}, got {value!r}")
    else:
        # The authors count in their fixed 50 steps: kept as a share of N so that it holds for any N.
        options[key] = int(value) / AUTHORS_NUM_INFERENCE_STEPS


def _oir_multi(record_id: str, data: dict, bases: list[Path]) -> tuple[list[EditRecord], list[RecordProblem]]:
    check = _Checker(record_id)
    check.unknown_keys(data, _OIR_MULTI_KEYS)
    image = check.string(data, "image_path")
    image_path = None if image is None else _resolve(image, bases)
    check.image_file("image_path", image_path)
    source_prompt = check.string(data, "origin_prompt")
    target_prompt = check.string(data, "target_prompt")
    sources = _string_list(check, data, "origin_change")
    count = None if sources is None else len(sources)
    targets = _string_list(check, data, "prompt_change", count)
    mask_values = _string_list(check, data, "prompt_change_mask", count)
    guided = data.get("guided_prompt")
    prompts = None
    if guided is not None:
        if not isinstance(guided, list) or (count is not None and len(guided) != count) or not all(
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair) for pair in guided
        ):
            check.add("guided_prompt", f"must be one [prefix, suffix] pair of strings per edit, got {guided!r}")
        elif targets is not None:
            prompts = [prefix + target + suffix for (prefix, suffix), target in zip(guided, targets)]
    masks = None
    if mask_values is not None:
        masks = []
        for k, value in enumerate(mask_values):
            mask_path = _resolve(value, bases)
            check.image_file(f"prompt_change_mask[{k}]", mask_path)
            masks.append(str(mask_path))
    options: dict = {}
    _oir_steps(check, data, "reassembly_step", options)
    _oir_steps(check, data, "reinversion_steps", options)
    edits = None
    if sources is not None and targets is not None:
        edits = [
            Edit(source.strip(), target.strip(), None if prompts is None else prompts[k], source.strip())
            for k, (source, target) in enumerate(zip(sources, targets))
        ]
        check.edits(source_prompt, target_prompt, edits)
    if check.problems:
        return [], check.problems
    record = EditRecord(
        id=record_id,
        image=str(image_path),
        source_prompt=source_prompt,
        target_prompt=target_prompt,
        edits=edits,
        masks=masks,
        options=options,
        meta={"format": "oir-bench", "variant": "multi_object", "authors_steps": {
            k: data[k] for k in ("reassembly_step", "reinversion_steps") if k in data}},
    )
    return [record], []


def _oir_single(record_id: str, data: dict, bases: list[Path]) -> tuple[list[EditRecord], list[RecordProblem]]:
    check = _Checker(record_id)
    check.unknown_keys(data, _OIR_SINGLE_KEYS)
    image = check.string(data, "image_path")
    image_path = None if image is None else _resolve(image, bases)
    check.image_file("image_path", image_path)
    source_prompt = check.string(data, "origin_prompt")
    affixes = data.get("target_prompt_list")
    if not (isinstance(affixes, list) and len(affixes) == 2 and all(isinstance(a, str) for a in affixes)):
        check.add("target_prompt_list", f"must be a [prefix, suffix] pair of strings, got {affixes!r}")
        affixes = None
    changes = _string_list(check, data, "target_changes")
    mask = check.string(data, "origin_prompt_mask")
    mask_path = None if mask is None else _resolve(mask, bases)
    check.image_file("origin_prompt_mask", mask_path)
    source = None
    if affixes is not None and source_prompt is not None:
        prefix, suffix = affixes
        if (
            source_prompt.startswith(prefix)
            and source_prompt.endswith(suffix)
            and len(source_prompt) > len(prefix) + len(suffix)
        ):
            source = source_prompt[len(prefix) : len(source_prompt) - len(suffix)].strip()
        else:
            check.add(
                "target_prompt_list",
                f"the origin_prompt {source_prompt!r} must be prefix + object + suffix for {affixes!r}",
            )
    if check.problems:
        return [], check.problems
    prefix, suffix = affixes
    records = []
    for change in changes:
        target_prompt = prefix + change + suffix
        records.append(
            EditRecord(
                id=f"{record_id}-{_slug(change)}",
                image=str(image_path),
                source_prompt=source_prompt,
                target_prompt=target_prompt,
                edits=[Edit(source, change.strip(), target_prompt, source)],
                masks=[str(mask_path)],
                options={},
                meta={"format": "oir-bench", "variant": "single_object", "source_id": record_id},
            )
        )
    return records, []


_AUTHORS_TASK_KEYS = {"multi_object", "single_object"}


def read_oir_bench(
    path: str | os.PathLike, root: str | os.PathLike | None = None
) -> tuple[list[EditRecord], list[RecordProblem]]:
    """Reads the authors' OIR-Bench YAML: a mapping ``{id: record}`` of multi-object records (``origin_change``,
    ``prompt_change``, ``prompt_change_mask``, ``guided_prompt`` as ``[prefix, suffix]`` pairs, ``reassembly_step``,
    ``reinversion_steps``) and/or single-object records (``target_prompt_list`` = ``[prefix, suffix]``,
    ``target_changes``, ``origin_prompt_mask``; one record per target change, id ``<id>-<change>``).

    ``path`` may also be a folder of such YAML files, e.g. one per record as the authors' ``configs/*.yaml``, whose
    generic keys ``multi_object`` / ``single_object`` then take the file's stem as id.

    Relative paths are looked up under ``root`` (default: the YAML's folder, then its parent, as in the authors'
    repository where ``configs/*.yaml`` name ``OIR-Bench/...``). Integer step counts are the authors' (of 50 steps)
    and become shares of ``N`` (10 -> 0.2).
    """
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".yaml", ".yml")) if path.is_dir() else [path]
    if not files:
        return [], [RecordProblem("<file>", "<file>", f"no YAML files in {path}")]
    records, problems = [], []
    for file in files:
        try:
            data = _load_yaml(file)
        except Exception as error:
            problems.append(RecordProblem("<file>", "<file>", f"cannot read {file}: {error}"))
            continue
        if not isinstance(data, dict) or not data:
            problems.append(RecordProblem(
                "<file>", "<file>", f"{file.name}: OIR-Bench YAML must be a non-empty mapping of records by id"))
            continue
        bases = [Path(root)] if root is not None else [file.parent, file.parent.parent]
        for record_id, raw in data.items():
            record_id = str(record_id)
            if path.is_dir() and record_id in _AUTHORS_TASK_KEYS and len(data) == 1:
                record_id = file.stem
            if not isinstance(raw, dict):
                problems.append(RecordProblem(record_id, "<record>", f"must be a mapping, got {type(raw).__name__}"))
                continue
            if "prompt_change" in raw or "origin_change" in raw:
                new, new_problems = _oir_multi(record_id, raw, bases)
            elif "target_changes" in raw or "target_prompt_list" in raw:
                new, new_problems = _oir_single(record_id, raw, bases)
            else:
                new, new_problems = [], [RecordProblem(
                    record_id, "<record>",
                    "neither a multi-object record (origin_change, prompt_change, ...) nor a single-object record "
                    "(target_prompt_list, target_changes, ...)",
                )]
            records += new
            problems += new_problems
    return _duplicates(records, problems), problems


# ----------------------------------------------------------------------------------------------------------------------
# PIE-Bench (mapping_file.json)
# ----------------------------------------------------------------------------------------------------------------------

_PIE_KEYS = {
    "image_path", "original_prompt", "editing_prompt", "editing_instruction", "editing_type_id", "blended_word", "mask",
}
_BRACKETS = re.compile(r"\[([^\[\]]*)\]")


def _clean_prompt(prompt: str) -> str:
    return re.sub(r"\s+", " ", prompt.replace("[", "").replace("]", "")).strip()


def _bracket_span(prompt: str, clean: str) -> tuple[int, int] | None:
    """The span of ``clean`` (the prompt without brackets) from the first to the last bracketed text."""
    spans, cursor = [], 0
    for text in _BRACKETS.findall(prompt):
        text = re.sub(r"\s+", " ", text).strip()
        if not text:
            continue
        start = clean.find(text, cursor)
        if start < 0:
            continue
        spans.append((start, start + len(text)))
        cursor = start + len(text)
    return (spans[0][0], spans[-1][1]) if spans else None


def _phrase_with_word(clean: str, span: tuple[int, int], word: str) -> str:
    """The smallest span of ``clean`` covering ``span`` and the nearest whole-word occurrence of ``word``
    (e.g. "[rusty]" and "bicycle" in "a slanted rusty mountain bicycle" -> "rusty mountain bicycle")."""
    start, end = span
    if word:
        matches = [m.span() for m in re.finditer(r"(?<!\w)" + re.escape(word) + r"(?!\w)", clean, re.IGNORECASE)]
        if matches and not any(start <= a and b <= end for a, b in matches):
            a, b = min(matches, key=lambda m: min(abs(m[0] - end), abs(start - m[1])))
            start, end = min(start, a), max(end, b)
    return clean[start:end]


def _pie_record(record_id: str, data: dict, bases: list[Path]) -> tuple[EditRecord | None, list[RecordProblem]]:
    check = _Checker(record_id)
    check.unknown_keys(data, _PIE_KEYS)
    image = check.string(data, "image_path")
    image_path = None if image is None else _resolve(image, bases)
    check.image_file("image_path", image_path)
    original = check.string(data, "original_prompt")
    editing = check.string(data, "editing_prompt")
    blended = data.get("blended_word", "")
    if not isinstance(blended, str):
        check.add("blended_word", f"must be a string ('source_word target_word' or ''), got {blended!r}")
        blended = ""
    blended_words = blended.split()
    if blended_words and len(blended_words) != 2:
        check.add("blended_word", f"must be two words ('source target') or empty, got {blended!r}")
    counts = data.get("mask")
    mask = None
    if counts is None:
        check.add("mask", "is required")
    else:
        try:
            decoded = decode_pie_rle(counts)
        except (ValueError, TypeError) as error:
            check.add("mask", str(error))
        else:
            if not decoded.any():
                check.add("mask", "is empty: there is no region to edit")
            mask = RLEMask([int(c) for c in counts])
    edits = None
    if original is not None and editing is not None:
        source_prompt, target_prompt = _clean_prompt(original), _clean_prompt(editing)
        source_span = _bracket_span(original, source_prompt)
        target_span = _bracket_span(editing, target_prompt)
        word_source, word_target = blended_words if len(blended_words) == 2 else ("", "")
        # One edit per record (PIE-Bench has one mask); its guided prompt is the editing prompt itself. The source
        # phrase is the bracketed text of the original prompt (else the blended source word); the target phrase,
        # which the search scores, is the bracketed text of the editing prompt extended to the blended target word
        # ("[rusty] mountain bicycle"), or the whole editing prompt where nothing is bracketed (a deletion).
        source_phrase = source_prompt[source_span[0] : source_span[1]] if source_span else word_source
        target_phrase = _phrase_with_word(target_prompt, target_span, word_target) if target_span else target_prompt
        edits = [
            Edit(
                source=source_phrase or source_prompt,
                target=target_phrase,
                guided_prompt=target_prompt,
                mask_phrase=word_source or source_phrase or None,
            )
        ]
        if source_prompt == target_prompt:
            check.add("editing_prompt", "is the same as the original prompt: there is nothing to edit")
    if check.problems:
        return None, check.problems
    meta = {"format": "pie-bench", "blended_word": blended}
    for key in ("editing_type_id", "editing_instruction"):
        if key in data:
            meta[key] = data[key]
    return (
        EditRecord(
            id=record_id,
            image=str(image_path),
            source_prompt=source_prompt,
            target_prompt=target_prompt,
            edits=edits,
            masks=[mask],
            options={},
            meta=meta,
        ),
        [],
    )


def read_pie_bench(
    path: str | os.PathLike, root: str | os.PathLike | None = None
) -> tuple[list[EditRecord], list[RecordProblem]]:
    """Reads PIE-Bench's ``mapping_file.json``: ``{id: {image_path, original_prompt, editing_prompt,
    editing_instruction, editing_type_id, blended_word, mask}}``.

    Prompts lose their ``[ ]`` markers; each record has one edit (bracketed source text -> bracketed target text,
    guided prompt = the editing prompt) and its mask decoded from the run-length encoding (:func:`decode_pie_rle`).
    Images are looked up under ``root`` (default: ``annotation_images/`` beside the JSON, as PIE-Bench ships, else
    the JSON's folder).
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except Exception as error:  # OSError, json.JSONDecodeError, UnicodeDecodeError
        return [], [RecordProblem("<file>", "<file>", f"cannot read {path}: {error}")]
    if not isinstance(data, dict) or not data:
        return [], [RecordProblem("<file>", "<file>", "mapping_file.json must be a non-empty object of records by id")]
    if root is not None:
        bases = [Path(root)]
    else:
        bases = [path.parent / "annotation_images", path.parent]
    records, problems = [], []
    for record_id, raw in data.items():
        if not isinstance(raw, dict):
            problems.append(RecordProblem(str(record_id), "<record>", f"must be an object, got {type(raw).__name__}"))
            continue
        record, record_problems = _pie_record(str(record_id), raw, bases)
        problems += record_problems
        if record is not None:
            records.append(record)
    return _duplicates(records, problems), problems


# ----------------------------------------------------------------------------------------------------------------------
# Any of them
# ----------------------------------------------------------------------------------------------------------------------


def detect_format(path: str | os.PathLike) -> str:
    """``"pie-bench"`` for JSON; for YAML ``"spec"`` (``records:`` or a record with ``source_prompt``) or
    ``"oir-bench"`` (a mapping of records with ``origin_prompt``); ``"oir-bench"`` for a folder (of its YAMLs)."""
    path = Path(path)
    if path.is_dir():
        return "oir-bench"
    if path.suffix.lower() == ".json":
        return "pie-bench"
    try:
        data = _load_yaml(path)
    except Exception as error:
        raise ValueError(f"cannot read {path}: {error}") from error
    if isinstance(data, dict):
        if "records" in data or "source_prompt" in data or "image" in data:
            return "spec"
        if data and all(isinstance(v, dict) and "origin_prompt" in v for v in data.values()):
            return "oir-bench"
    raise ValueError(
        f"cannot tell the format of {path}: expected an edit spec (`records:` or `source_prompt`), an OIR-Bench YAML "
        "(records with `origin_prompt`) or a PIE-Bench mapping_file.json; pass the format explicitly"
    )


def read_dataset(
    path: str | os.PathLike, format: str | None = None, root: str | os.PathLike | None = None
) -> tuple[list[EditRecord], list[RecordProblem]]:
    """Reads any supported dataset (``format``: ``"spec"``, ``"oir-bench"``, ``"pie-bench"`` or ``None``/``"auto"``
    to detect it); returns the good records and the problems of the bad ones."""
    if not Path(path).is_file() and not (Path(path).is_dir() and format in (None, "auto", "oir-bench")):
        raise ValueError(f"dataset file not found: {path}")
    if format in (None, "auto"):
        format = detect_format(path)
    if format == "spec":
        if root is not None:
            logger.warning("`root` is ignored for edit specs: their paths are relative to the spec file.")
        return read_spec(path)
    if format == "oir-bench":
        return read_oir_bench(path, root)
    if format == "pie-bench":
        return read_pie_bench(path, root)
    raise ValueError(f"`format` must be one of {', '.join(FORMATS)} or 'auto', got {format!r}.")


def load_dataset(
    path: str | os.PathLike,
    format: str | None = None,
    root: str | os.PathLike | None = None,
    on_error: str = "raise",
) -> list[EditRecord]:
    """Like :func:`read_dataset`; with ``on_error="raise"`` a :class:`DatasetError` lists all problems, with
    ``"skip"`` they are logged as warnings and the good records returned."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"`on_error` must be 'raise' or 'skip', got {on_error!r}.")
    records, problems = read_dataset(path, format, root)
    if problems:
        if on_error == "raise":
            raise DatasetError(problems, path)
        for problem in problems:
            logger.warning("skipping: %s", problem)
    return records

