"""The tokenizer as llama.cpp reads it from a GGUF: byte-level BPE tokens, merges and token types, and the
pre-tokenizer under the name llama.cpp gives its regex, derived from tokenizer.json and refused where it has none.

llama.cpp does not run tokenizer.json: it splits text with a regex it picks by the file's `tokenizer.ggml.pre` name
(llama-vocab.cpp) and applies no normalizer. A tokenizer is therefore written only when its normalizer, pre-tokenizer
and BPE options are ones a named llama.cpp pre-tokenizer reproduces exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from slmkit.errors import SlmkitError

# The HF tokenizers regexes of the Split-then-ByteLevel tokenizers (Llama 3, Qwen2), with the name llama.cpp gives the
# same split; llama-vocab.cpp keeps each original beside its own rewrite without the (?i:) group.
LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


@dataclass(frozen=True)
class PreTokenizer:
    """One llama.cpp pre-tokenizer: its name, the HF Split regex it reproduces (None: ByteLevel's built-in GPT-2
    regex), and whether llama.cpp merges whole words found in the vocabulary first (its `ignore_merges`)."""

    name: str
    split: Optional[str]
    ignore_merges: bool


LLAMA_CPP_PRE_TOKENIZERS = (
    PreTokenizer("gpt-2", None, ignore_merges=False),
    PreTokenizer("llama-bpe", LLAMA3_SPLIT, ignore_merges=True),
    PreTokenizer("qwen2", QWEN2_SPLIT, ignore_merges=False),
)


def _refuse(path: Path, what: str) -> SlmkitError:
    names = ", ".join(p.name for p in LLAMA_CPP_PRE_TOKENIZERS)
    return SlmkitError(
        f"{path}: {what}, and llama.cpp has no pre-tokenizer that splits text the same way (slmkit writes the ones it "
        f"reproduces exactly: {names}), so a GGUF would tokenize differently from the model's training; export it "
        f"with format=hf instead"
    )


def _split_regex(step: dict[str, Any]) -> Optional[str]:
    """The regex of an isolating, non-inverted Split step; None for any other step."""
    if step.get("type") != "Split" or step.get("behavior") != "Isolated" or step.get("invert"):
        return None
    return step.get("pattern", {}).get("Regex")


def llama_cpp_pre_tokenizer(spec: dict[str, Any], path: Path) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer (tokenizer.ggml.pre); SlmkitError naming what differs."""
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise SlmkitError(
            f"GGUF export writes byte-level BPE vocabularies only (tokenizer.ggml.model=gpt2), and {path} is a "
            f"{model.get('type', 'unknown')} tokenizer; use format=hf for this model"
        )
    if spec.get("normalizer"):
        raise _refuse(path, f"the tokenizer normalizes text first ({spec['normalizer'].get('type')})")
    for option in ("byte_fallback", "dropout", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(option):
            raise _refuse(path, f"its BPE model sets {option}={model[option]!r}")
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    byte_level = steps[-1] if steps and steps[-1].get("type") == "ByteLevel" else None
    if byte_level is None:
        raise _refuse(path, f"its pre-tokenizer {json.dumps(pre)} does not end in ByteLevel")
    if byte_level.get("add_prefix_space"):
        raise _refuse(path, "its ByteLevel step adds a space before the text (add_prefix_space=true)")
    if byte_level.get("use_regex", True):
        if len(steps) != 1:
            raise _refuse(path, f"its pre-tokenizer {json.dumps(pre)} splits before ByteLevel's own GPT-2 regex")
        split = None
    else:
        split = _split_regex(steps[0]) if len(steps) == 2 else None
    known = next((p for p in LLAMA_CPP_PRE_TOKENIZERS if p.split == split), None)
    if known is None or (split is None and not byte_level.get("use_regex", True)):
        raise _refuse(path, f"its pre-tokenizer is {json.dumps(pre)}")
    if bool(model.get("ignore_merges")) != known.ignore_merges:
        raise _refuse(path, f"its BPE model sets ignore_merges={bool(model.get('ignore_merges'))}, where llama.cpp's "
                            f"{known.name} pre-tokenizer has {known.ignore_merges}")
    return known.name


def vocabulary(tokenizer_path: Path, vocab_size: int) -> tuple[str, list[str], list[int], list[str]]:
    """(pre-tokenizer name, tokens padded with unused placeholders up to the model's vocab, token types, merges)."""
    from gguf import TokenType

    spec = json.loads(tokenizer_path.read_text(encoding="utf-8"))
    pre = llama_cpp_pre_tokenizer(spec, tokenizer_path)
    model = spec["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["content"]: t for t in spec.get("added_tokens", [])}
    vocab.update({content: t["id"] for content, t in added.items()})
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [int(TokenType.UNUSED)] * vocab_size
    for token, token_id in vocab.items():
        if token_id >= vocab_size:
            raise SlmkitError(f"token {token!r} has id {token_id} beyond the model's vocab_size={vocab_size}")
        tokens[token_id] = token
        # As llama.cpp's converter: special added tokens are control tokens (matched in text only when asked), the
        # other added tokens user-defined (always matched whole, as tokenizers does).
        kind = TokenType.NORMAL
        if token in added:
            kind = TokenType.CONTROL if added[token].get("special") else TokenType.USER_DEFINED
        types[token_id] = int(kind)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return pre, tokens, types, merges
