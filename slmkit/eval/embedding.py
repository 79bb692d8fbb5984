"""Text to vectors: one vector per text, the model's last hidden states pooled by name and (by default) L2-normalized.

`slmkit embed`, the retrieval task and contrastive fine-tuning (through the embedding head, which pools and normalizes
the same way) all read a text as [document start] + its first tokens, cut to the model's window.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from slmkit.errors import SlmkitError
from slmkit.eval.encoding import sequence_input
from slmkit.eval.head_outputs import batched_outputs
from slmkit.model import EMBEDDING_HEAD, POOLINGS, resolve_pooling



def default_pooling(model: torch.nn.Module) -> str:
    """The pooling the model was trained to embed with (its embedding head's), else mean for a bidirectional model and
    the last token for a causal one (the only token that has seen the whole text)."""
    if EMBEDDING_HEAD in getattr(model, "heads", {}):
        return model.heads[EMBEDDING_HEAD].spec.pooling
    return resolve_pooling("auto", model.config.causal)


def text_rows(tokenizer: Tokenizer, texts: Sequence[str], window: int, prefix_id: int | None) -> list[list[int]]:
    """Each text's ids as an embedding reads them: the document-start token, then the text's first tokens."""
    rows = []
    for number, text in enumerate(texts, 1):
        try:
            rows.append(sequence_input(tokenizer, text, window, prefix_id, keep_start=True))
        except SlmkitError:
            raise SlmkitError(f"text {number} ({text[:40]!r}) encodes to no tokens: there is nothing to embed; "
                              "drop empty texts from the input") from None
    return rows


def embed_rows(model: torch.nn.Module, rows: Sequence[Sequence[int]], pad_id: int, batch_size: int, pooling: str,
               normalize: bool = True, progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """fp32 vectors [len(rows), d_model] on the CPU, one per token row."""
    pool = POOLINGS.get(pooling)

    def run(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pooled = pool(model.body(ids, padding_mask=mask), mask).float()
        return F.normalize(pooled, dim=-1) if normalize else pooled

    device = next(model.parameters()).device
    outputs = batched_outputs(run, rows, pad_id, batch_size, device, progress)
    return torch.stack(outputs) if outputs else torch.zeros(0, model.config.d_model)
