"""A linear-chain CRF over a token head's tags (objective.decoding=crf): learned scores for the first tag, each
tag-to-tag step and the last tag, trained with the sequence's log-likelihood (Lafferty et al. 2001; the CRF of
Lample et al.'s BiLSTM-CRF tagger).

The head's per-token scores are the CRF's emissions and stay what transformers' token classifier computes; the
transitions are the only weights the CRF adds. A sentence's score is start[y1] + sum emissions[i, yi] +
sum transitions[yi, yi+1] + end[yn]; its likelihood divides by the sum over every tag sequence (the forward algorithm).
Decoding (the best sequence by Viterbi) lives with the other decodings in slmkit.model.tag_decoding.
"""

from __future__ import annotations

import torch
from torch import nn


class TagTransitions(nn.Module):
    """start [labels], transitions [previous, next], end [labels]: zeros at first, so an untrained CRF reads the
    emissions alone."""

    def __init__(self, num_labels: int):
        super().__init__()
        self.start = nn.Parameter(torch.zeros(num_labels))
        self.transitions = nn.Parameter(torch.zeros(num_labels, num_labels))
        self.end = nn.Parameter(torch.zeros(num_labels))

    def negative_log_likelihood(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """-log p(tags | emissions) per sequence [B] for emissions [B, W, labels], tags [B, W] and mask [B, W] (True =
        a tag of the sequence; each row's tags first, then padding). A row with no tag scores 0."""
        emissions = emissions.float()
        batch, width, _ = emissions.shape
        if width == 0:
            return emissions.new_zeros(batch)
        lengths = mask.long().sum(1)
        rows = torch.arange(batch, device=emissions.device)
        tags = tags.masked_fill(~mask, 0)  # padding's tag is never scored; 0 keeps the gathers in range
        # The gold path's score.
        emitted = emissions.gather(2, tags[..., None]).squeeze(2)
        stepped = self.transitions[tags[:, :-1], tags[:, 1:]]
        last = tags[rows, (lengths - 1).clamp(min=0)]
        gold = (self.start[tags[:, 0]] + (emitted * mask).sum(1) + (stepped * mask[:, 1:]).sum(1) + self.end[last])
        # The log-sum over every path (the forward algorithm); a padded step keeps the row's sums as they were.
        alpha = self.start + emissions[:, 0]
        for i in range(1, width):
            step = torch.logsumexp(alpha[:, :, None] + self.transitions[None], dim=1) + emissions[:, i]
            alpha = torch.where(mask[:, i, None], step, alpha)
        partition = torch.logsumexp(alpha + self.end, dim=1)
        return torch.where(lengths > 0, partition - gold, torch.zeros_like(gold))
