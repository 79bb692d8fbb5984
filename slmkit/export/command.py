"""`slmkit export`: turns a checkpoint into a folder another runtime loads — hf, gguf or int8, picked by name.

The folder is built beside the target and renamed into place at the end, so a failed export leaves nothing behind;
an hf export is loaded back with transformers and compared with the slmkit model before it is kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from safetensors.torch import save_file

from slmkit.atomic import atomic_path
from slmkit.checkpoint import CONFIG_FILE, TOKENIZER_FILE, LoadedCheckpoint, load_checkpoint
from slmkit.config import save_run_config
from slmkit.errors import SlmkitError
from slmkit.export.gguf import GGUF_DTYPES, gguf_to_hf_state, read_gguf_tensors, write_gguf
from slmkit.export.hf import HFArchitecture, hf_config, hf_state_dict, select_architecture
from slmkit.export.measure import bits_per_byte, heldout_windows, size_on_disk
from slmkit.export.model_card import model_card
from slmkit.export.quantize import save_int8, load_int8
from slmkit.export.tokenizer_files import SpecialTokens, special_tokens, write_tokenizer_files
from slmkit.options import option
from slmkit.registry import Registry

log = logging.getLogger(__name__)

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# The largest |logit| difference an export may show against slmkit on the check input: fp32 math in another order.
VERIFY_TOLERANCE = 1e-4


@dataclass
class ExportArgs:
    checkpoint: str = option("", "Run folder or checkpoint to export (a .ckpt file, DeepSpeed folder or model.safetensors).")
    out: str = option("", "Folder to write; it must not exist or be empty unless overwrite=true.")
    format: str = option("hf", "hf (transformers folder), gguf (llama.cpp single file), int8 (CPU dynamic-int8 slmkit folder).", choices=("hf", "gguf", "int8"))
    dtype: str = option("fp32", "Tensor type: hf takes fp32, fp16 or bf16; gguf takes fp32, fp16 or q8_0; int8 ignores it.", choices=("fp32", "fp16", "bf16", "q8_0"))
    overwrite: bool = option(False, "Replace a non-empty out folder (the old one goes only once the new one is complete).")
    verify: bool = option(True, "hf only: load the export with transformers and check its logits against slmkit before keeping it.")
    heldout: Optional[str] = option(None, "Text file to measure bits per byte on, fp32 vs the exported format; goes into the model card.")
    heldout_tokens: int = option(8192, "Measure bits per byte on at most this many held-out tokens.")


@dataclass
class ExportContext:
    loaded: LoadedCheckpoint
    args: ExportArgs
    specials: SpecialTokens
    run_dir: Path


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
    run_dir = loaded.tokenizer_path.parent
    context = ExportContext(loaded, args, special_tokens(loaded.tokenizer_path, loaded.config.tokenizer.special_tokens), run_dir)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        facts = exporter(context, tmp)
        facts["parameters"] = loaded.model.num_parameters()
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


# ---------------------------------------------------------------------------------------------------------------------
# Formats.

@EXPORT_FORMATS.register("hf")
def export_hf(context: ExportContext, folder: Path) -> dict[str, Any]:
    c = context.loaded.config.model
    dtype = context.args.dtype
    if dtype not in TORCH_DTYPES:
        raise SlmkitError(f"dtype={dtype} is not a transformers weight type; for format=hf choose fp32, fp16 or bf16")
    arch = select_architecture(c)
    config = hf_config(c, arch, context.specials.ids())
    config.dtype = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[dtype]
    state = {k: v.to(TORCH_DTYPES[dtype]) for k, v in hf_state_dict(context.loaded.model, arch, config).items()}
    config.save_pretrained(folder)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    _generation_config(context, c.block_size).save_pretrained(folder)
    write_tokenizer_files(context.loaded.tokenizer_path, folder, context.specials, c.block_size)
    if context.args.verify:
        verify_hf_export(context.loaded.model, folder, dtype)
    return {
        "format": f"a transformers {arch.model_class} ({dtype} safetensors)",
        "details": {"transformers class": arch.model_class},
        "usage": [
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")',
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
            "```",
        ],
        "logits_fn": _hf_logits,
    }


def _generation_config(context: ExportContext, block_size: int):
    from transformers import GenerationConfig

    ids = context.specials.ids()
    return GenerationConfig(**ids, max_length=block_size, do_sample=False)


def _hf_logits(folder: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32).eval()
    return lambda ids: model(ids).logits


def verify_hf_export(model, folder: Path, dtype: str) -> None:
    """Loads the folder with transformers and compares logits with the slmkit model (weights rounded as exported)."""
    reference = model
    if dtype != "fp32":
        reference = type(model)(model.config)
        reference.load_state_dict({k: v.to(TORCH_DTYPES[dtype]).float() for k, v in model.state_dict().items()})
        reference.eval()
    hf_logits = _hf_logits(folder)
    c = model.config
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, c.vocab_size, (2, min(c.block_size, 64)), generator=generator)
    with torch.no_grad():
        diff = (reference(ids) - hf_logits(ids)).abs().max().item()
    if not diff <= VERIFY_TOLERANCE:
        raise RuntimeError(f"the exported model's logits differ from slmkit's by {diff:.3g} (> {VERIFY_TOLERANCE}): export mapping bug")


@EXPORT_FORMATS.register("gguf")
def export_gguf(context: ExportContext, folder: Path) -> dict[str, Any]:
    c = context.loaded.config.model
    dtype = context.args.dtype
    if dtype not in GGUF_DTYPES:
        raise SlmkitError(f"dtype={dtype} is not a GGUF type slmkit writes; for format=gguf choose one of: {', '.join(GGUF_DTYPES)}")
    arch = select_architecture(c)
    state = hf_state_dict(context.loaded.model, arch, hf_config(c, arch, context.specials.ids()))
    name = context.loaded.config.name
    write_gguf(folder / "model.gguf", name, c, arch, state, context.loaded.tokenizer_path, context.specials, dtype)
    return {
        "format": f"GGUF ({dtype}, llama.cpp architecture `{arch.model_type}`)",
        "details": {"GGUF file": "model.gguf"},
        "usage": ["```sh", "llama-cli -m model.gguf -p 'The court held'", "```"],
        "logits_fn": lambda f: _gguf_logits(f / "model.gguf", c, arch, context.specials),
    }


def _gguf_logits(path: Path, c, arch: type[HFArchitecture], specials: SpecialTokens):
    """Reads the GGUF back (dequantizing) into the transformers class, so the figure is of the file itself."""
    from transformers import AutoModelForCausalLM

    config = hf_config(c, arch, specials.ids())
    model = AutoModelForCausalLM.from_config(config).eval()
    state = gguf_to_hf_state(read_gguf_tensors(path), list(hf_state_dict_names(model, c)), c, arch)
    model.load_state_dict(state, strict=not c.tie_embeddings)
    return lambda ids: model(ids).logits


def hf_state_dict_names(model, c) -> list[str]:
    names = list(model.state_dict())
    return [n for n in names if not (c.tie_embeddings and n == "lm_head.weight")]


@EXPORT_FORMATS.register("int8")
def export_int8(context: ExportContext, folder: Path) -> dict[str, Any]:
    loaded = context.loaded
    save_run_config(loaded.config, folder / CONFIG_FILE)
    (folder / TOKENIZER_FILE).write_bytes(loaded.tokenizer_path.read_bytes())
    save_int8(loaded.model, folder)
    return {
        "format": "slmkit int8 (per-channel int8 linear weights + fp32 scales, torch dynamic-int8 kernels on CPU)",
        "details": {"weights": "model.int8.safetensors"},
        "usage": ["```sh", "slmkit generate checkpoint=path/to/this/folder prompt='The court held'", "```"],
        "logits_fn": lambda f: load_int8(f).model,
    }
