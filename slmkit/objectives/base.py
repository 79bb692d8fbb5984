"""The contract of a training objective: the heads it puts on the body, the batches it learns from, and the loss.

An objective is chosen by name (objective.name). Language modelling reads windows of the prepared token shards;
fine-tuning objectives read a task's records (the same task files that eval scores) and encode them into examples.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from slmkit.errors import SlmkitError
from slmkit.model import HeadSpec, Model
from slmkit.registry import Registry

if TYPE_CHECKING:  # the run config imports nothing of this package; only the type is needed here
    from pathlib import Path

    from tokenizers import Tokenizer
    from torch.utils.data import Dataset

    from slmkit.config import RunConfig
    from slmkit.eval.task import TaskSpec

TOKEN_WINDOWS = "token_windows"  # batches of windows over the prepared token shards, each made by window_example
TASK_EXAMPLES = "task_examples"  # batches of a task's encoded records, padded: {input_ids, padding_mask, ...}

Batch = dict[str, torch.Tensor]
Example = dict[str, Any]


def next_token_example(tokens: torch.Tensor, offset: int) -> Example:
    """A window of window+1 tokens as language modelling reads it: the first window tokens, and the same shifted by one."""
    return {"input_ids": tokens[:-1], "targets": tokens[1:]}


class Objective(nn.Module):
    """Built as cls(config, tokenizer) once the run's tokenizer is known; `loss(model, batch)` is all training calls.

    It is a module so that an objective may own trainable pieces (they join the optimizer and the checkpoint)
    or frozen ones it keeps out of both (a teacher).
    """

    reads: ClassVar[str] = TOKEN_WINDOWS

    def __init__(self, config: "RunConfig", tokenizer: "Tokenizer"):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer

    @classmethod
    def check(cls, config: "RunConfig") -> None:
        """Refuses, before any data is prepared or model built, a config this objective cannot train (a teacher that
        does not fit the student)."""

    @classmethod
    def complete(cls, config: "RunConfig") -> "RunConfig":
        """The config with what the objective derives filled in (labels, pooling), before any model is built.

        Whatever it fills in is saved in the run's config.yaml, so a checkpoint rebuilds the same heads without the task.
        """
        return config

    @classmethod
    def heads(cls, config: "RunConfig") -> list[HeadSpec]:
        raise NotImplementedError

    def loss(self, model: Model, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def validation_loss(self, model: Model, batch: Batch) -> torch.Tensor:
        """The loss validation reports: the training loss, unless the objective has one that compares across runs (a
        student's loss on the data alone, without its teacher)."""
        return self.loss(model, batch)

    def validation_metrics(self, model: Model, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The validation loss and any metrics of the batch beside it (logged as val_<name>), from one forward pass
        (masked-token accuracy)."""
        return self.validation_loss(model, batch), {}

    def window_example(self, tokens: torch.Tensor, offset: int) -> Example:
        """Token-window objectives: the example made of the window+1 tokens read at `offset` of a split; by default
        next-token prediction. Anything random in it must follow from the seed and the offset alone, so that a resumed
        run sees the examples a straight one would, and every validation the same ones (masked tokens)."""
        return next_token_example(tokens, offset)

    def init_weights(self, model: Model) -> list[str]:
        """Sets weights of the freshly built model before training (a student from its teacher's layers) and returns
        lines that report it; not called when a run resumes."""
        return []

    def train_windows(self, shards_dir: "Path") -> "Dataset | None":
        """The training windows of the token shards when they carry more than tokens (a teacher's cached logits);
        None = plain windows."""
        return None


class TaskObjective(Objective):
    """Fine-tuning on a task: examples are encoded from its `train` records (training) and its `data` records
    (validation loss), by the task type's own encoding, which eval uses too."""

    reads = TASK_EXAMPLES
    task_type: ClassVar[str]  # the eval task type this objective learns

    def __init__(self, config: "RunConfig", tokenizer: "Tokenizer"):
        super().__init__(config, tokenizer)
        from slmkit.tokenizer import end_of_document_id

        self.spec = self.task_spec(config)
        # Every example starts after the end-of-document token, as every document does in pretraining; it also pads.
        self.prefix_id = self.pad_id = end_of_document_id(tokenizer)
        self.max_length = config.model.block_size

    @classmethod
    def task_spec(cls, config: "RunConfig") -> "TaskSpec":
        from slmkit.eval import resolve_task

        name = config.objective.task
        if not name:
            raise SlmkitError(
                f"objective {config.objective.name} learns a task: set objective.task to a task name or task YAML "
                f"of type {cls.task_type} (see `slmkit eval` tasks)"
            )
        spec = resolve_task(name)
        if spec.type != cls.task_type:
            raise SlmkitError(f"objective {config.objective.name} learns {cls.task_type} tasks, and {name} is a {spec.type} task")
        if not spec.options.train:
            raise SlmkitError(f"task {name} has no `train` records to learn from: add `train: PATH` to its task file")
        return spec

    def records(self, split: str) -> list[dict[str, Any]]:
        from slmkit.eval.prompting import task_records

        return task_records(self.spec, "train" if split == "train" else "data")

    def examples(self, split: str) -> list[Example]:
        """Encoded examples of the `train` split or of the held-out `val` split (the task's test records)."""
        raise NotImplementedError

    def collate(self, examples: list[Example]) -> Batch:
        raise NotImplementedError


OBJECTIVES: Registry[type[Objective]] = Registry("objective", "An Objective subclass, built as cls(config, tokenizer).")


def objective_heads(config: "RunConfig") -> list[HeadSpec]:
    """The heads a run's objective puts on the body: what a starting run records in its config (see
    slmkit.checkpoint.heads for how a checkpoint reads them back)."""
    return OBJECTIVES.get(config.objective.name).heads(config)
