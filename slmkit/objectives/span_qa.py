"""Extractive question answering: start and end positions of the answer in each window of the context.

Windows come from the task type's own windowing (doc_stride overlap); a window that does not hold the whole answer
points at position 0, the document-start token. Records whose answer is not in their context stop the run, or are
skipped and counted when the task says `missing_answers: skip`.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from slmkit.errors import SlmkitError
from slmkit.eval.encoding import pad_batch
from slmkit.eval.span_qa import answer_positions, context_stride, locate, questions, windows
from slmkit.model import SPAN_HEAD, HeadSpec, Model
from slmkit.objectives.base import OBJECTIVES, Batch, Example, TaskObjective

log = logging.getLogger("slmkit")


@OBJECTIVES.register("span_qa")
class SpanQuestionAnswering(TaskObjective):
    task_type = "span_qa"

    @classmethod
    def heads(cls, config) -> list[HeadSpec]:
        return [HeadSpec(SPAN_HEAD, transform=config.objective.head_transform)]

    def examples(self, split: str) -> list[Example]:
        options = self.spec.options
        stride = context_stride(options, self.max_length)
        out, missing = [], []
        for number, item in enumerate(questions(self.spec, self.records(split)), 1):
            span = locate(item)
            if span is None:
                missing.append(number)
                continue
            for window in windows(self.tokenizer, item, self.max_length, stride, self.prefix_id):
                start, end = answer_positions(window, *span)
                out.append({"input_ids": window.ids, "start": start, "end": end})
        if missing and options.missing_answers == "stop":
            raise SlmkitError(
                f"task {self.spec.name}: {len(missing)} {split} record(s) have no answer in their context (record "
                f"{', '.join(map(str, missing[:5]))}{', ...' if len(missing) > 5 else ''}); fix them, or set "
                "`missing_answers: skip` in the task file to leave them out of training"
            )
        if missing:
            log.warning("task %s: skipped %d %s records whose answer is not in their context", self.spec.name, len(missing), split)
        return out

    def collate(self, examples: list[Example]) -> Batch:
        ids, mask = pad_batch([e["input_ids"] for e in examples], self.pad_id)
        return {"input_ids": ids, "padding_mask": mask, "start": torch.tensor([e["start"] for e in examples]),
                "end": torch.tensor([e["end"] for e in examples])}

    def loss(self, model: Model, batch: Batch) -> torch.Tensor:
        logits = model(batch["input_ids"], padding_mask=batch["padding_mask"], head=SPAN_HEAD)
        logits = logits.masked_fill(~batch["padding_mask"][..., None], float("-inf"))
        return (F.cross_entropy(logits[..., 0], batch["start"]) + F.cross_entropy(logits[..., 1], batch["end"])) / 2
