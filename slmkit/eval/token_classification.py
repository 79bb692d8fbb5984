"""Token classification (named entities in BIO tags): words with one tag each, scored by entity-level F1.

A sentence is tokenized as running text (its words joined by spaces); each word's label sits on its first
sub-token and the other sub-tokens carry no label (IGNORE_INDEX), the convention of BERT and transformers' run_ner.
Fine-tuning (objective token_classification) reads its examples through `encode_words`, so it trains on exactly
what is scored. The baseline tags every string the training data marks as an entity (a gazetteer).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from tokenizers import Tokenizer

from slmkit.errors import SlmkitError
from slmkit.eval.head_outputs import head_outputs, require_head
from slmkit.eval.loglikelihood import Scorer
from slmkit.eval.metrics import TaskResult, bio_entities, entity_scores
from slmkit.eval.prompting import RecordOptions, load_examples, task_records
from slmkit.eval.records import CONLL_TAGS, CONLL_TOKENS
from slmkit.model.tag_decoding import TAG_DECODINGS
from slmkit.eval.task import TASK_TYPES, RunSettings, TaskSpec
from slmkit.model import IGNORE_INDEX, TOKEN_HEAD
from slmkit.options import option

_TAG = re.compile(r"^(O|[BI]-\S+)$")


@dataclass
class TokenClassificationOptions(RecordOptions):
    tokens_field: str = option(CONLL_TOKENS, "Record field holding the sentence's words (a CoNLL file gives `tokens`).")
    tags_field: str = option(CONLL_TAGS, "Record field holding one BIO tag per word (a CoNLL file gives `tags`).")
    labels: list[str] = option([], "The tag set in output order; empty = every tag of the train and test records, O first.")


@dataclass
class Sentence:
    words: list[str]
    tags: list[str] | None


def sentences(spec: TaskSpec, records: list[dict[str, Any]]) -> list[Sentence]:
    options: TokenClassificationOptions = spec.options
    out = []
    for number, record in enumerate(records, 1):
        words, tags = record.get(options.tokens_field), record.get(options.tags_field)
        if not isinstance(words, list) or not isinstance(tags, list) or len(words) != len(tags):
            raise SlmkitError(
                f"task {spec.name}: record {number} needs lists `{options.tokens_field}` and `{options.tags_field}` "
                "of equal length (one BIO tag per word)"
            )
        bad = next((t for t in tags if not _TAG.match(str(t))), None)
        if bad is not None:
            raise SlmkitError(
                f"task {spec.name}: record {number} has the tag {bad!r}, which is not BIO (O, B-TYPE or I-TYPE)"
            )
        out.append(Sentence([str(w) for w in words], [str(t) for t in tags]))
    return out


def tag_set(spec: TaskSpec) -> list[str]:
    """The task's labels: as listed, else every tag found in its train and test records (O first, then sorted)."""
    options: TokenClassificationOptions = spec.options
    if options.labels:
        return list(options.labels)
    seen: set[str] = set()
    for split in ("train", "data"):
        if getattr(options, split):
            seen.update(tag for s in sentences(spec, task_records(spec, split)) for tag in s.tags)
    return ["O", *sorted(seen - {"O"})]


def word_spans(words: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """The words joined by single spaces, and each word's character span in that text."""
    spans, position = [], 0
    for word in words:
        spans.append((position, position + len(word)))
        position += len(word) + 1
    return " ".join(words), spans


def encode_words(tokenizer: Tokenizer, text: str, spans: Sequence[tuple[int, int]], max_length: int,
                 prefix_id: int | None) -> tuple[list[int], list[int | None]]:
    """(ids, position of each word's first sub-token or None when the window cut it off) for words at `spans` of text.

    A token belongs to the word its first character falls in; ids start with the document-start token.
    """
    encoding = tokenizer.encode(text, add_special_tokens=False)
    prefix = [prefix_id] if prefix_id is not None else []
    ids = prefix + encoding.ids[: max_length - len(prefix)]
    first: list[int | None] = [None] * len(spans)
    word = 0
    for position, (start, end) in enumerate(encoding.offsets[: len(ids) - len(prefix)]):
        while word < len(spans) and start >= spans[word][1]:
            word += 1
        if word < len(spans) and end > spans[word][0] and first[word] is None:
            first[word] = position + len(prefix)
    return ids, first


def labelled_tokens(tokenizer: Tokenizer, sentence: Sentence, names: list[str], max_length: int,
                    prefix_id: int | None) -> tuple[list[int], list[int]]:
    """Fine-tuning example: ids and one label per id (the word's tag on its first sub-token, else IGNORE_INDEX)."""
    text, spans = word_spans(sentence.words)
    ids, first = encode_words(tokenizer, text, spans, max_length, prefix_id)
    labels = [IGNORE_INDEX] * len(ids)
    for position, tag in zip(first, sentence.tags):
        if position is not None:
            if tag not in names:
                raise SlmkitError(f"the tag {tag!r} is not among the model's labels {names}: the label set changed "
                                  "between training and evaluation; fine-tune again on this task")
            labels[position] = names.index(tag)
    return ids, labels


def predict_tags(scorer: Scorer, texts_and_spans: list[tuple[str, list[tuple[int, int]]]], names: list[str]) -> list[list[str]]:
    """One predicted tag per word (O for words past the window) with the model's token-classification head, read
    from the scores of each word's first sub-token by the head's decoding."""
    head = scorer.model.heads[TOKEN_HEAD]
    decode = TAG_DECODINGS.get(head.spec.decoding)
    encoded = [encode_words(scorer.tokenizer, text, spans, scorer.window, scorer.prefix_id) for text, spans in texts_and_spans]
    logits = head_outputs(scorer.model, [ids for ids, _ in encoded], TOKEN_HEAD, scorer.pad_id, scorer.batch_size)
    outside = names.index("O") if "O" in names else None
    tags = []
    for (_, first), row in zip(encoded, logits):
        if outside is None:  # no O to force: the words the window holds, in order, and the rest O
            decoded = iter(decode(row[[p for p in first if p is not None]], names, head.crf))
            tags.append([names[next(decoded)] if p is not None else "O" for p in first])
            continue
        # A word with no sub-token of its own (punctuation the tokenizer joined to its neighbour) is tagged O, and
        # decoded as a forced O between its neighbours, so that bio never puts an I-X right after it.
        last = max((i for i, p in enumerate(first) if p is not None), default=-1)
        forced = row.new_full((len(names),), float("-inf"))
        forced[outside] = 0.0
        scores = torch.stack([row[p] if p is not None else forced for p in first[:last + 1]]) if last >= 0 else row[:0]
        tags.append([names[i] for i in decode(scores, names, head.crf)] + ["O"] * (len(first) - last - 1))
    return tags


def gazetteer_tags(train: list[Sentence], test: list[Sentence]) -> list[list[str]]:
    """The baseline: every longest run of words that the training data tags as an entity, tagged with its type."""
    known: dict[tuple[str, ...], str] = {}
    for sentence in train:
        for kind, first, last in bio_entities(sentence.tags):
            known[tuple(w.lower() for w in sentence.words[first:last + 1])] = kind
    longest = max((len(k) for k in known), default=0)
    out = []
    for sentence in test:
        words, tags, i = [w.lower() for w in sentence.words], ["O"] * len(sentence.words), 0
        while i < len(words):
            for n in range(min(longest, len(words) - i), 0, -1):
                kind = known.get(tuple(words[i:i + n]))
                if kind is not None:
                    tags[i:i + n] = [f"B-{kind}"] + [f"I-{kind}"] * (n - 1)
                    i += n
                    break
            else:
                i += 1
        out.append(tags)
    return out


def model_labels(scorer: Scorer, spec: TaskSpec) -> list[str]:
    """The tag names the model's head was trained with (saved with it); the task's tags must be among them."""
    names = list(scorer.model.heads[TOKEN_HEAD].spec.labels)
    unknown = sorted(set(tag_set(spec)) - set(names)) if not spec.options.labels else []
    if unknown:
        raise SlmkitError(f"task {spec.name} has tags {unknown} that the model's head was not trained on "
                          f"(it knows {names}): the label set changed between training and evaluation")
    return names


@TASK_TYPES.register("token_classification")
class TokenClassificationTask:
    Options = TokenClassificationOptions

    @staticmethod
    def run(spec: TaskSpec, scorer: Scorer, settings: RunSettings) -> TaskResult:
        require_head(scorer.model, TOKEN_HEAD, spec.name, "token_classification")
        names = model_labels(scorer, spec)
        test = sentences(spec, load_examples(spec, settings))
        predicted = predict_tags(scorer, [word_spans(s.words) for s in test], names)
        gold = [s.tags for s in test]
        baselines = {}
        if spec.options.train:
            baselines = {f"gazetteer {k}": v for k, v in
                         entity_scores(gold, gazetteer_tags(sentences(spec, task_records(spec, "train")), test)).items()
                         if k == "entity_f1"}
        return TaskResult(
            task=spec.name,
            type=spec.type,
            n=len(test),
            metrics=entity_scores(gold, predicted),
            baselines=baselines,
            details={"scored_with": "token-classification head", "decoding": scorer.model.heads[TOKEN_HEAD].spec.decoding,
                     "entities": sum(len(bio_entities(g)) for g in gold)},
        )
