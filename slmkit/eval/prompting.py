"""Records and prompts of example-based tasks: the options they share, and contexts with seeded few-shot demonstrations.

A context is preamble + shots + the example's prompt; each shot is a prompt followed by its answer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Optional

from slmkit.errors import SlmkitError
from slmkit.eval.records import FORMATS, read_records, select, subset
from slmkit.eval.task import RunSettings, TaskSpec, required
from slmkit.eval.templates import render
from slmkit.options import option


@dataclass
class RecordOptions:
    """Where a task's records are and which of them count: shared by every task type that reads records."""

    data: Optional[str] = required("Test records: a .jsonl/.json/.csv/CoNLL file or glob (${SLMKIT_SHARED}/... or relative to the task file).")
    train: Optional[str] = option(None, "Training records for fine-tuning on this task (never the test file).")
    format: str = option("auto", "File format of data/train/fewshot_data: auto (by suffix), jsonl, json, csv, tsv, conll, text.", choices=FORMATS)
    where: dict[str, Any] = option({}, "Keep only records whose field equals the value (or one of a list of values), e.g. {answer_type: span}.")
    limit: Optional[int] = option(None, "Evaluate at most this many examples unless the run sets its own limit.")


def task_records(spec: TaskSpec, split: str = "data") -> list[dict[str, Any]]:
    """All records of a task's `data` (test) or `train` file, filtered by its `where`."""
    options: RecordOptions = spec.options
    pattern = getattr(options, split)
    if not pattern:
        raise SlmkitError(f"task {spec.name} has no `{split}` records: add `{split}: PATH` to its task file")
    records = select(read_records(pattern, spec.name, format=options.format), options.where, spec.name)
    if not records:
        raise SlmkitError(f"task {spec.name}: {pattern} holds no records" + (" that match its `where`" if options.where else ""))
    return records


@dataclass
class PromptOptions(RecordOptions):
    prompt: Optional[str] = required("Jinja2 template of the question, e.g. 'Q: {{question}}\\nA:'.")
    fewshot_data: Optional[str] = option(None, "Records to draw few-shot demonstrations from (never the test file).")
    num_fewshot: int = option(0, "Demonstrations before each example, drawn with a seed per example.")
    preamble: str = option("", "Text before the demonstrations (an instruction).")
    target_delimiter: str = option(" ", "Between a prompt and its answer.")
    fewshot_delimiter: str = option("\n\n", "Between demonstrations, and before the example.")


def load_examples(spec: TaskSpec, settings: RunSettings) -> list[dict[str, Any]]:
    """The test records an evaluation run scores: all, or its seeded `limit` subset."""
    options: RecordOptions = spec.options
    return subset(task_records(spec), settings.limit if settings.limit is not None else options.limit, settings.seed)


class ContextBuilder:
    """Builds each example's context; `answer` renders a record's gold answer for the demonstrations."""

    def __init__(self, spec: TaskSpec, settings: RunSettings, answer: Callable[[dict[str, Any]], str]):
        self.spec = spec
        self.options: PromptOptions = spec.options
        self.answer = answer
        self.seed = settings.seed
        self.num_fewshot = settings.num_fewshot if settings.num_fewshot is not None else self.options.num_fewshot
        self.pool: list[dict[str, Any]] = []
        if self.num_fewshot > 0:
            if not self.options.fewshot_data:
                raise SlmkitError(
                    f"task {spec.name} has no fewshot_data to draw {self.num_fewshot} demonstrations from: "
                    "run it with num_fewshot=0 or add fewshot_data to its task file"
                )
            self.pool = read_records(self.options.fewshot_data, spec.name, format=self.options.format)
            if len(self.pool) < self.num_fewshot:
                raise SlmkitError(
                    f"task {spec.name}: num_fewshot={self.num_fewshot} but its fewshot_data holds {len(self.pool)} records"
                )

    def prompt(self, record: dict[str, Any]) -> str:
        return render(self.options.prompt, record, self.spec.name)

    def context(self, record: dict[str, Any], index: int) -> str:
        parts = []
        if self.num_fewshot:
            # A string seed is stable across processes and runs (unlike hash()); one draw per example index.
            rng = random.Random(f"{self.seed}/{self.spec.name}/{index}")
            for shot in rng.sample(self.pool, self.num_fewshot):
                parts.append(self.prompt(shot) + self.options.target_delimiter + self.answer(shot))
        parts.append(self.prompt(record))
        return self.options.preamble + self.options.fewshot_delimiter.join(parts)
