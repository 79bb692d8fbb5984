"""Generation tasks: greedy decoding until a stop sequence, scored by exact match and by containment of the answer.

The baseline is the majority answer: how often always answering the most common gold answer would match exactly.
Supervised fine-tuning (objective sft) learns a generation task's prompt -> completion pairs from its `train` records.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from slmkit.eval.decode import greedy_until
from slmkit.eval.loglikelihood import Scorer
from slmkit.eval.metrics import TaskResult, accuracy, majority
from slmkit.eval.prompting import ContextBuilder, PromptOptions, load_examples
from slmkit.eval.task import TASK_TYPES, RunSettings, TaskSpec, required
from slmkit.eval.templates import render
from slmkit.options import option


@dataclass
class GenerationOptions(PromptOptions):
    target: Optional[str] = required("Template of the gold answer, e.g. '{{answer}}'.")
    stop: list[str] = option(["\n"], "Generation ends at the first of these strings (not included in the answer).")
    max_new_tokens: int = option(32, "Generate at most this many tokens (and at most half the model's window).")
    ignore_case: bool = option(True, "Compare answers case-insensitively (both are always stripped of outer whitespace).")
    extract: Optional[str] = option(None, "A regex applied to the generated text before comparing: its first group (or whole match) is the answer; no match = no answer.")
    completion: Optional[str] = option(None, "Fine-tuning (sft): template of what the model learns to write after the prompt; None = the target.")
    messages_field: Optional[str] = option(None, "Fine-tuning (sft) on chats: a record field holding [{role, content}, ...] messages, used instead of prompt/completion.")
    chat_template: str = option("<|{{role}}|>\n{{content}}\n", "Chats: Jinja2 template of one message; the messages are joined as rendered.")
    assistant_role: str = option("assistant", "Chats: the role whose messages the model learns to write.")


@TASK_TYPES.register("generation")
class GenerationTask:
    Options = GenerationOptions

    @staticmethod
    def run(spec: TaskSpec, scorer: Scorer, settings: RunSettings) -> TaskResult:
        options: GenerationOptions = spec.options

        def normalize(text: str) -> str:
            text = text.strip()
            return text.lower() if options.ignore_case else text

        def answer_of(generated: str) -> str:
            if options.extract is None:
                return generated
            match = re.search(options.extract, generated, flags=re.IGNORECASE if options.ignore_case else 0)
            return "" if match is None else match.group(1 if match.groups() else 0)

        builder = ContextBuilder(spec, settings, answer=lambda r: render(options.target, r, spec.name))
        exact, contains, golds = [], [], []
        for index, record in enumerate(load_examples(spec, settings)):
            gold = normalize(render(options.target, record, spec.name))
            # The delimiter's space stays out of the prompt: a trailing space would split the answer's first token.
            prompt = builder.context(record, index) + options.target_delimiter.rstrip(" ")
            answer = normalize(answer_of(greedy_until(scorer.model, scorer.tokenizer, prompt, options.stop, options.max_new_tokens)))
            exact.append(answer == gold)
            contains.append(bool(gold) and gold in answer)
            golds.append(gold)
        return TaskResult(
            task=spec.name,
            type=spec.type,
            n=len(golds),
            metrics={"exact_match": accuracy(exact), "contains": accuracy(contains)},
            baselines={"majority": majority(golds)},
        )
