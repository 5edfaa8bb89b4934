"""Hub export (oir.hub, `oir export-hub`), the community copy and the model card."""

import inspect
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard

from oir import OIRPipeline, hub
from oir.cli import main

ROOT = Path(__file__).resolve().parents[1]



def test_export_writes_the_pipeline_file_and_a_valid_model_card(tmp_path):
    folder = tmp_path / "oir-hub"
    assert hub.export_hub_folder(folder, repo_id="alice/oir") == str(folder)
    assert sorted(os.listdir(folder)) == ["README.md", "pipeline.py"]
    assert (folder / "pipeline.py").read_bytes() == (ROOT / "pipeline_oir.py").read_bytes()
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "diffusers"
    assert card.data.pipeline_tag == "image-to-image"
    assert card.data.license == "apache-2.0"
    assert {"diffusers", "image-editing", "custom-pipeline"} <= set(card.data.tags)
    assert 'custom_pipeline="alice/oir"' in card.text and hub.REPO_PLACEHOLDER not in card.text
    assert "trust_remote_code=True" in card.text and "custom_revision=" in card.text


def test_export_refuses_a_non_empty_folder_without_overwrite(tmp_path, capsys):
    folder = tmp_path / "taken"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite"):
        hub.export_hub_folder(folder)
    assert main(["export-hub", str(folder)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert sorted(os.listdir(folder)) == ["notes.txt"]  # nothing written
    assert main(["export-hub", str(folder), "--overwrite"]) == 0
    assert sorted(os.listdir(folder)) == ["README.md", "notes.txt", "pipeline.py"]
    assert (folder / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="repo_id"):
        hub.export_hub_folder(tmp_path / "new", repo_id="not a repo id")


def test_exported_folder_loads_as_a_custom_pipeline(tmp_path):
    from diffusers import DiffusionPipeline

    from oir.testing import save_tiny_stable_diffusion, tiny_components

    folder = hub.export_hub_folder(tmp_path / "export")
    model = save_tiny_stable_diffusion(str(tmp_path / "tiny-sd"))
    clip = tiny_components()
    pipe = DiffusionPipeline.from_pretrained(
        model, custom_pipeline=folder, trust_remote_code=True,
        clip_model=clip["clip_model"], clip_processor=clip["clip_processor"],
    )
    assert type(pipe).__name__ == "OIRPipeline"
    assert type(pipe) is not OIRPipeline  # loaded from the exported pipeline.py, not from the installed module
    assert Path(inspect.getfile(type(pipe))).read_bytes() == (ROOT / "pipeline_oir.py").read_bytes()
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    out = pipe(image, "a cat on a mat", "a dog on a mat", num_inference_steps=2, optimal_steps=[1],
               masks=[np.pad(np.ones((32, 32)), 16)])
    assert out.optimal_steps == [1] and out.images[0].size == (64, 64)


def test_community_copy_is_identical_to_the_pipeline():
    community = ROOT / "community" / "oir.py"
    refresh = "python -c 'from oir.hub import write_community_copy; write_community_copy()'"
    assert community.is_file(), f"community/oir.py is missing: {refresh}"
    assert community.read_bytes() == (ROOT / "pipeline_oir.py").read_bytes(), (
        f"community/oir.py differs from pipeline_oir.py: refresh it with `{refresh}`"
    )


def test_push_uploads_the_folder_and_pins_the_revision(tmp_path, monkeypatch):
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, repo_id, folder_path, **kwargs):
            calls.append(("upload_folder", repo_id, sorted(os.listdir(folder_path))))
            return SimpleNamespace(oid="0123456789abcdef0123456789abcdef01234567")

        def upload_file(self, path_or_fileobj, path_in_repo, repo_id, **kwargs):
            calls.append(("upload_file", path_in_repo, path_or_fileobj.decode()))

    validated = []
    monkeypatch.setattr(hub, "HfApi", FakeApi)
    monkeypatch.setattr(ModelCard, "validate", lambda self, repo_type=None: validated.append(self.data.library_name))
    folder = hub.export_hub_folder(tmp_path / "push", repo_id="alice/oir")
    url = hub.push_to_hub(folder, "alice/oir", private=True)
    assert url == "https://huggingface.co/alice/oir"
    assert validated == ["diffusers"]
    assert calls[1] == ("create_repo", "alice/oir", {"private": True, "exist_ok": True, "repo_type": "model"})
    assert calls[2] == ("upload_folder", "alice/oir", ["README.md", "pipeline.py"])
    assert calls[3][1] == "README.md"
    assert 'custom_revision="0123456789abcdef0123456789abcdef01234567"' in calls[3][2]
    assert hub.REVISION_PLACEHOLDER not in (Path(folder) / "README.md").read_text()
    with pytest.raises(ValueError, match="exported folder"):
        hub.push_to_hub(tmp_path, "alice/oir")


def _card_parameter_table(text):
    rows = re.findall(r"^\| `(\w+)` \| (.+?) \|", text, flags=re.M)
    return dict(rows)


def test_model_card_documents_every_call_argument_with_its_default():
    text = (ROOT / "model_card.md").read_text()
    table = _card_parameter_table(text)
    parameters = {k: v for k, v in inspect.signature(OIRPipeline.__call__).parameters.items() if k != "self"}
    assert set(table) == set(parameters), "model_card.md's parameter table must list exactly OIRPipeline.__call__'s"
    for name, parameter in parameters.items():
        if parameter.default is inspect.Parameter.empty:
            assert table[name] == "(required)", name
        else:
            assert table[name] == f"`{parameter.default!r}`".replace("'", '"'), name


def test_model_card_has_results_limitations_citation_and_license():
    text = (ROOT / "model_card.md").read_text()
    assert "30.28" in text and "0.653" in text and "0.329" in text  # the paper's Table 1, OIR row
    for author in ("Zhen", "Ganggui", "Wen", "Hao", "Bohan", "Chunhua"):
        assert author in text
    assert "@inproceedings" in text and "ICLR" in text
    assert "## Limitations" in text and "Apache License 2.0" in text
    assert 'custom_pipeline="oir"' in text and "from oir import OIRPipeline" in text
