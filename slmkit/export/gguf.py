"""The gguf format: a single-file GGUF (llama.cpp's format) through the `gguf` package: metadata, byte-level BPE vocab
(gguf_vocab.py), chat template, and tensors in fp32, fp16 or a llama.cpp block type quantized by `gguf.quants`.

Only architectures that llama.cpp computes exactly as slmkit does are written: `llama` (rope + swiglu + rmsnorm) and
`qwen3` (the same with per-head qk-norm). llama.cpp's gpt2/starcoder2/mpt graphs use the tanh GELU and have no
sliding window for llama, so those models are refused rather than shipped as approximations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from slmkit.errors import SlmkitError
from slmkit.export.accepts import Accepts, unrepresentable
from slmkit.export.chat_template import chat_template
from slmkit.export.gguf_vocab import vocabulary
from slmkit.export.hf import auto_class, export_head, hf_config, mapped_checkpoint
from slmkit.export.run import EXPORT_FORMATS, ExportContext
from slmkit.export.targets import Target
from slmkit.export.tokenizer_files import SpecialTokens
from slmkit.model import LM_HEAD, ModelConfig

# slmkit's name of each tensor type -> (gguf.GGMLQuantizationType member, gguf.LlamaFileType member the file declares).
GGUF_TYPES = {
    "fp32": ("F32", "ALL_F32"),
    "fp16": ("F16", "MOSTLY_F16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
    "q4_0": ("Q4_0", "MOSTLY_Q4_0"),
    "q4_1": ("Q4_1", "MOSTLY_Q4_1"),
}
GGUF_DTYPES = tuple(GGUF_TYPES)
# The output matrix's type where it differs from the file's: the 4-bit files keep it (or the tied embedding that serves
# as it) at 8 bits, as llama.cpp's own quantizer keeps it above the rest (it picks Q6_K, which gguf.quants cannot
# write): it moves bits per byte the most.
OUTPUT_MATRIX_TYPE = {"q4_0": "q8_0", "q4_1": "q8_0"}
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


def write_gguf(
    path: Path,
    name: str,
    c: ModelConfig,
    target: Target,
    hf_state: dict[str, torch.Tensor],
    tokenizer_path: Path,
    specials: SpecialTokens,
    dtype: str,
    template: Optional[str] = None,
) -> None:
    """Writes the GGUF; every check (architecture, tokenizer, tensor shapes against the type's blocks) runs first."""
    import gguf

    found = gguf_mismatches(c, target)
    if found:
        raise SlmkitError("this model has no exact GGUF form: " + "; ".join(found) + ". Export it with format=hf instead.")
    if dtype not in GGUF_TYPES:
        raise SlmkitError(f"dtype={dtype} is not a GGUF tensor type slmkit writes; choose one of: {', '.join(GGUF_DTYPES)}")
    model_arch = _model_arch(target)
    arch_name = gguf.MODEL_ARCH_NAMES[model_arch]
    names = gguf.get_tensor_name_map(model_arch, c.n_layer)
    tensors = {}
    for hf_name, tensor in hf_state.items():
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise RuntimeError(f"no GGUF name for {hf_name} in the {arch_name} tensor map")
        tensor = tensor.detach().float()
        if target.model_type == "llama" and hf_name.endswith("self_attn.q_proj.weight"):
            tensor = _llama_permute(tensor, c.n_head)
        elif target.model_type == "llama" and hf_name.endswith("self_attn.k_proj.weight"):
            tensor = _llama_permute(tensor, c.kv_heads)
        tensors[gguf_name] = tensor.numpy()
    kinds = tensor_types(tensors, dtype, c.tie_embeddings)
    pre, tokens, types, merges = vocabulary(tokenizer_path, c.vocab_size)

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
    writer.add_file_type(int(gguf.LlamaFileType[GGUF_TYPES[dtype][1]]))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    # slmkit's one special token ends every document and starts the next (tokenizer_files.SpecialTokens).
    writer.add_bos_token_id(specials.eos_id)
    writer.add_eos_token_id(specials.eos_id)
    writer.add_pad_token_id(specials.eos_id)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    if template is not None:
        writer.add_chat_template(template)
    for gguf_name, data in tensors.items():
        kind = gguf.GGMLQuantizationType[GGUF_TYPES[kinds[gguf_name]][0]]
        if kind in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            writer.add_tensor(gguf_name, data.astype(np.float32 if kind == gguf.GGMLQuantizationType.F32 else np.float16))
        else:
            writer.add_tensor(gguf_name, gguf.quants.quantize(data, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def tensor_types(tensors: dict[str, np.ndarray], dtype: str, tied: bool) -> dict[str, str]:
    """Each tensor's type: vectors (norms) stay fp32 as llama.cpp keeps them; matrices take `dtype`, the output matrix
    OUTPUT_MATRIX_TYPE's. A matrix whose rows do not split into the type's blocks is refused."""
    import gguf

    output = "token_embd.weight" if tied else "output.weight"
    kinds = {}
    for name, data in tensors.items():
        kind = "fp32" if data.ndim == 1 else OUTPUT_MATRIX_TYPE.get(dtype, dtype) if name == output else dtype
        block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[GGUF_TYPES[kind][0]]][0]
        if data.shape[-1] % block:
            raise SlmkitError(
                f"dtype={dtype}: tensor {name} has rows of {data.shape[-1]} values, and {kind} stores blocks of {block}, "
                f"so its rows do not split into blocks; choose a model width that is a multiple of {block}, or dtype=fp16"
            )
        kinds[name] = kind
    return kinds


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
    if not c.causal:
        raise SlmkitError("GGUF holds causal language models that llama.cpp generates text with, and this model is an "
                          "encoder (model.causal=false): export it with format=hf")
    head = export_head(context.loaded.model).kind
    if head != LM_HEAD:
        raise SlmkitError(f"GGUF holds language models for llama.cpp, and this model's head is {head}: export it with format=hf")
    target, _, state = mapped_checkpoint(context)
    name = context.loaded.config.name
    template = chat_template(context.loaded.config)
    write_gguf(folder / "model.gguf", name, c, target, state, context.loaded.tokenizer_path, context.specials, dtype, template)
    return {
        "format": f"GGUF ({dtype}, llama.cpp architecture `{target.model_type}`)",
        "details": {"GGUF file": "model.gguf"},
        "usage": [
            "```sh", "pip install 'slmkit[llamacpp]'  # llama-cpp-python; or llama.cpp's own llama-server -m model.gguf", "```",
            "```python", "from llama_cpp import Llama", "",
            f"llm = Llama('model.gguf', n_ctx={c.block_size}, verbose=False)",
            "print(llm('The court held', max_tokens=64, temperature=0)['choices'][0]['text'])",
            *(["print(llm.create_chat_completion([{'role': 'user', 'content': 'Hello'}])['choices'][0]['message'])"] if template else []),
            "```",
        ],
        "logits_fn": lambda f: gguf_logits(f / "model.gguf", c, target, context.specials),
    }


def gguf_logits(path: Path, c: ModelConfig, target: Target, specials: SpecialTokens):
    """Reads the GGUF back (dequantizing) into the transformers class, so the figure is of the file itself."""
    model = auto_class(target).from_config(hf_config(c, target, specials.ids())).eval()
    names = [n for n in model.state_dict() if not (c.tie_embeddings and n == "lm_head.weight")]
    model.load_state_dict(gguf_to_hf_state(read_gguf_tensors(path), names, c, target), strict=not c.tie_embeddings)
    return lambda ids: model(ids).logits
