"""Masked language modelling (BERT): predict a random fraction of the tokens of windows over the token shards from all
the others, with bidirectional attention.

Of the chosen tokens 80% are replaced by the mask token, 10% by a random ordinary token and 10% stay as they are;
with whole-word masking, every token of a chosen word is chosen. The choice for a window is drawn from the run's seed
and the window's offset: a resumed run masks exactly as a straight one, and every validation scores the same masked
tokens, so val_loss and val_masked_accuracy compare across steps. Loss and accuracy count the chosen tokens only,
and the prediction head runs on those alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from slmkit.errors import SlmkitError
from slmkit.model import IGNORE_INDEX, MASKED_LM_HEAD, HeadSpec, Model
from slmkit.objectives.base import OBJECTIVES, Batch, Example, Objective

MASKED, RANDOM = 0.8, 0.9  # of the chosen tokens: below 0.8 the mask token, below 0.9 a random token, else unchanged


def mask_token_id(tokenizer: Tokenizer, token: str, where: str) -> int:
    """The id of the tokenizer's special token `token`; SlmkitError saying how to add it when there is none."""
    found = [i for i, added in tokenizer.get_added_tokens_decoder().items() if added.special and added.content == token]
    if not found:
        raise SlmkitError(
            f"objective masked_lm needs the mask token {token!r}, and the tokenizer {where} has no such special token: "
            f"add it to tokenizer.special_tokens after the end-of-document token (e.g. [\"<|endoftext|>\", \"{token}\"]) "
            "and train a new tokenizer, or set objective.mask_token to the mask token this tokenizer has"
        )
    return found[0]


def word_boundaries(tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """(begins_word, ends_in_space), bool per vocabulary id, for any tokenizer kind: what each token adds after a
    letter, when decoded, starts with whitespace (byte-level 'Ġthe', metaspace '▁the', a WordPiece token without '##')
    or ends with it ('Ċ', a character tokenizer's ' ')."""
    anchor = (tokenizer.encode("a", add_special_tokens=False).ids or [0])[0]
    lead = tokenizer.decode([anchor], skip_special_tokens=False)
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    decoded = tokenizer.decode_batch([[anchor, i] for i in range(size)], skip_special_tokens=False)
    added = [text[len(lead):] if text.startswith(lead) else text for text in decoded]
    return (np.array([not piece or piece[0].isspace() for piece in added]),
            np.array([bool(piece) and piece[-1].isspace() for piece in added]))


@dataclass(frozen=True)
class Masking:
    """Masks windows of token ids; plain arrays only, so DataLoader workers receive it whole."""

    rate: float
    mask_id: int
    special: np.ndarray  # bool per id: never chosen (document separators), never a random replacement
    ordinary: np.ndarray  # the ids a random replacement is drawn from
    seed: int
    begins_word: np.ndarray | None = None  # whole-word masking only
    ends_in_space: np.ndarray | None = None

    @classmethod
    def for_tokenizer(cls, tokenizer: Tokenizer, token: str, rate: float, whole_word: bool, seed: int) -> "Masking":
        mask_id = mask_token_id(tokenizer, token, "of this run")
        size = tokenizer.get_vocab_size(with_added_tokens=True)
        special = np.zeros(size, dtype=bool)
        special[[i for i, added in tokenizer.get_added_tokens_decoder().items() if added.special]] = True
        begins, ends = word_boundaries(tokenizer) if whole_word else (None, None)
        return cls(rate, mask_id, special, np.flatnonzero(~special), seed, begins, ends)

    def words(self, ids: np.ndarray) -> np.ndarray:
        """The word index of every position: a word starts at a token that begins one, after a token ending in
        whitespace, and at and after a special token."""
        special = self.special[ids]
        starts = self.begins_word[ids] | special
        starts[1:] |= self.ends_in_space[ids[:-1]] | special[:-1]
        starts[0] = True
        return np.cumsum(starts) - 1

    def __call__(self, ids: np.ndarray, offset: int) -> tuple[np.ndarray, np.ndarray]:
        """(masked input ids, targets) for a window of ids read at `offset`; targets are IGNORE_INDEX where not chosen."""
        rng = np.random.default_rng([self.seed, offset])
        eligible = ~self.special[ids]
        if self.begins_word is not None:
            words = self.words(ids)
            chosen = (rng.random(int(words[-1]) + 1) < self.rate)[words] & eligible
        else:
            chosen = (rng.random(len(ids)) < self.rate) & eligible
        if not chosen.any() and eligible.any():
            # At least one target per window: a batch of windows without any would have no loss to take the mean of.
            chosen[rng.choice(np.flatnonzero(eligible))] = True
        action = rng.random(len(ids))
        replaced = chosen & (action >= MASKED) & (action < RANDOM)
        masked_ids = ids.copy()
        masked_ids[chosen & (action < MASKED)] = self.mask_id
        masked_ids[replaced] = rng.choice(self.ordinary, size=int(replaced.sum()))
        return masked_ids, np.where(chosen, ids, IGNORE_INDEX)


@OBJECTIVES.register("masked_lm")
class MaskedLanguageModeling(Objective):
    @classmethod
    def check(cls, config) -> None:
        if config.model.causal:
            raise SlmkitError("objective masked_lm trains a bidirectional encoder, and model.causal=true would hide the "
                              "tokens after each mask: set model.causal=false")
        token, tokenizer = config.objective.mask_token, config.tokenizer
        if tokenizer.path:
            from slmkit.tokenizer import load_tokenizer

            mask_token_id(load_tokenizer(tokenizer.path), token, tokenizer.path)
        elif not config.init_from and token not in tokenizer.special_tokens[1:]:
            raise SlmkitError(
                f"objective masked_lm needs the mask token {token!r} in tokenizer.special_tokens, after the "
                f"end-of-document token (it has {tokenizer.special_tokens}): e.g. "
                f"tokenizer.special_tokens=[\"{(tokenizer.special_tokens or ['<|endoftext|>'])[0]}\",\"{token}\"]"
            )

    @classmethod
    def heads(cls, config) -> list[HeadSpec]:
        return [HeadSpec(MASKED_LM_HEAD)]

    def __init__(self, config, tokenizer: Tokenizer):
        super().__init__(config, tokenizer)
        settings = config.objective
        self.masking = Masking.for_tokenizer(tokenizer, settings.mask_token, settings.mask_rate,
                                             settings.whole_word_masking, config.trainer.seed)

    def window_example(self, tokens: torch.Tensor, offset: int) -> Example:
        # The window needs no shift: its own tokens are the targets.
        ids, targets = self.masking(tokens[:-1].numpy(), offset)
        return {"input_ids": torch.from_numpy(ids), "targets": torch.from_numpy(targets)}

    def _predictions(self, model: Model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [chosen, vocab] (fp32) and targets [chosen] of the chosen tokens."""
        chosen = batch["targets"] != IGNORE_INDEX
        hidden = model.body(batch["input_ids"])
        return model.heads[MASKED_LM_HEAD](hidden[chosen]), batch["targets"][chosen]

    def loss(self, model: Model, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(*self._predictions(model, batch))

    def validation_metrics(self, model: Model, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, targets = self._predictions(model, batch)
        accuracy = (logits.argmax(dim=-1) == targets).float().mean()
        return F.cross_entropy(logits, targets), {"masked_accuracy": accuracy}
