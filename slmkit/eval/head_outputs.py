"""Runs a fine-tuned head over many token rows: batched longest-first with a padding mask, each row's output unpadded.

Classification, entity and answer-span tasks score through here, and so does `slmkit predict`.
"""

from __future__ import annotations

from typing import Sequence

import torch

from slmkit.errors import SlmkitError
from slmkit.eval.encoding import pad_batch


def require_head(model: torch.nn.Module, kind: str, task: str, objective: str) -> None:
    heads = getattr(model, "heads", {})
    if kind not in heads:
        raise SlmkitError(
            f"task {task} needs a model with a {kind} head, and this one has: {', '.join(heads) or 'none'}; "
            f"fine-tune one first (objective.name={objective}, objective.task={task})"
        )


@torch.inference_mode()
def head_outputs(model: torch.nn.Module, rows: Sequence[Sequence[int]], head: str, pad_id: int,
                 batch_size: int) -> list[torch.Tensor]:
    """The head's fp32 output for each row, on the CPU: [num_labels] per sequence, or [len(row), ...] per token."""
    if batch_size < 1:
        raise SlmkitError(f"batch_size must be at least 1, got {batch_size}")
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    outputs: list[torch.Tensor | None] = [None] * len(rows)
    for start in range(0, len(order), batch_size):
        picked = order[start:start + batch_size]
        ids, mask = pad_batch([rows[i] for i in picked], pad_id)
        out = model(ids.to(device), padding_mask=mask.to(device), head=head).float().cpu()
        for j, i in enumerate(picked):
            outputs[i] = out[j] if out.dim() == 2 else out[j, : len(rows[i])]
    return outputs  # type: ignore[return-value]
