"""Token classification (named entities): a BIO tag per word, learned on each word's first sub-token.

The tag set is the task's (saved with the run); sentences longer than the window lose their last words.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from slmkit.eval.encoding import pad_batch
from slmkit.model.tag_decoding import check_decoding
from slmkit.eval.token_classification import labelled_tokens, sentences, tag_set
from slmkit.model import IGNORE_INDEX, TOKEN_HEAD, HeadSpec, Model
from slmkit.objectives.base import OBJECTIVES, Batch, Example, TaskObjective


@OBJECTIVES.register("token_classification")
class TokenClassification(TaskObjective):
    task_type = "token_classification"

    @classmethod
    def complete(cls, config):
        labels = config.objective.labels or tag_set(cls.task_spec(config))
        check_decoding(config.objective.decoding, labels)  # before training, not at the first evaluation
        return dataclasses.replace(config, objective=dataclasses.replace(config.objective, labels=list(labels)))

    @classmethod
    def heads(cls, config) -> list[HeadSpec]:
        return [HeadSpec(TOKEN_HEAD, tuple(config.objective.labels), transform=config.objective.head_transform,
                         decoding=config.objective.decoding)]

    def examples(self, split: str) -> list[Example]:
        names = list(self.config.objective.labels)
        out = []
        for sentence in sentences(self.spec, self.records(split)):
            ids, labels = labelled_tokens(self.tokenizer, sentence, names, self.max_length, self.prefix_id)
            out.append({"input_ids": ids, "labels": labels})
        return out

    def collate(self, examples: list[Example]) -> Batch:
        ids, mask = pad_batch([e["input_ids"] for e in examples], self.pad_id)
        labels, _ = pad_batch([e["labels"] for e in examples], self.pad_id, fill=IGNORE_INDEX)
        return {"input_ids": ids, "padding_mask": mask, "labels": labels}

    def loss(self, model: Model, batch: Batch) -> torch.Tensor:
        logits = model(batch["input_ids"], padding_mask=batch["padding_mask"], head=TOKEN_HEAD)
        crf = model.heads[TOKEN_HEAD].crf
        if crf is None:
            return F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch["labels"].reshape(-1),
                                   ignore_index=IGNORE_INDEX)
        emissions, tags, mask = tagged_positions(logits, batch["labels"])
        # Per tag, as cross-entropy is, so that the loss and its learning rate keep their scale under either decoding.
        return crf.negative_log_likelihood(emissions, tags, mask).sum() / mask.sum().clamp(min=1)


def tagged_positions(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The scores and labels of the tagged tokens (each word's first sub-token), packed to the left of each row in
    order: emissions [B, W, labels], tags [B, W], mask [B, W], W = the most words of a row. The CRF's steps run from
    one word to the next, skipping the sub-tokens between them."""
    tagged = labels != IGNORE_INDEX
    order = torch.sort((~tagged).to(torch.int8), dim=1, stable=True).indices  # tagged positions first, in order
    width = int(tagged.sum(1).max()) if labels.numel() else 0
    order = order[:, :width]
    emissions = logits.gather(1, order[..., None].expand(-1, -1, logits.size(-1)))
    return emissions, labels.gather(1, order), tagged.gather(1, order)
