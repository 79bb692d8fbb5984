"""Multiple choice by log-likelihood: the model's answer is the choice it finds most likely after the context.

Reports accuracy and length-normalized accuracy (log-likelihood per character of the choice), beside chance and the
majority answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from slmkit.errors import SlmkitError
from slmkit.eval.loglikelihood import Scorer
from slmkit.eval.metrics import TaskResult, accuracy, chance, majority
from slmkit.eval.prompting import ContextBuilder, PromptOptions, load_examples
from slmkit.eval.task import TASK_TYPES, RunSettings, TaskSpec, required
from slmkit.eval.templates import render
from slmkit.options import option


@dataclass
class ChoiceExample:
    context: str
    choices: list[str]
    gold: int


def score_choices(spec: TaskSpec, examples: list[ChoiceExample], scorer: Scorer, delimiter: str) -> TaskResult:
    pairs = [(ex.context, delimiter + choice) for ex in examples for choice in ex.choices]
    scores = iter(scorer.loglikelihood(pairs))
    hits, norm_hits = [], []
    for ex in examples:
        logprobs = [next(scores).logprob for _ in ex.choices]
        # Ties go to the first choice, as numpy's argmax (and lm-eval) does.
        hits.append(max(range(len(logprobs)), key=lambda i: (logprobs[i], -i)) == ex.gold)
        per_char = [lp / max(len(choice), 1) for lp, choice in zip(logprobs, ex.choices)]
        norm_hits.append(max(range(len(per_char)), key=lambda i: (per_char[i], -i)) == ex.gold)
    return TaskResult(
        task=spec.name,
        type=spec.type,
        n=len(examples),
        metrics={"acc": accuracy(hits), "acc_norm": accuracy(norm_hits)},
        baselines={"chance": chance([len(ex.choices) for ex in examples]), "majority": majority([ex.gold for ex in examples])},
    )


@dataclass
class MultipleChoiceOptions(PromptOptions):
    answer: Optional[str] = required("Template of the gold answer: a 0-based index, one of choice_labels, or the choice's text.")
    choices: Optional[list[str]] = option(None, "Templates of the choices, e.g. ['{{options.A}}', '{{options.B}}'].")
    choices_field: Optional[str] = option(None, "Instead of `choices`: a record field holding the list (or mapping) of choices.")
    choice_labels: Optional[list[str]] = option(None, "Names of the choices in order (e.g. [A, B, C, D]) that `answer` may render to.")


@TASK_TYPES.register("multiple_choice")
class MultipleChoiceTask:
    Options = MultipleChoiceOptions

    @staticmethod
    def examples(spec: TaskSpec, settings: RunSettings) -> list[ChoiceExample]:
        options: MultipleChoiceOptions = spec.options
        if (options.choices is None) == (options.choices_field is None):
            raise SlmkitError(f"task {spec.name}: set exactly one of `choices` (templates) and `choices_field`")

        def choices_of(record: dict[str, Any]) -> list[str]:
            if options.choices is not None:
                return [render(c, record, spec.name) for c in options.choices]
            value = record.get(options.choices_field)
            if isinstance(value, dict):
                value = list(value.values())
            if not isinstance(value, list) or not value:
                raise SlmkitError(f"task {spec.name}: field {options.choices_field!r} must hold a non-empty list of choices")
            return [str(v) for v in value]

        def gold_of(record: dict[str, Any], choices: list[str]) -> int:
            answer = render(options.answer, record, spec.name).strip()
            if answer.isdigit() and int(answer) < len(choices):
                return int(answer)
            if options.choice_labels and answer in options.choice_labels:
                return options.choice_labels.index(answer)
            if answer in choices:
                return choices.index(answer)
            raise SlmkitError(
                f"task {spec.name}: gold answer {answer!r} is neither a choice index, one of choice_labels, "
                f"nor one of the choices {choices}"
            )

        builder = ContextBuilder(spec, settings, answer=lambda r: choices_of(r)[gold_of(r, choices_of(r))])
        examples = []
        for index, record in enumerate(load_examples(spec, settings)):
            choices = choices_of(record)
            examples.append(ChoiceExample(builder.context(record, index), choices, gold_of(record, choices)))
        return examples

    @staticmethod
    def run(spec: TaskSpec, scorer: Scorer, settings: RunSettings) -> TaskResult:
        examples = MultipleChoiceTask.examples(spec, settings)
        return score_choices(spec, examples, scorer, spec.options.target_delimiter)
