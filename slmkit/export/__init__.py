"""Deployment: export a checkpoint to transformers, GGUF or int8, exactly or not at all.

`run_export(ExportArgs)` is the entry point of `slmkit export`; each format module registers itself in EXPORT_FORMATS,
and the transformers classes a model can become are the rows of `targets.TARGETS`.
"""

from slmkit.export.run import EXPORT_FORMATS, ExportArgs, run_export
from slmkit.export import gguf, hf, int8  # noqa: F401  (each registers its format)
from slmkit.export.targets import TARGETS, select_target

__all__ = ["EXPORT_FORMATS", "ExportArgs", "TARGETS", "run_export", "select_target"]
