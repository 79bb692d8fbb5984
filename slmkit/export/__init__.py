"""Deployment: export a checkpoint to transformers, GGUF or int8, exactly or not at all.

`run_export(ExportArgs)` is the entry point of `slmkit export`; the formats and target classes are registries.
"""

from slmkit.export.command import EXPORT_FORMATS, ExportArgs, run_export
from slmkit.export.hf import HF_ARCHITECTURES, select_architecture

__all__ = ["EXPORT_FORMATS", "ExportArgs", "HF_ARCHITECTURES", "run_export", "select_architecture"]
