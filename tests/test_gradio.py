"""The Gradio demo (examples/gradio_app.py): served on localhost with the tiny model and driven by gradio_client."""

import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import import_example
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def gradio_app():
    return import_example("gradio_app")


@pytest.fixture(scope="module")
def server(gradio_app):
    """The demo on 127.0.0.1 (a free port) around the tiny random pipeline; yields its URL."""
    from oir.testing import tiny_pipeline

    demo = gradio_app.build_demo(tiny_pipeline(seed=0), resolution=64, default_steps=3, max_steps=10)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server, verbose=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gradio-inputs")
    Image.open(EXAMPLES / "images" / "coffee.png").resize((64, 64)).save(folder / "photo.png")
    for k, box in enumerate([(4, 4, 36, 36), (36, 36, 60, 60)], start=1):
        layer = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
        layer.paste((255, 255, 255, 255), box)
        layer.save(folder / f"layer{k}.png")
    return folder


def _editor(files, layers):
    from gradio_client import handle_file

    return {
        "background": handle_file(str(files / "photo.png")),
        "layers": [handle_file(str(files / f"layer{k}.png")) for k in range(1, layers + 1)],
        "composite": None,
    }


def test_parse_edits_and_layer_masks(gradio_app):
    assert gradio_app.parse_edits(" coffee -> tea \n\n spoon->fork") == [("coffee", "tea"), ("spoon", "fork")]
    assert gradio_app.parse_edits("  ") is None
    with pytest.raises(Exception, match="source -> target"):
        gradio_app.parse_edits("coffee tea")
    layer = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), (2, 2, 6, 6))
    empty = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    masks = gradio_app._layer_masks({"layers": [empty, layer]})
    assert len(masks) == 1 and np.asarray(masks[0]).sum() == 16 * 255


def test_demo_edits_with_drawn_masks(client, files):
    edited, masks, figures, result = client.predict(
        _editor(files, 2), "a cup of coffee with a spoon", "a cup of tea with a fork", "coffee -> tea\nspoon -> fork",
        "Drawn: one editor layer per edit", 3, 7.5, 0.2, 0.2, 0, api_name="/edit",
    )
    assert Image.open(edited).size == (64, 64)
    assert [m["caption"] for m in masks] == ["coffee → tea: mask", "spoon → fork: mask"]
    drawn = np.asarray(Image.open(masks[0]["image"]).convert("RGB")).astype(int)
    assert (np.abs(drawn[10, 10] - np.array([214, 39, 40])) < 110).all()  # tinted inside the first layer
    assert len(figures) == 2 and Image.open(figures[0]["image"]).width >= 1000
    assert len(result["optimal_steps"]) == 2 and result["num_inference_steps"] == 3
    assert [r["edit"]["target"] for r in result["search"]] == ["tea", "fork"]
    assert all(r["steps"] == [1, 2, 3] and len(r["scores"]) == 3 for r in result["search"])


def test_demo_builtin_mask_and_errors(client, files):
    _, masks, _, result = client.predict(
        _editor(files, 0), "a photo of a cup", "a photo of a bowl", "", "Built-in (automatic, coarse)", 2, 7.5, 0.2,
        0.0, 1, api_name="/edit",
    )
    assert result["search"][0]["edit"] == {"source": "cup", "target": "bowl"}  # from the word diff
    assert len(masks) == 1
    with pytest.raises(Exception, match="one layer per pair"):
        client.predict(_editor(files, 1), "a cup of coffee with a spoon", "a cup of tea with a fork",
                       "coffee -> tea\nspoon -> fork", "Drawn: one editor layer per edit", 2, 7.5, 0.2, 0.2, 0,
                       api_name="/edit")


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (apt-get install chromium)")
def test_demo_renders_in_headless_chromium(server, tmp_path):
    shot = tmp_path / "demo.png"
    common = ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--virtual-time-budget=20000"]
    dom = subprocess.run([*common, "--dump-dom", server], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0
    for text in ("Object-aware Inversion and Reassembly", "Source prompt", "Editing pairs", "Edit"):
        assert text in dom.stdout, text  # rendered by the page's JavaScript
    run = subprocess.run([*common, "--hide-scrollbars", "--window-size=1280,1000", f"--screenshot={shot}", server],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.is_file()
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (1000, 1280, 3)
    assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # a drawn page, not blank
