"""`slmkit predict`: a fine-tuned model over a file of records — labels with probabilities, entities with character
offsets, answer spans, or completions — one JSON line per record.

A record is read as the model's task reads it (the same templates, from the task the run was fine-tuned on), so the
model sees in production exactly what it was trained and scored on. Each output line is the record with a
`prediction` field added.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from slmkit.atomic import atomic_write_text, check_writable
from slmkit.checkpoint import LoadedCheckpoint, load_checkpoint
from slmkit.errors import SlmkitError
from slmkit.eval.encoding import sequence_input
from slmkit.eval.head_outputs import head_outputs
from slmkit.eval.loglikelihood import Scorer
from slmkit.eval.records import data_files, read_records
from slmkit.eval.task import TaskSpec
from slmkit.eval.templates import render
from slmkit.model import CLASSIFIER_HEAD, LM_HEAD, SPAN_HEAD, TOKEN_HEAD
from slmkit.options import option
from slmkit.registry import Registry

log = logging.getLogger("slmkit")

WORD = re.compile(r"\w+|[^\w\s]")  # words and punctuation marks, as NER corpora split them


@dataclass
class PredictArgs:
    checkpoint: str = option("", "Run folder or checkpoint of a fine-tuned model.")
    input: str = option("", "Records: .jsonl/.json/.csv/.tsv with the fields the model's task reads (text, question, context, ...) or .txt (one text per line).")
    out: Optional[str] = option(None, "Write the JSON lines here (atomically); default: print them.")
    batch_size: int = option(16, "Sequences per forward pass.")
    device: str = option("auto", "auto (cuda when available), cpu, cuda or cuda:N.")
    max_new_tokens: int = option(64, "Language models: the most tokens to generate per record (a generation task's own limit wins).")


Predictor = Callable[[Scorer, Optional[TaskSpec], list[dict[str, Any]], PredictArgs], list[dict[str, Any]]]
PREDICTORS: Registry[Predictor] = Registry("predictor", "predict(scorer, task or None, records, args) -> one prediction per record.")


@PREDICTORS.register(CLASSIFIER_HEAD)
def predict_labels(scorer: Scorer, spec: Optional[TaskSpec], records: list[dict[str, Any]], args: PredictArgs) -> list[dict]:
    names = list(scorer.model.heads[CLASSIFIER_HEAD].spec.labels)
    texts = [render(spec.options.prompt, r, spec.name) if spec else _text(r) for r in records]
    rows = [sequence_input(scorer.tokenizer, text, scorer.window, scorer.prefix_id) for text in texts]
    full = sum(len(row) >= scorer.window for row in rows)
    if full:
        log.warning("%d of %d inputs fill the model's whole window of %d tokens: a longer text is cut at its start, "
                    "and its label read from its end", full, len(rows), scorer.window)
    out = []
    for logits in head_outputs(scorer.model, rows, CLASSIFIER_HEAD, scorer.pad_id, scorer.batch_size):
        probabilities = logits.softmax(-1).tolist()
        best = max(range(len(names)), key=probabilities.__getitem__)
        out.append({"label": names[best], "probabilities": dict(zip(names, probabilities))})
    return out


@PREDICTORS.register(TOKEN_HEAD)
def predict_entities(scorer: Scorer, spec: Optional[TaskSpec], records: list[dict[str, Any]], args: PredictArgs) -> list[dict]:
    from slmkit.eval.metrics import bio_entities
    from slmkit.eval.token_classification import predict_tags, word_spans

    names = list(scorer.model.heads[TOKEN_HEAD].spec.labels)
    tokens_field = spec.options.tokens_field if spec else "tokens"
    inputs = []
    for record in records:
        if isinstance(record.get(tokens_field), list):
            inputs.append(word_spans([str(w) for w in record[tokens_field]]))
        else:
            text = _text(record)
            inputs.append((text, [m.span() for m in WORD.finditer(text)]))
    out = []
    for (text, spans), tags in zip(inputs, predict_tags(scorer, inputs, names)):
        entities = [{"text": text[spans[first][0]: spans[last][1]], "label": kind,
                     "start": spans[first][0], "end": spans[last][1]}
                    for kind, first, last in sorted(bio_entities(tags), key=lambda e: e[1])]
        out.append({"entities": entities, "tags": tags})
    return out


@PREDICTORS.register(SPAN_HEAD)
def predict_spans(scorer: Scorer, spec: Optional[TaskSpec], records: list[dict[str, Any]], args: PredictArgs) -> list[dict]:
    from slmkit.eval.span_qa import Question, context_stride, predict_answers

    if spec is None:
        raise SlmkitError("this span model has no task to read questions and contexts by: fine-tune it with objective.task")
    options = spec.options
    items = [Question(render(options.question, r, spec.name), render(options.context, r, spec.name), []) for r in records]
    answers = predict_answers(scorer, items, context_stride(options, scorer.window), options.max_answer_tokens)
    return [{"answer": a.text, "start": a.start, "end": a.end, "score": a.score} for a in answers]


@PREDICTORS.register(LM_HEAD)
def predict_completions(scorer: Scorer, spec: Optional[TaskSpec], records: list[dict[str, Any]], args: PredictArgs) -> list[dict]:
    from slmkit.eval.decode import greedy_until

    generation = spec is not None and spec.type == "generation"
    stops = spec.options.stop if generation else []
    max_new = spec.options.max_new_tokens if generation else args.max_new_tokens
    out = []
    for record in records:
        prompt = render(spec.options.prompt, record, spec.name) if generation else _text(record)
        out.append({"completion": greedy_until(scorer.model, scorer.tokenizer, prompt, stops, max_new).strip()})
    return out


def _text(record: dict[str, Any]) -> str:
    text = record.get("text")
    if not isinstance(text, str):
        raise SlmkitError(f"a record has no `text` field to read (it has: {', '.join(sorted(record))}); give each record a text")
    return text


def read_inputs(path: str, command: str = "predict") -> list[dict[str, Any]]:
    """Records of a data file; a .txt file is one record {text} per non-empty line. `command` names the reader in
    messages."""
    files = data_files(path, f"input={path}")
    one_per_line = all(f.suffix in (".txt", ".md") or f.name.endswith(".txt.gz") for f in files)
    records = read_records(path, f"input={path}", split_documents="^" if one_per_line else None)
    records = [{"text": r["text"].strip()} if one_per_line else r for r in records]
    records = [r for r in records if not one_per_line or r["text"]]
    if not records:
        raise SlmkitError(f"input={path} holds no records to {command}")
    return records


def run_predict(args: PredictArgs) -> list[dict[str, Any]]:
    """Predicts for every record of args.input; writes (or prints) the records with their predictions; returns them."""
    from slmkit.eval.catalog import resolve_task
    from slmkit.eval.run import device_of

    if not args.checkpoint or not args.input:
        raise SlmkitError("predict needs checkpoint=PATH (a fine-tuned run) and input=FILE (.jsonl, .csv or .txt)")
    if args.out:
        check_writable(args.out, "out")  # before the work, not after it
    records = read_inputs(args.input)
    loaded: LoadedCheckpoint = load_checkpoint(args.checkpoint, map_location=device_of(args.device))
    head = loaded.model.default_head
    if head not in PREDICTORS:
        raise SlmkitError(f"slmkit predict serves the heads {', '.join(PREDICTORS.names())}, and this model's head is {head}: "
                          "turn texts into vectors with `slmkit embed`, or fine-tune the model for a task first")
    spec = resolve_task(loaded.config.objective.task) if loaded.config.objective.task else None
    extra = sorted({field for record in records for field in record} - {"text"})
    if head == LM_HEAD and spec is None and extra:
        log.warning("this model is a language model with no task head: predict continues each record's `text` and "
                    "reads none of %s; to predict labels, answers or tags, fine-tune it for the task first "
                    "(objective.name and objective.task)", ", ".join(extra))
    scorer = Scorer(loaded.model, loaded.tokenizer(), batch_size=args.batch_size)
    with torch.inference_mode():
        predictions = PREDICTORS.get(head)(scorer, spec, records, args)
    results = [{**record, "prediction": prediction} for record, prediction in zip(records, predictions)]
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results)
    if args.out:
        atomic_write_text(args.out, lines)
        print(f"{len(results)} predictions written to {args.out}")
    else:
        sys.stdout.write(lines)
    return results
