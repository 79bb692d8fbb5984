"""How a token-classification head's per-token scores become tags, by name (objective.decoding, saved with the head):
argmax takes each token's best label on its own; bio finds the best sequence that is valid BIO, by Viterbi over
the log-softmax scores with the invalid steps forbidden (I-X only after B-X or I-X; never I-X first).

Argmax can emit `O I-Disease` or `B-A I-B`, which the entity chunker reads as entities the model never began; the
Viterbi path never does, and where argmax is already valid the two agree.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from slmkit.errors import SlmkitError
from slmkit.model.heads import ARGMAX_DECODING
from slmkit.registry import Registry

BIO_DECODING = "bio"

Decode = Callable[[torch.Tensor, Sequence[str]], list[int]]
TAG_DECODINGS: Registry[Decode] = Registry(
    "tag decoding", "decode(scores [words, labels], label names) -> one label index per word.")


@TAG_DECODINGS.register(ARGMAX_DECODING)
def argmax_tags(scores: torch.Tensor, names: Sequence[str]) -> list[int]:
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


def check_decoding(decoding: str, names: Sequence[str]) -> None:
    """Refuses, before a run trains, a label set that its decoding cannot read."""
    TAG_DECODINGS.get(decoding)
    if decoding == BIO_DECODING:
        bio_parts(names)


@TAG_DECODINGS.register(BIO_DECODING)
def viterbi_tags(scores: torch.Tensor, names: Sequence[str]) -> list[int]:
    """The valid BIO sequence with the highest sum of per-token log-softmax scores."""
    start, follows = allowed_transitions(names)
    if scores.size(0) == 0:
        return []
    log_probs = scores.float().log_softmax(-1).cpu()
    forbidden = torch.tensor(float("-inf"))
    best = torch.where(start, log_probs[0], forbidden)  # best score of a valid path ending in each label
    back = []
    for row in log_probs[1:]:
        # candidates[i, j]: the best path ending in i, then label j
        candidates = torch.where(follows, best[:, None], forbidden)
        best, previous = candidates.max(0)
        best = best + row
        back.append(previous)
    path = [int(best.argmax())]
    for previous in reversed(back):
        path.append(int(previous[path[-1]]))
    return path[::-1]
