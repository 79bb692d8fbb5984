"""Sequence classification: one label per record of a classification task, from a pooled hidden state.

The input is the task's prompt (no demonstrations), cut on the left to the window; the labels are the task's,
named by their verbalizations and saved with the run. Pooling `auto` is resolved by
slmkit.model.resolve_pooling.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from slmkit.eval.classification import label_names, labelled_inputs
from slmkit.eval.encoding import pad_batch, sequence_input
from slmkit.model import CLASSIFIER_HEAD, HeadSpec, Model, resolve_pooling
from slmkit.objectives.base import OBJECTIVES, Batch, Example, TaskObjective


@OBJECTIVES.register("classification")
class SequenceClassification(TaskObjective):
    task_type = "classification"

    @classmethod
    def complete(cls, config):
        objective = config.objective
        labels = objective.labels or label_names(cls.task_spec(config))
        pooling = resolve_pooling(objective.pooling, config.model.causal)
        return dataclasses.replace(config, objective=dataclasses.replace(objective, labels=list(labels), pooling=pooling))

    @classmethod
    def heads(cls, config) -> list[HeadSpec]:
        objective = config.objective
        return [HeadSpec(CLASSIFIER_HEAD, tuple(objective.labels), objective.pooling, objective.head_transform)]

    def examples(self, split: str) -> list[Example]:
        return [{"input_ids": sequence_input(self.tokenizer, text, self.max_length, self.prefix_id), "label": label}
                for text, label in labelled_inputs(self.spec, self.records(split))]

    def collate(self, examples: list[Example]) -> Batch:
        ids, mask = pad_batch([e["input_ids"] for e in examples], self.pad_id)
        return {"input_ids": ids, "padding_mask": mask, "labels": torch.tensor([e["label"] for e in examples])}

    def loss(self, model: Model, batch: Batch) -> torch.Tensor:
        logits = model(batch["input_ids"], padding_mask=batch["padding_mask"], head=CLASSIFIER_HEAD)
        return F.cross_entropy(logits, batch["labels"])
