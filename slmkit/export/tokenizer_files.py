"""Wraps a run's tokenizer.json as a transformers tokenizer folder that AutoTokenizer loads with no custom code.

Writes tokenizer.json (unchanged, or with the document-start token put before every text for an encoder) plus
tokenizer_config.json and special_tokens_map.json naming eos/bos/pad/unk.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from tokenizers import processors

from slmkit.tokenizer import TOKENIZER_FILE, UNK, end_of_document_id, load_tokenizer


@dataclass(frozen=True)
class SpecialTokens:
    """slmkit has one document separator (`end_of_document_id`): it serves as eos, bos and pad, as in GPT-2."""

    eos: str
    eos_id: int
    unk: str | None

    def ids(self) -> dict[str, int]:
        return {"bos_token_id": self.eos_id, "eos_token_id": self.eos_id, "pad_token_id": self.eos_id}


def special_tokens(tokenizer_path: Path, configured: list[str]) -> SpecialTokens:
    """The export's special tokens, from the tokenizer file alone.

    `configured` (the run's tokenizer.special_tokens) is no longer read: the tokenizer decides its end-of-document
    token. It goes once export/run.py stops passing it.
    """
    tokenizer = load_tokenizer(tokenizer_path)
    eos_id = end_of_document_id(tokenizer)
    unk = UNK if tokenizer.token_to_id(UNK) is not None else None
    return SpecialTokens(eos=tokenizer.id_to_token(eos_id), eos_id=eos_id, unk=unk)


def write_tokenizer_files(tokenizer_path: Path, out_dir: Path, specials: SpecialTokens, max_length: int,
                          start_with_document_token: bool = False, chat_template: str | None = None) -> None:
    """start_with_document_token: encoding a text (with special tokens, transformers' default) puts the
    end-of-document token first, where slmkit puts it before every text an encoder reads. chat_template: the
    conversation format an sft run learned (export/chat_template.py), for apply_chat_template."""
    if start_with_document_token:
        tokenizer = load_tokenizer(tokenizer_path)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{specials.eos} $A", pair=f"{specials.eos} $A $B:1", special_tokens=[(specials.eos, specials.eos_id)])
        tokenizer.save(str(out_dir / TOKENIZER_FILE))
    else:
        shutil.copyfile(tokenizer_path, out_dir / TOKENIZER_FILE)
    named = {"bos_token": specials.eos, "eos_token": specials.eos, "pad_token": specials.eos}
    if specials.unk:
        named["unk_token"] = specials.unk
    config = {
        # The generic class loads tokenizer.json as it is; a model-specific class could re-derive pieces of it.
        "tokenizer_class": "PreTrainedTokenizerFast",
        **named,
        "model_max_length": max_length,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(named, indent=2) + "\n")
