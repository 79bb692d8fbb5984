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
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch["labels"].reshape(-1), ignore_index=IGNORE_INDEX)
