"""Prompts of example-based tasks: the options they share, and contexts with seeded few-shot demonstrations.

A context is preamble + shots + the example's prompt; each shot is a prompt followed by its answer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Optional

from slmkit.errors import SlmkitError
from slmkit.eval.records import read_records, subset
from slmkit.eval.tasks import RunSettings, TaskSpec, required
from slmkit.eval.templates import render
from slmkit.options import option


@dataclass
class PromptOptions:
    data: Optional[str] = required("Test records: a .jsonl/.json file or glob (${SLMKIT_SHARED}/... or relative to the task file).")
    prompt: Optional[str] = required("Jinja2 template of the question, e.g. 'Q: {{question}}\\nA:'.")
    fewshot_data: Optional[str] = option(None, "Records to draw few-shot demonstrations from (never the test file).")
    num_fewshot: int = option(0, "Demonstrations before each example, drawn with a seed per example.")
    preamble: str = option("", "Text before the demonstrations (an instruction).")
    target_delimiter: str = option(" ", "Between a prompt and its answer.")
    fewshot_delimiter: str = option("\n\n", "Between demonstrations, and before the example.")
    limit: Optional[int] = option(None, "Evaluate at most this many examples unless the run sets its own limit.")


def load_examples(spec: TaskSpec, settings: RunSettings) -> list[dict[str, Any]]:
    options: PromptOptions = spec.options
    records = read_records(options.data, spec.name)
    return subset(records, settings.limit if settings.limit is not None else options.limit, settings.seed)


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
            self.pool = read_records(self.options.fewshot_data, spec.name)
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
