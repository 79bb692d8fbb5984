"""The gguf format: a single-file GGUF (llama.cpp's format) through the `gguf` package: metadata, byte-level BPE vocab, tensors.

Only architectures that llama.cpp computes exactly as slmkit does are written: `llama` (rope + swiglu + rmsnorm) and
`qwen3` (the same with per-head qk-norm). llama.cpp's gpt2/starcoder2/mpt graphs use the tanh GELU and have no
sliding window for llama, so those models are refused rather than shipped as approximations.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slmkit.errors import SlmkitError
from slmkit.export.accepts import Accepts, unrepresentable
from slmkit.export.hf import auto_class, export_head, hf_config, mapped_checkpoint
from slmkit.export.run import EXPORT_FORMATS, ExportContext
from slmkit.export.targets import Target
from slmkit.export.tokenizer_files import SpecialTokens
from slmkit.model import LM_HEAD, ModelConfig

GGUF_DTYPES = ("fp32", "fp16", "q8_0")
# The transformers model types written, with the llama.cpp graph (gguf.MODEL_ARCH member) that computes each.
GGUF_ARCHITECTURES = {"llama": "LLAMA", "qwen3": "QWEN3"}
# What those graphs compute as slmkit does, beyond the transformers class they mirror.
GGUF_ACCEPTS = Accepts(
    bias=(False,),
    sliding_window=(False,),
    why={
        "bias": "written only by the HF export; the GGUF llama/qwen3 graphs here carry no biases",
        "sliding_window": "llama.cpp's llama/qwen3 graphs attend to the whole context",
    },
)


def gguf_mismatches(c: ModelConfig, target: Target) -> list[str]:
    """Why this model has no exact GGUF form (empty when it has one)."""
    found = []
    if target.model_type not in GGUF_ARCHITECTURES:
        found.append(
            f"the model maps to {target.heads[LM_HEAD].model_class}, and llama.cpp runs only the llama and qwen3 graphs exactly "
            "as slmkit (its gpt2/starcoder2/mpt graphs use the tanh GELU; it has no sliding window for llama)"
        )
    return found + unrepresentable(c, GGUF_ACCEPTS, "llama.cpp")


def _model_arch(target: Target):
    import gguf

    return gguf.MODEL_ARCH[GGUF_ARCHITECTURES[target.model_type]]


def _llama_permute(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF's rotate-half q/k rows -> llama.cpp's interleaved-pair rope layout (what its converter does for `llama`)."""
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _vocabulary(tokenizer_path: Path, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """tokens (padded with unused placeholders up to the model's vocab), token types, merges; byte-level BPE only."""
    from gguf import TokenType

    spec = json.loads(tokenizer_path.read_text(encoding="utf-8"))
    model = spec.get("model", {})
    pre = json.dumps(spec.get("pre_tokenizer"))
    if model.get("type") != "BPE" or "ByteLevel" not in pre:
        raise SlmkitError(
            f"GGUF export writes byte-level BPE vocabularies only (tokenizer.ggml.model=gpt2), and {tokenizer_path} is a "
            f"{model.get('type', 'unknown')} tokenizer; use format=hf for this model"
        )
    vocab: dict[str, int] = dict(model["vocab"])
    specials = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    vocab.update(specials)
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [int(TokenType.UNUSED)] * vocab_size
    for token, token_id in vocab.items():
        if token_id >= vocab_size:
            raise SlmkitError(f"token {token!r} has id {token_id} beyond the model's vocab_size={vocab_size}")
        tokens[token_id] = token
        types[token_id] = int(TokenType.CONTROL if token in specials else TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges


def write_gguf(
    path: Path,
    name: str,
    c: ModelConfig,
    target: Target,
    hf_state: dict[str, torch.Tensor],
    tokenizer_path: Path,
    specials: SpecialTokens,
    dtype: str,
) -> None:
    import gguf

    found = gguf_mismatches(c, target)
    if found:
        raise SlmkitError("this model has no exact GGUF form: " + "; ".join(found) + ". Export it with format=hf instead.")
    if dtype not in GGUF_DTYPES:
        raise SlmkitError(f"dtype={dtype} is not a GGUF tensor type slmkit writes; choose one of: {', '.join(GGUF_DTYPES)}")
    model_arch = _model_arch(target)
    arch_name = gguf.MODEL_ARCH_NAMES[model_arch]
    writer = gguf.GGUFWriter(str(path), arch_name)
    writer.add_name(name)
    writer.add_vocab_size(c.vocab_size)
    writer.add_context_length(c.block_size)
    writer.add_embedding_length(c.d_model)
    writer.add_block_count(c.n_layer)
    writer.add_feed_forward_length(c.ffn_hidden_size)
    writer.add_head_count(c.n_head)
    writer.add_head_count_kv(c.kv_heads)
    writer.add_key_length(c.head_dim)
    writer.add_value_length(c.head_dim)
    writer.add_rope_dimension_count(c.head_dim)
    writer.add_rope_freq_base(float(c.rope_theta))
    writer.add_layer_norm_rms_eps(float(c.norm_eps))
    file_type = {"fp32": gguf.LlamaFileType.ALL_F32, "fp16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    writer.add_file_type(int(file_type[dtype]))
    tokens, types, merges = _vocabulary(tokenizer_path, c.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")  # slmkit's byte-level pre-tokenizer splits with GPT-2's regex
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(specials.eos_id)
    writer.add_eos_token_id(specials.eos_id)
    writer.add_pad_token_id(specials.eos_id)
    writer.add_add_bos_token(False)

    names = gguf.get_tensor_name_map(model_arch, c.n_layer)
    for hf_name, tensor in hf_state.items():
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise RuntimeError(f"no GGUF name for {hf_name} in the {arch_name} tensor map")
        tensor = tensor.detach().float()
        if target.model_type == "llama" and hf_name.endswith("self_attn.q_proj.weight"):
            tensor = _llama_permute(tensor, c.n_head)
        elif target.model_type == "llama" and hf_name.endswith("self_attn.k_proj.weight"):
            tensor = _llama_permute(tensor, c.kv_heads)
        data, raw_dtype = _encode(tensor.numpy(), dtype, gguf)
        writer.add_tensor(gguf_name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _encode(data: np.ndarray, dtype: str, gguf) -> tuple[np.ndarray, object]:
    """(array, raw_dtype) as GGUF stores it; vectors (norms) stay fp32 as llama.cpp's converter keeps them."""
    if data.ndim == 1 or dtype == "fp32":
        return data.astype(np.float32), None
    if dtype == "fp16":
        return data.astype(np.float16), None
    if data.shape[-1] % 32:
        return data.astype(np.float16), None  # q8_0 blocks are 32 wide; a row that does not divide falls back to fp16
    return gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0


def read_gguf_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a GGUF file by its GGUF name, dequantized to fp32 in PyTorch's [out, in] order."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(path))
    out = {}
    for t in reader.tensors:
        data = dequantize(t.data, t.tensor_type)
        out[t.name] = torch.from_numpy(np.array(data, dtype=np.float32)).reshape(tuple(reversed(t.shape.tolist())))
    return out


def gguf_to_hf_state(tensors: dict[str, torch.Tensor], hf_names: list[str], c: ModelConfig, target: Target) -> dict[str, torch.Tensor]:
    """Undoes write_gguf's renaming and q/k permutation, giving the transformers state dict the file encodes."""
    import gguf

    names = gguf.get_tensor_name_map(_model_arch(target), c.n_layer)
    out = {}
    for hf_name in hf_names:
        tensor = tensors[names.get_name(hf_name, try_suffixes=(".weight", ".bias"))]
        if target.model_type == "llama" and hf_name.endswith(("self_attn.q_proj.weight", "self_attn.k_proj.weight")):
            heads = c.n_head if "q_proj" in hf_name else c.kv_heads
            # The permutation is its own inverse only up to the split order: undo it by the transposed reshape.
            tensor = tensor.reshape(heads, tensor.shape[0] // heads // 2, 2, *tensor.shape[1:]).swapaxes(1, 2).reshape(tensor.shape)
        out[hf_name] = tensor
    return out


@EXPORT_FORMATS.register("gguf")
def export_gguf(context: ExportContext, folder: Path) -> dict[str, Any]:
    dtype = context.dtype_among(GGUF_DTYPES, "a GGUF type slmkit writes")
    c = context.loaded.config.model
    head = export_head(context.loaded.model).kind
    if head != LM_HEAD:
        raise SlmkitError(f"GGUF holds language models for llama.cpp, and this model's head is {head}: export it with format=hf")
    target, _, state = mapped_checkpoint(context)
    name = context.loaded.config.name
    write_gguf(folder / "model.gguf", name, c, target, state, context.loaded.tokenizer_path, context.specials, dtype)
    return {
        "format": f"GGUF ({dtype}, llama.cpp architecture `{target.model_type}`)",
        "details": {"GGUF file": "model.gguf"},
        "usage": ["```sh", "llama-cli -m model.gguf -p 'The court held'", "```"],
        "logits_fn": lambda f: gguf_logits(f / "model.gguf", c, target, context.specials),
    }


def gguf_logits(path: Path, c: ModelConfig, target: Target, specials: SpecialTokens):
    """Reads the GGUF back (dequantizing) into the transformers class, so the figure is of the file itself."""
    model = auto_class(target).from_config(hf_config(c, target, specials.ids())).eval()
    names = [n for n in model.state_dict() if not (c.tie_embeddings and n == "lm_head.weight")]
    model.load_state_dict(gguf_to_hf_state(read_gguf_tensors(path), names, c, target), strict=not c.tie_embeddings)
    return lambda ids: model(ids).logits
