"""The int8 format: an slmkit folder for CPU inference, per-output-channel symmetric int8 linear weights + fp32 scales.

Saved: every nn.Linear weight as `<name>.weight_int8` (int8) and `<name>.weight_scale` (fp32), all else fp32.
Loaded: the fp32 model is built from config.yaml and each Linear becomes torch's dynamic-quantized Linear holding
exactly the stored int8 values, so nothing is re-quantized at load and no code is ever unpickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from slmkit.checkpoint import CONFIG_FILE, TIED, LoadedCheckpoint, build_model, with_tied_names
from slmkit.config import load_run_config, save_run_config
from slmkit.errors import SlmkitError
from slmkit.export.run import EXPORT_FORMATS, ExportContext
from slmkit.tokenizer import TOKENIZER_FILE
from slmkit.model import Model

INT8_WEIGHTS_FILE = "model.int8.safetensors"
INT8_FORMAT = "slmkit-int8/1"


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 [out, in], fp32 scale [out]) with weight ~= int8 * scale[:, None], symmetric per output channel."""
    weight = weight.detach().float()
    scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def int8_state_dict(model: Model) -> dict[str, torch.Tensor]:
    """Tensors of the int8 file: quantized Linear weights, everything else (embeddings, norms, biases) in fp32."""
    linears = {name for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    out = {}
    for name, tensor in model.state_dict().items():
        module, _, kind = name.rpartition(".")
        if module in linears and kind == "weight":
            out[f"{module}.weight_int8"], out[f"{module}.weight_scale"] = quantize_weight(tensor)
        elif not (model.config.tie_embeddings and name == TIED[0]):
            out[name] = tensor.detach().float().contiguous().clone()
    return out


@EXPORT_FORMATS.register("int8")
def export_int8(context: ExportContext, folder: Path) -> dict[str, Any]:
    loaded = context.loaded
    save_run_config(loaded.config, folder / CONFIG_FILE)
    (folder / TOKENIZER_FILE).write_bytes(loaded.tokenizer_path.read_bytes())
    save_file(int8_state_dict(loaded.model), str(folder / INT8_WEIGHTS_FILE), metadata={"format": INT8_FORMAT})
    return {
        "format": "slmkit int8 (per-channel int8 linear weights + fp32 scales, torch dynamic-int8 kernels on CPU)",
        "details": {"weights": INT8_WEIGHTS_FILE},
        "usage": ["```sh", "slmkit generate checkpoint=path/to/this/folder prompt='The court held'", "```"],
        "logits_fn": lambda f: load_int8(f).model,
    }


def is_int8_folder(path: Path) -> bool:
    return path.is_dir() and (path / INT8_WEIGHTS_FILE).is_file()


def load_int8(folder: str | Path) -> LoadedCheckpoint:
    """The model of an int8 export, its Linear layers running torch's dynamic int8 kernels on CPU."""
    folder = Path(folder)
    path = folder / INT8_WEIGHTS_FILE
    if not path.is_file():
        raise SlmkitError(f"{folder} holds no {INT8_WEIGHTS_FILE}: export one with `slmkit export format=int8`")
    config = load_run_config(folder / CONFIG_FILE)
    with safe_open(str(path), framework="pt") as f:
        if (f.metadata() or {}).get("format") != INT8_FORMAT:
            raise SlmkitError(f"{path} is not an slmkit int8 file (format {INT8_FORMAT}); re-export it")
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    model = build_model(config)
    quantized = {k.removesuffix(".weight_int8") for k in tensors if k.endswith(".weight_int8")}
    dense = model.state_dict()
    plain = with_tied_names(model, {k: v for k, v in tensors.items() if not k.endswith((".weight_int8", ".weight_scale"))})
    for name in quantized:
        # Placeholders, replaced by the int8 modules below; a tied head already has the embedding under its name.
        plain.setdefault(f"{name}.weight", torch.zeros_like(dense[f"{name}.weight"]))
    model.load_state_dict(plain, strict=True)
    for name in quantized:
        _swap_in_int8(model, name, tensors[f"{name}.weight_int8"], tensors[f"{name}.weight_scale"])
    model.eval()
    return LoadedCheckpoint(model=model, config=config, tokenizer_path=folder / TOKENIZER_FILE, path=path)


def _swap_in_int8(model: nn.Module, name: str, q: torch.Tensor, scale: torch.Tensor) -> None:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    dense: nn.Linear = getattr(parent, child)
    qlinear = DynamicInt8Linear(dense.in_features, dense.out_features, bias_=dense.bias is not None, dtype=torch.qint8)
    zero_points = torch.zeros(q.shape[0], dtype=torch.long)
    qweight = torch._make_per_channel_quantized_tensor(q, scale.double(), zero_points, 0)
    qlinear.set_weight_bias(qweight, None if dense.bias is None else dense.bias.detach().clone())
    setattr(parent, child, qlinear)
