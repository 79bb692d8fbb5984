"""`slmkit export`: turns a checkpoint into a folder another runtime loads, in a format picked by name.

The folder is built beside the target and renamed into place at the end, so a failed export leaves nothing behind.
Each format (hf.py, gguf.py, int8.py) registers a writer here; this module adds the model card and held-out figures.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from slmkit.atomic import atomic_path
from slmkit.checkpoint import LoadedCheckpoint, load_checkpoint
from slmkit.errors import SlmkitError
from slmkit.export.measure import bits_per_byte, heldout_windows, size_on_disk
from slmkit.export.model_card import model_card
from slmkit.export.tokenizer_files import SpecialTokens, special_tokens
from slmkit.model import LM_HEAD
from slmkit.model.mup import standard_equivalent
from slmkit.options import at_least, option
from slmkit.registry import Registry

log = logging.getLogger(__name__)


@dataclass
class ExportArgs:
    checkpoint: str = option("", "Run folder or checkpoint to export (a .ckpt file, DeepSpeed folder or model.safetensors).")
    out: str = option("", "Folder to write; it must not exist or be empty unless overwrite=true.")
    format: str = option("hf", "Export format by name: hf is a transformers folder, gguf a llama.cpp file, int8 a CPU int8 slmkit folder.", choices="slmkit.export:EXPORT_FORMATS")
    dtype: str = option("fp32", "Tensor type: hf takes fp32, fp16 or bf16; gguf takes fp32, fp16, q8_0, q4_0 or q4_1 (llama.cpp's 8- and 4-bit blocks); int8 ignores it.", choices=("fp32", "fp16", "bf16", "q8_0", "q4_0", "q4_1"))
    overwrite: bool = option(False, "Replace a non-empty out folder (the old one goes only once the new one is complete).")
    verify: bool = option(True, "hf only: load the export with transformers and check its logits against slmkit before keeping it.")
    heldout: Optional[str] = option(None, "Text file to measure bits per byte on, fp32 vs the exported format; goes into the model card.")
    heldout_tokens: int = option(8192, "Measure bits per byte on at most this many held-out tokens.", bounds=at_least(1))


@dataclass
class ExportContext:
    loaded: LoadedCheckpoint
    args: ExportArgs
    specials: SpecialTokens
    run_dir: Path

    def dtype_among(self, written: Iterable[str], kind: str) -> str:
        """args.dtype when the format writes it (each being `kind`); SlmkitError naming the ones it writes otherwise."""
        if self.args.dtype not in written:
            raise SlmkitError(
                f"dtype={self.args.dtype} is not {kind}; for format={self.args.format} choose one of: {', '.join(written)}"
            )
        return self.args.dtype


# A format writes its files into a fresh folder and returns the model card's facts: "format", "details", "usage", and
# "logits_fn" (folder -> logits function of the written files, for the held-out figures).
Exporter = Callable[[ExportContext, Path], dict[str, Any]]
EXPORT_FORMATS: Registry[Exporter] = Registry("export format", "Writes an export into a fresh folder; returns model-card facts.")


def run_export(args: ExportArgs) -> Path:
    """Exports args.checkpoint into args.out in args.format; returns the finished folder."""
    if not args.checkpoint or not args.out:
        raise SlmkitError("export needs checkpoint=PATH and out=DIR, e.g. slmkit export checkpoint=runs/legal-tiny/latest out=exports/legal-tiny")
    exporter = EXPORT_FORMATS.get(args.format)
    out = Path(args.out)
    _check_target(out, Path(args.checkpoint), args.overwrite)
    loaded = load_checkpoint(args.checkpoint)
    loaded.model.float().eval()
    # Every format writes what a stock class computes: a μP model's multipliers go into its weights first.
    loaded.model = standard_equivalent(loaded.model)
    loaded.config = dataclasses.replace(loaded.config, model=loaded.model.config)
    if loaded.finished is False:
        log.warning("%s holds the weights of step %d of the %d its run planned: the run did not finish (the model "
                    "card says so); exporting them anyway", loaded.path, loaded.step, loaded.planned_steps)
    if args.heldout and LM_HEAD not in loaded.model.heads:
        raise SlmkitError(f"heldout= measures the bits per byte of a language model, and {args.checkpoint} has a "
                          f"{loaded.model.default_head} head instead; export it without heldout")
    run_dir = loaded.tokenizer_path.parent
    context = ExportContext(loaded, args, special_tokens(loaded.tokenizer_path, loaded.config.tokenizer.special_tokens), run_dir)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        facts = exporter(context, tmp)
        facts["parameters"] = loaded.model.num_parameters()
        facts["step"] = loaded.step
        if args.heldout:
            facts["details"].update(_heldout_figures(context, tmp, facts["logits_fn"]))
        facts.pop("logits_fn", None)
        facts["details"]["size on disk"] = f"{size_on_disk(tmp) / 2**20:.2f} MiB (this folder, card included)"
        (tmp / "README.md").write_text(model_card(loaded.config, run_dir, facts), encoding="utf-8")
    log.info("exported %s as %s to %s", args.checkpoint, args.format, out)
    return out


def _check_target(out: Path, checkpoint: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise SlmkitError(f"out={out} is a file; give a folder path for the export")
    source = checkpoint.resolve()
    if out.exists() and (source == out.resolve() or out.resolve() in source.parents):
        raise SlmkitError(f"out={out} holds the checkpoint being exported; choose another folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise SlmkitError(f"out={out} exists and is not empty; choose a new folder or pass overwrite=true to replace it")


def _heldout_figures(context: ExportContext, folder: Path, exported_logits) -> dict[str, str]:
    path = Path(context.args.heldout)
    if not path.is_file():
        raise SlmkitError(f"heldout={path} is not a file; give a UTF-8 text file of held-out text")
    c = context.loaded.config.model
    windows, n_bytes = heldout_windows(
        path.read_text(encoding="utf-8"), context.loaded.tokenizer(), context.specials.eos_id, c.block_size, context.args.heldout_tokens
    )
    base = bits_per_byte(context.loaded.model, windows, n_bytes)
    exported = bits_per_byte(exported_logits(folder), windows, n_bytes)
    return {
        "held-out bits/byte": f"fp32 slmkit {base:.4f}, this export {exported:.4f} ({exported - base:+.4f}) on {n_bytes} bytes of {path.name}"
    }
