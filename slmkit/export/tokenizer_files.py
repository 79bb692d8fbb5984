"""Wraps a run's tokenizer.json as a transformers tokenizer folder that AutoTokenizer loads with no custom code.

Writes tokenizer.json unchanged plus tokenizer_config.json and special_tokens_map.json naming eos/bos/pad/unk.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from slmkit.errors import SlmkitError

UNK = "<unk>"


@dataclass(frozen=True)
class SpecialTokens:
    """slmkit has one document separator (the first special token): it serves as eos, bos and pad, as in GPT-2."""

    eos: str
    eos_id: int
    unk: str | None

    def ids(self) -> dict[str, int]:
        return {"bos_token_id": self.eos_id, "eos_token_id": self.eos_id, "pad_token_id": self.eos_id}


def special_tokens(tokenizer_path: Path, configured: list[str]) -> SpecialTokens:
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    if not configured:
        raise SlmkitError("the run's tokenizer.special_tokens is empty: export needs the end-of-document token")
    eos_id = tokenizer.token_to_id(configured[0])
    if eos_id is None:
        raise SlmkitError(f"{tokenizer_path} has no token {configured[0]!r}, the run's end-of-document token: is it the run's tokenizer?")
    unk = UNK if tokenizer.token_to_id(UNK) is not None else None
    return SpecialTokens(eos=configured[0], eos_id=eos_id, unk=unk)


def write_tokenizer_files(tokenizer_path: Path, out_dir: Path, specials: SpecialTokens, max_length: int) -> None:
    shutil.copyfile(tokenizer_path, out_dir / "tokenizer.json")
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
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(named, indent=2) + "\n")
