"""Extractive question answering: the answer is a span of the context, found by a start and an end logit per token.

The input is [document start] "Question: <q>\\nContext:\\n" then a window of the context's tokens. A context longer
than the window is read in windows that overlap by doc_stride tokens; the best span over all windows wins (start +
end logit, at most max_answer_tokens long). Scored by SQuAD exact match and F1 after answer normalization.
Fine-tuning (objective span_qa) builds its windows with `windows`, so it trains on what is scored; a window without
the answer is trained to point at the document-start token, as SQuAD models point at [CLS].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from tokenizers import Tokenizer

from slmkit.errors import SlmkitError
from slmkit.eval.encoding import encode
from slmkit.eval.head_outputs import head_outputs, require_head
from slmkit.eval.loglikelihood import Scorer
from slmkit.eval.metrics import TaskResult, answer_scores
from slmkit.eval.prompting import RecordOptions, load_examples
from slmkit.eval.task import TASK_TYPES, RunSettings, TaskSpec, required
from slmkit.eval.templates import render
from slmkit.model import SPAN_HEAD
from slmkit.options import option

MIN_CONTEXT_TOKENS = 16  # a question may take at most the rest of the window


@dataclass
class SpanQAOptions(RecordOptions):
    question: Optional[str] = required("Template of the question, e.g. '{{question}}'.")
    context: Optional[str] = required("Template of the text the answer is a span of, e.g. \"{{ paragraphs | join('\\n') }}\".")
    answers_field: str = option("answers", "Record field with the gold answer text, or a list of answers (matching any one counts).")
    doc_stride: int = option(64, "Tokens that consecutive windows of a context longer than the model's window share.")
    max_answer_tokens: int = option(48, "The longest answer, in tokens, that prediction considers.")
    missing_answers: str = option("stop", "Training records whose answer is not in the context: stop (an error naming them) or skip (counted).", choices=("stop", "skip"))


@dataclass
class Question:
    question: str
    context: str
    answers: list[str]


@dataclass
class Window:
    """One window of a question's context: its input ids, and for each input position the context characters it
    covers (None outside the context)."""

    ids: list[int]
    offsets: list[Optional[tuple[int, int]]]


def questions(spec: TaskSpec, records: list[dict[str, Any]]) -> list[Question]:
    options: SpanQAOptions = spec.options
    out = []
    for number, record in enumerate(records, 1):
        answers = record.get(options.answers_field)
        answers = [answers] if isinstance(answers, str) else answers
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            raise SlmkitError(f"task {spec.name}: record {number} needs `{options.answers_field}`: an answer text or a list of them")
        out.append(Question(render(options.question, record, spec.name), render(options.context, record, spec.name), answers))
    return out


def context_stride(options: SpanQAOptions, window: int) -> int:
    """The task's doc_stride, kept below a quarter of the model's window so that windows still advance."""
    return min(options.doc_stride, window // 4)


def windows(tokenizer: Tokenizer, item: Question, max_length: int, stride: int, prefix_id: int | None) -> list[Window]:
    """The windows that together cover the whole context, each overlapping the next by `stride` tokens."""
    head = ([prefix_id] if prefix_id is not None else []) + encode(tokenizer, f"Question: {item.question}\nContext:\n")
    head = head[: max_length - MIN_CONTEXT_TOKENS]
    context = tokenizer.encode(item.context, add_special_tokens=False)
    room = max_length - len(head)
    step = max(room - stride, 1)
    out = []
    for start in range(0, max(len(context.ids), 1), step):
        piece = slice(start, start + room)
        out.append(Window(head + context.ids[piece], [None] * len(head) + list(context.offsets[piece])))
        if start + room >= len(context.ids):
            break
    return out


def answer_positions(window: Window, answer_start: int, answer_end: int) -> tuple[int, int]:
    """Input positions of the answer's first and last token in this window, or (0, 0) when it is not all inside."""
    inside = [i for i, span in enumerate(window.offsets) if span is not None]
    if not inside or answer_start < window.offsets[inside[0]][0] or answer_end > window.offsets[inside[-1]][1]:
        return 0, 0
    positions = [i for i in inside if window.offsets[i][1] > answer_start and window.offsets[i][0] < answer_end]
    return (positions[0], positions[-1]) if positions else (0, 0)


def locate(item: Question) -> tuple[int, int] | None:
    """Character span of the first gold answer found in the context, or None."""
    for answer in item.answers:
        start = item.context.find(answer)
        if start >= 0 and answer:
            return start, start + len(answer)
    return None


def best_span(logits: torch.Tensor, window: Window, max_answer_tokens: int) -> tuple[float, int, int] | None:
    """(score, first position, last position) of the best span inside the window's context, or None."""
    inside = torch.tensor([span is not None for span in window.offsets])
    if not inside.any():
        return None
    start, end = logits[:, 0], logits[:, 1]
    n = len(window.offsets)
    first, last = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    allowed = (last >= first) & (last - first < max_answer_tokens) & inside[:, None] & inside[None, :]
    scores = (start[:, None] + end[None, :]).masked_fill(~allowed, float("-inf"))
    best = int(scores.argmax())
    return float(scores.flatten()[best]), best // n, best % n


@dataclass
class Answer:
    """A predicted answer: its text, its character span in the context, and its score (start + end logit)."""

    text: str
    start: int
    end: int
    score: float


def predict_answers(scorer: Scorer, items: list[Question], stride: int, max_answer_tokens: int) -> list[Answer]:
    """The best answer span of each question over all windows of its context (empty when the context is empty)."""
    all_windows = [windows(scorer.tokenizer, item, scorer.window, stride, scorer.prefix_id) for item in items]
    flat = [w for ws in all_windows for w in ws]
    logits = iter(head_outputs(scorer.model, [w.ids for w in flat], SPAN_HEAD, scorer.pad_id, scorer.batch_size))
    answers = []
    for item, ws in zip(items, all_windows):
        found = [(best, w) for w in ws if (best := best_span(next(logits), w, max_answer_tokens)) is not None]
        if not found:
            answers.append(Answer("", 0, 0, float("-inf")))
            continue
        (score, first, last), w = max(found, key=lambda pair: pair[0][0])
        start, end = w.offsets[first][0], w.offsets[last][1]
        # Byte-level tokens carry the space before a word: the answer starts at its first visible character.
        while start < end and item.context[start].isspace():
            start += 1
        answers.append(Answer(item.context[start:end], start, end, score))
    return answers


@TASK_TYPES.register("span_qa")
class SpanQATask:
    Options = SpanQAOptions

    @staticmethod
    def run(spec: TaskSpec, scorer: Scorer, settings: RunSettings) -> TaskResult:
        require_head(scorer.model, SPAN_HEAD, spec.name, "span_qa")
        items = questions(spec, load_examples(spec, settings))
        options: SpanQAOptions = spec.options
        predictions = [a.text for a in predict_answers(scorer, items, context_stride(options, scorer.window), options.max_answer_tokens)]
        in_context = sum(locate(item) is not None for item in items)
        return TaskResult(
            task=spec.name,
            type=spec.type,
            n=len(items),
            metrics=answer_scores(predictions, [item.answers for item in items]),
            details={"scored_with": "span head", "answers found in their context": in_context},
        )
