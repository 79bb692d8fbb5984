"""Classification tasks: a language model scores each label's verbalization (Yes/No, positive/neutral/negative, ...)
as a choice by log-likelihood; a model fine-tuned with a sequence-classification head answers with its head.

The gold label renders from the record; fine-tuning reads its examples through `labelled_inputs`, so a classifier is
trained on exactly the inputs it is scored on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from slmkit.errors import SlmkitError
from slmkit.eval.encoding import sequence_input
from slmkit.eval.head_outputs import head_outputs
from slmkit.eval.loglikelihood import Scorer
from slmkit.eval.metrics import Metric, TaskResult, label_report, majority
from slmkit.eval.multiple_choice import ChoiceExample, score_choices
from slmkit.eval.prompting import ContextBuilder, PromptOptions, load_examples
from slmkit.eval.task import TASK_TYPES, RunSettings, TaskSpec, required
from slmkit.eval.templates import render
from slmkit.model import CLASSIFIER_HEAD


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


def gold_index(spec: TaskSpec, record: dict[str, Any], keys: list[str]) -> int:
    label = render(spec.options.label, record, spec.name).strip()
    if label not in keys:
        raise SlmkitError(
            f"task {spec.name}: label {label!r} of a record is not in the task's labels {keys}; add it to `labels` "
            "or fix the record (a label set must not change between training and evaluation)"
        )
    return keys.index(label)


def labelled_inputs(spec: TaskSpec, records: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """(input text, gold label index) per record: the task's prompt without demonstrations, as a classifier reads it."""
    keys = list(verbalizations(spec))
    return [(render(spec.options.prompt, record, spec.name), gold_index(spec, record, keys)) for record in records]


def label_names(spec: TaskSpec) -> list[str]:
    """The labels' verbalizations in label order: what a classifier head calls its outputs."""
    return list(verbalizations(spec).values())


def score_with_classifier(spec: TaskSpec, scorer: Scorer, settings: RunSettings) -> TaskResult:
    names = label_names(spec)
    trained = list(scorer.model.heads[CLASSIFIER_HEAD].spec.labels)
    if trained != names:
        raise SlmkitError(
            f"task {spec.name} has the labels {names} but the model's classifier was trained on {trained}: "
            "the label set changed between training and evaluation; fine-tune again on this task"
        )
    examples = labelled_inputs(spec, load_examples(spec, settings))
    rows = [sequence_input(scorer.tokenizer, text, scorer.window, scorer.prefix_id) for text, _ in examples]
    logits = head_outputs(scorer.model, rows, CLASSIFIER_HEAD, scorer.pad_id, scorer.batch_size)
    golds = [gold for _, gold in examples]
    predictions = [int(row.argmax()) for row in logits]
    report = label_report(golds, predictions, names)
    most_common = max(set(golds), key=golds.count)
    baseline = label_report(golds, [most_common] * len(golds), names)
    return TaskResult(
        task=spec.name,
        type=spec.type,
        n=len(examples),
        metrics={"acc": report.accuracy, "macro_f1": report.macro_f1},
        baselines={"majority": majority(golds), "majority_macro_f1": Metric(baseline.macro_f1.value)},
        details={"scored_with": "classifier head", "per_class": report.per_class,
                 "confusion (rows gold, columns predicted)": {"labels": names, "matrix": report.confusion}},
    )


@TASK_TYPES.register("classification")
class ClassificationTask:
    Options = ClassificationOptions

    @staticmethod
    def examples(spec: TaskSpec, settings: RunSettings) -> list[ChoiceExample]:
        mapping = verbalizations(spec)
        keys = list(mapping)
        words = list(mapping.values())
        builder = ContextBuilder(spec, settings, answer=lambda r: words[gold_index(spec, r, keys)])
        return [
            ChoiceExample(builder.context(record, index), words, gold_index(spec, record, keys))
            for index, record in enumerate(load_examples(spec, settings))
        ]

    @staticmethod
    def run(spec: TaskSpec, scorer: Scorer, settings: RunSettings) -> TaskResult:
        if CLASSIFIER_HEAD in getattr(scorer.model, "heads", {}):
            return score_with_classifier(spec, scorer, settings)
        examples = ClassificationTask.examples(spec, settings)
        return score_choices(spec, examples, scorer, spec.options.target_delimiter)
