"""How a token-classification head's per-token scores become tags, by name (objective.decoding, saved with the head):
argmax takes each token's best label on its own; bio finds the best sequence that is valid BIO, by Viterbi over
the log-softmax scores with the invalid steps forbidden (I-X only after B-X or I-X; never I-X first); crf finds the
best sequence under the head's learned CRF (slmkit.model.crf), its scores plus the learned start, step and end
scores, with the invalid BIO steps also forbidden when the labels are BIO.

Argmax can emit `O I-Disease` or `B-A I-B`, which the entity chunker reads as entities the model never began; the
Viterbi path never does, and where argmax is already valid the two agree.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from slmkit.errors import SlmkitError
from slmkit.model.crf import TagTransitions
from slmkit.model.heads import ARGMAX_DECODING, CRF_DECODING
from slmkit.registry import Registry

BIO_DECODING = "bio"

Decode = Callable[[torch.Tensor, Sequence[str], "TagTransitions | None"], list[int]]
TAG_DECODINGS: Registry[Decode] = Registry(
    "tag decoding", "decode(scores [words, labels], label names, the head's CRF or None) -> one label index per word.")


@TAG_DECODINGS.register(ARGMAX_DECODING)
def argmax_tags(scores: torch.Tensor, names: Sequence[str], crf: TagTransitions | None = None) -> list[int]:
    return scores.argmax(-1).tolist()


def bio_parts(names: Sequence[str]) -> list[tuple[str, str]]:
    """(prefix B, I or O, entity type) of each label name; a name that is not O, B-TYPE or I-TYPE is refused."""
    parts = []
    for name in names:
        prefix, dash, kind = name.partition("-")
        if name == "O":
            parts.append(("O", ""))
        elif dash and prefix in ("B", "I") and kind:
            parts.append((prefix, kind))
        else:
            raise SlmkitError(
                f"decoding bio needs BIO label names (O, B-TYPE, I-TYPE), and this head has the label {name!r} "
                f"(labels {list(names)}): use objective.decoding=argmax for this label set"
            )
    return parts


def allowed_transitions(names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(may start [labels], may follow [previous, next]) as booleans: I-X only after B-X or I-X, and never first."""
    parts = bio_parts(names)
    inside = torch.tensor([prefix == "I" for prefix, _ in parts])
    kinds = [kind for _, kind in parts]
    follows = torch.ones(len(names), len(names), dtype=torch.bool)
    for j, (prefix, kind) in enumerate(parts):
        if prefix == "I":
            follows[:, j] = torch.tensor([parts[i][0] != "O" and kinds[i] == kind for i in range(len(names))])
    return ~inside, follows


def is_bio(names: Sequence[str]) -> bool:
    try:
        bio_parts(names)
    except SlmkitError:
        return False
    return True


def check_decoding(decoding: str, names: Sequence[str]) -> None:
    """Refuses, before a run trains, a label set that its decoding cannot read."""
    TAG_DECODINGS.get(decoding)
    if decoding == BIO_DECODING:
        bio_parts(names)


def best_path(scores: torch.Tensor, start: torch.Tensor, steps: torch.Tensor, end: torch.Tensor) -> list[int]:
    """Viterbi: the label sequence with the highest start[y1] + sum scores[i, yi] + sum steps[yi, yi+1] + end[yn]
    (scores [words, labels]; -inf forbids a label or a step)."""
    if scores.size(0) == 0:
        return []
    best = start + scores[0]  # best score of a path ending in each label
    back = []
    for row in scores[1:]:
        best, previous = (best[:, None] + steps).max(0)  # [i, j]: the best path ending in i, then label j
        best = best + row
        back.append(previous)
    path = [int((best + end).argmax())]
    for previous in reversed(back):
        path.append(int(previous[path[-1]]))
    return path[::-1]


def bio_masks(names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(start [labels], steps [previous, next]): 0 where BIO allows the label first or the step, -inf where not."""
    may_start, follows = allowed_transitions(names)
    forbidden = torch.tensor(float("-inf"))
    return torch.where(may_start, 0.0, forbidden), torch.where(follows, 0.0, forbidden)


@TAG_DECODINGS.register(BIO_DECODING)
def viterbi_tags(scores: torch.Tensor, names: Sequence[str], crf: TagTransitions | None = None) -> list[int]:
    """The valid BIO sequence with the highest sum of per-token log-softmax scores."""
    start, steps = bio_masks(names)
    return best_path(scores.float().log_softmax(-1).cpu(), start, steps, torch.zeros(len(names)))


@TAG_DECODINGS.register(CRF_DECODING)
def crf_tags(scores: torch.Tensor, names: Sequence[str], crf: TagTransitions | None = None) -> list[int]:
    """The best sequence under the head's CRF (its scores are the emissions, as in training), valid BIO when the
    labels are BIO: a learned step score is finite, so without the mask a rare invalid step could still win."""
    if crf is None:
        raise SlmkitError("the crf decoding reads the head's learned transitions, and this head has none: it was "
                          "trained under another decoding; use objective.decoding=bio or argmax for it")
    start, steps, end = (t.detach().float().cpu() for t in (crf.start, crf.transitions, crf.end))
    if is_bio(names):
        may_start, may_follow = bio_masks(names)
        start, steps = start + may_start, steps + may_follow
    return best_path(scores.float().cpu(), start, steps, end)
