import importlib.util
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np
import pytest
import torch

# Tiny models are overhead-bound: one thread is fastest, and far faster than two when other processes share the
# two cores.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_pipe():
    """A tiny random OIRPipeline shared by the tests that do not change it (seeded, CPU, no progress bars)."""
    from oir.testing import tiny_pipeline

    return tiny_pipeline(seed=0)


@pytest.fixture
def image():
    """A 64x64 RGB test image (float tensor in [0, 1], CHW), seeded."""
    return torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def two_masks():
    first = np.zeros((64, 64), dtype=bool)
    first[8:40, 8:32] = True
    second = np.zeros((64, 64), dtype=bool)
    second[32:64, 40:64] = True
    return [first, second]


class UNetCounter:
    """Counts UNet calls and the samples they carry, through a forward pre-hook."""

    def __init__(self, unet):
        self.calls, self.samples = 0, 0
        self._handle = unet.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        self.calls += 1
        self.samples += sample.shape[0]

    def remove(self):
        self._handle.remove()


@pytest.fixture
def unet_counter(tiny_pipe):
    counter = UNetCounter(tiny_pipe.unet)
    yield counter
    counter.remove()


def import_example(name: str):
    """Imports ``examples/<name>.py`` (the examples are scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
