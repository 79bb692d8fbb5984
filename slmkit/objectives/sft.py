"""Supervised fine-tuning: prompt -> completion pairs (or chat messages) from a generation task's `train` records.

The loss falls on the completion's tokens and the end-of-document token after it, so the model learns to answer
and to stop; objective.loss_on_prompt adds the prompt's tokens. A pair too long for the window loses prompt
tokens on the left (the completion is kept whole when it fits). Examples are padded, not packed: each is scored
on its own, as generation sees it.
"""

from __future__ import annotations

import torch

from slmkit.errors import SlmkitError
from slmkit.eval.encoding import encode, encode_pair, pad_batch
from slmkit.eval.templates import render
from slmkit.model import IGNORE_INDEX, LM_HEAD, HeadSpec, Model
from slmkit.objectives.base import OBJECTIVES, Batch, Example, TaskObjective
from slmkit.objectives.language_model import next_token_loss



@OBJECTIVES.register("sft")
class SupervisedFineTuning(TaskObjective):
    task_type = "generation"

    @classmethod
    def heads(cls, config) -> list[HeadSpec]:
        return [HeadSpec(LM_HEAD)]

    def examples(self, split: str) -> list[Example]:
        options = self.spec.options
        out = []
        for record in self.records(split):
            if options.messages_field:
                ids, trained = self._chat(record)
            else:
                prompt = render(options.prompt, record, self.spec.name)
                completion = render(options.completion or options.target, record, self.spec.name)
                request = encode_pair(self.tokenizer, prompt, options.target_delimiter + completion, self.prefix_id)
                ids = [*request.context, *request.continuation, self.pad_id]
                trained = [False] * len(request.context) + [True] * (len(request.continuation) + 1)
            out.append(self._cut(ids, trained))
        return out

    def _chat(self, record: dict) -> tuple[list[int], list[bool]]:
        """Each message rendered with the chat template; the assistant's messages (and the end token) are learned."""
        options = self.spec.options
        messages = record.get(options.messages_field)
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
            raise SlmkitError(f"task {self.spec.name}: `{options.messages_field}` must be a list of {{role, content}} messages")
        ids = [self.prefix_id] if self.prefix_id is not None else []
        trained = [False] * len(ids)
        for message in messages:
            piece = encode(self.tokenizer, render(options.chat_template, message, self.spec.name))
            ids += piece
            trained += [message["role"] == options.assistant_role] * len(piece)
        return ids + [self.pad_id], trained + [True]

    def _cut(self, ids: list[int], trained: list[bool]) -> Example:
        if self.config.objective.loss_on_prompt:
            trained = [True] * len(ids)
        # The model reads ids[:-1] and predicts ids[1:]; the window holds max_length inputs.
        keep = self.max_length + 1
        ids, trained = ids[-keep:], trained[-keep:]
        targets = [t if learned else IGNORE_INDEX for t, learned in zip(ids[1:], trained[1:])]
        if all(t == IGNORE_INDEX for t in targets):
            raise SlmkitError(f"task {self.spec.name}: a completion is longer than the model's window of "
                              f"{self.max_length} tokens; shorten the completions or train with a larger model.block_size")
        return {"input_ids": ids[:-1], "targets": targets}

    def collate(self, examples: list[Example]) -> Batch:
        ids, mask = pad_batch([e["input_ids"] for e in examples], self.pad_id)
        targets, _ = pad_batch([e["targets"] for e in examples], self.pad_id, fill=IGNORE_INDEX)
        return {"input_ids": ids, "padding_mask": mask, "targets": targets}

    def loss(self, model: Model, batch: Batch) -> torch.Tensor:
        logits = model(batch["input_ids"], padding_mask=batch["padding_mask"], head=LM_HEAD)
        return next_token_loss(logits, batch["targets"])
