"""Sharing the pipeline on the Hugging Face Hub.

A Hub repo for OIR holds code only: ``pipeline.py`` (a byte-for-byte copy of ``pipeline_oir.py``) and a ``README.md``
model card. Anyone can then load it on top of a Stable Diffusion 1.x checkpoint::

    DiffusionPipeline.from_pretrained("CompVis/stable-diffusion-v1-4", custom_pipeline="<user>/oir",
                                      custom_revision="<commit>", trust_remote_code=True,
                                      clip_model=..., clip_processor=...)

* :func:`export_hub_folder` writes that folder (``oir export-hub DIR``);
* :func:`push_to_hub` creates the repo and uploads the folder (``oir export-hub DIR --push <user>/oir``), then pins
  the card's ``custom_revision`` to the commit that holds the uploaded ``pipeline.py``;
* :func:`write_community_copy` refreshes ``community/oir.py``, the copy prepared for diffusers' ``examples/community``
  (which is what makes ``custom_pipeline="oir"`` work).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, ModelCardData

__all__ = [
    "CARD_METADATA",
    "REPO_PLACEHOLDER",
    "REVISION_PLACEHOLDER",
    "pipeline_file",
    "model_card_template",
    "build_model_card",
    "export_hub_folder",
    "push_to_hub",
    "write_community_copy",
]

REPO_PLACEHOLDER = "<user>/oir"
REVISION_PLACEHOLDER = "<commit-sha>"
# The Hub metadata every exported card carries (on top of the template's own front matter).
CARD_METADATA = {
    "library_name": "diffusers",
    "license": "apache-2.0",
    "pipeline_tag": "image-to-image",
    "tags": ["diffusers", "image-editing", "image-to-image", "stable-diffusion", "custom-pipeline", "oir"],
}
PIPELINE_FILE_NAME = "pipeline.py"  # the file name diffusers looks for in a `custom_pipeline` repo or folder


def pipeline_file() -> Path:
    """The path of ``pipeline_oir.py`` (found without importing it)."""
    spec = importlib.util.find_spec("pipeline_oir")
    if spec is None or not spec.origin:
        raise FileNotFoundError("`pipeline_oir.py` is not importable: install the project (pip install -e .)")
    return Path(spec.origin)


def model_card_template() -> Path:
    """``model_card.md`` of the project (beside ``pipeline_oir.py`` in a checkout or editable install)."""
    path = pipeline_file().parent / "model_card.md"
    if not path.is_file():
        raise FileNotFoundError(
            f"model_card.md was not found beside {pipeline_file()}: export from a checkout of the project "
            "(pip install -e .), or pass `template=` the path of a model card."
        )
    return path


def build_model_card(repo_id: str | None = None, template: str | os.PathLike | None = None) -> ModelCard:
    """The model card for a Hub repo: the template's text, ``repo_id`` in its examples, validated Hub metadata."""
    if repo_id is not None:
        _check_repo_id(repo_id)
    text = Path(template or model_card_template()).read_text(encoding="utf-8")
    card = ModelCard(text)  # parses (and type-checks) the YAML front matter
    metadata = card.data.to_dict()
    tags = list(dict.fromkeys([*CARD_METADATA["tags"], *(metadata.get("tags") or [])]))
    metadata.update({**CARD_METADATA, "tags": tags})
    body = card.text
    if repo_id is not None:
        body = body.replace(REPO_PLACEHOLDER, repo_id)
    card = ModelCard(f"---\n{ModelCardData(**metadata).to_yaml()}\n---\n\n{body.lstrip()}")
    _check_card(card)
    return card


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise ValueError(f"`repo_id` must look like 'user/name', got {repo_id!r}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"`repo_id`: {error}") from None


def _check_card(card: ModelCard) -> None:
    """Offline checks of what the Hub needs to list the repo as a diffusers image-to-image pipeline."""
    data = card.data
    for key, expected in CARD_METADATA.items():
        value = getattr(data, key, None)
        if key == "tags":
            missing = set(expected) - set(value or [])
            if missing:
                raise ValueError(f"model card metadata: tags {sorted(missing)} are missing")
        elif value != expected:
            raise ValueError(f"model card metadata: `{key}` must be {expected!r}, got {value!r}")
    if "custom_pipeline" not in card.text:
        raise ValueError("the model card does not show how to load the pipeline (`custom_pipeline=`)")


def export_hub_folder(
    directory: str | os.PathLike,
    repo_id: str | None = None,
    overwrite: bool = False,
    template: str | os.PathLike | None = None,
) -> str:
    """Writes a folder ready to upload as a Hub repo: ``pipeline.py`` and ``README.md``; returns its path.

    Args:
        directory: the folder; it must not exist or be empty, unless ``overwrite`` (then only the two files are
            replaced).
        repo_id: the Hub repo the card's examples load from (default: the placeholder ``<user>/oir``).
        overwrite: write into a non-empty folder.
        template: a model card to use instead of the project's ``model_card.md``.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{directory} exists and is not a folder")
    if directory.is_dir() and any(directory.iterdir()) and not overwrite:
        raise FileExistsError(f"{directory} is not empty: pass overwrite=True (--overwrite) to write into it")
    card = build_model_card(repo_id, template)  # before touching the folder: a bad card writes nothing
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(pipeline_file(), directory / PIPELINE_FILE_NAME)
    card.save(directory / "README.md")
    _check_card(ModelCard.load(directory / "README.md"))  # what was written reads back as a valid card
    return str(directory)


def push_to_hub(
    directory: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload the OIR pipeline",
) -> str:
    """Creates ``repo_id`` (if needed) and uploads an exported folder; returns the repo's URL.

    The card's metadata is validated by the Hub first. After the upload, the card's ``custom_revision`` placeholder
    is replaced by the commit that holds the uploaded ``pipeline.py`` (a second, README-only commit), so that the
    usage example pins exactly the code it was published with.
    """
    _check_repo_id(repo_id)
    directory = Path(directory)
    readme = directory / "README.md"
    if not (directory / PIPELINE_FILE_NAME).is_file() or not readme.is_file():
        raise ValueError(f"{directory} is not an exported folder (run `oir export-hub {directory}` first)")
    ModelCard.load(readme).validate(repo_type="model")
    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(directory), commit_message=commit_message,
                               repo_type="model")
    text = readme.read_text(encoding="utf-8")
    if REVISION_PLACEHOLDER in text and getattr(commit, "oid", None):
        text = text.replace(REVISION_PLACEHOLDER, commit.oid)
        readme.write_text(text, encoding="utf-8")
        api.upload_file(path_or_fileobj=text.encode("utf-8"), path_in_repo="README.md", repo_id=repo_id,
                        repo_type="model", commit_message=f"Pin custom_revision to {commit.oid[:10]}")
    return str(url)


def write_community_copy(directory: str | os.PathLike | None = None) -> str:
    """Copies ``pipeline_oir.py`` to ``<directory>/oir.py`` (default: the project's ``community/``); returns it."""
    directory = Path(directory) if directory is not None else pipeline_file().parent / "community"
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "oir.py"
    shutil.copyfile(pipeline_file(), target)
    return str(target)
