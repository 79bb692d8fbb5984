"""Runs a fine-tuned head (or any function of a padded batch) over many token rows: batched longest-first with a
padding mask, each row's output unpadded.

Classification, entity and answer-span tasks score through here, and so do `slmkit predict` and `slmkit embed`.
"""

from __future__ import annotations

from typing import Callable, Sequence

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
    return batched_outputs(lambda ids, mask: model(ids, padding_mask=mask, head=head), rows, pad_id, batch_size,
                           next(model.parameters()).device)


@torch.inference_mode()
def batched_outputs(run: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], rows: Sequence[Sequence[int]],
                    pad_id: int, batch_size: int, device: torch.device | str,
                    progress: Callable[[int], None] | None = None) -> list[torch.Tensor]:
    """run(ids [B, T], padding_mask [B, T]) over the rows, longest first; its fp32 output per row on the CPU, unpadded
    when it is per token ([B, T, ...]). `progress` is told how many rows each batch finished."""
    if batch_size < 1:
        raise SlmkitError(f"batch_size must be at least 1, got {batch_size}")
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    outputs: list[torch.Tensor | None] = [None] * len(rows)
    for start in range(0, len(order), batch_size):
        picked = order[start:start + batch_size]
        ids, mask = pad_batch([rows[i] for i in picked], pad_id)
        out = run(ids.to(device), mask.to(device)).float().cpu()
        for j, i in enumerate(picked):
            outputs[i] = out[j] if out.dim() == 2 else out[j, : len(rows[i])]
        if progress is not None:
            progress(len(picked))
    return outputs  # type: ignore[return-value]
