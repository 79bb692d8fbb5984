"""Classification as multiple choice over label verbalizations (Yes/No, positive/neutral/negative, ...).

The gold label renders from the record; each label's verbalization is a choice scored by log-likelihood.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from slmkit.errors import SlmkitError
from slmkit.eval.loglikelihood import Scorer
from slmkit.eval.metrics import TaskResult
from slmkit.eval.multiple_choice import ChoiceExample, score_choices
from slmkit.eval.prompting import ContextBuilder, PromptOptions, load_examples
from slmkit.eval.tasks import TASK_TYPES, RunSettings, TaskSpec, required
from slmkit.eval.templates import render


@dataclass
class ClassificationOptions(PromptOptions):
    label: Optional[str] = required("Template of the record's gold label, e.g. '{{label}}'.")
    labels: Any = required("The label set: a list (labels are their own words) or a mapping label -> verbalization.")


def verbalizations(spec: TaskSpec) -> dict[str, str]:
    labels = spec.options.labels
    items = list(labels.items()) if isinstance(labels, dict) else list(labels) if isinstance(labels, list) else []
    if any(isinstance(x, bool) for item in items for x in (item if isinstance(item, tuple) else (item,))):
        raise SlmkitError(
            f"task {spec.name}: a label read as true/false — YAML turns bare yes/no into booleans; quote them: [\"yes\", \"no\"]"
        )
    if isinstance(labels, dict):
        mapping = {str(k): str(v) for k, v in labels.items()}
    elif isinstance(labels, list):
        mapping = {str(k): str(k) for k in labels}
    else:
        mapping = {}
    if len(mapping) < 2:
        raise SlmkitError(f"task {spec.name}: `labels` must list at least two labels (a list or a label: words mapping)")
    return mapping


@TASK_TYPES.register("classification")
class ClassificationTask:
    Options = ClassificationOptions

    @staticmethod
    def examples(spec: TaskSpec, settings: RunSettings) -> list[ChoiceExample]:
        options: ClassificationOptions = spec.options
        mapping = verbalizations(spec)
        keys = list(mapping)
        words = list(mapping.values())

        def gold_of(record: dict[str, Any]) -> int:
            label = render(options.label, record, spec.name).strip()
            if label not in mapping:
                raise SlmkitError(f"task {spec.name}: label {label!r} of a record is not in the task's labels {keys}")
            return keys.index(label)

        builder = ContextBuilder(spec, settings, answer=lambda r: words[gold_of(r)])
        return [
            ChoiceExample(builder.context(record, index), words, gold_of(record))
            for index, record in enumerate(load_examples(spec, settings))
        ]

    @staticmethod
    def run(spec: TaskSpec, scorer: Scorer, settings: RunSettings) -> TaskResult:
        examples = ClassificationTask.examples(spec, settings)
        return score_choices(spec, examples, scorer, spec.options.target_delimiter)
