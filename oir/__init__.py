"""OIR for diffusers: Object-aware Inversion and Reassembly (ICLR 2024).

The pipeline itself lives in the self-contained ``pipeline_oir.py`` (installed as a top-level module beside this
package, and loadable with ``custom_pipeline=``); this package re-exports it and holds the toolkit around it:
``oir.masks`` (Grounded-SAM), ``oir.data`` (datasets and edit specs), ``oir.metrics``, ``oir.bench``, ``oir.viz``,
``oir.hub`` and the ``oir`` command line (``oir.cli``).

The exports are imported on first use, so that ``oir --help`` does not wait for torch and diffusers.
"""

import importlib

__version__ = "0.1.0"

_PIPELINE_EXPORTS = ("Edit", "OIRInversion", "OIRPipeline", "OIRPipelineOutput", "OIRSearchRecord")

__all__ = [*_PIPELINE_EXPORTS, "__version__"]


def __getattr__(name):
    if name in _PIPELINE_EXPORTS:
        return getattr(importlib.import_module("pipeline_oir"), name)
    raise AttributeError(f"module 'oir' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_PIPELINE_EXPORTS))
