"""OIR for diffusers: Object-aware Inversion and Reassembly (ICLR 2024).

The pipeline itself lives in the self-contained ``pipeline_oir.py`` (installed as a top-level module beside this
package, and loadable with ``custom_pipeline=``); this package re-exports it and holds the toolkit around it.
"""

from pipeline_oir import (
    Edit,
    OIRInversion,
    OIRPipeline,
    OIRPipelineOutput,
    OIRSearchRecord,
)

__version__ = "0.1.0"

__all__ = ["Edit", "OIRInversion", "OIRPipeline", "OIRPipelineOutput", "OIRSearchRecord", "__version__"]
