"""Retrieval: each query against a pool of documents, ranked by the cosine of their embeddings, with BM25 on the same
pool beside it.

A record gives a query and its relevant document (two templates). The pool holds every scored record's document, the
texts of a list field of each record (`pool_field`: TAT-QA's paragraphs, the distractors of the same report) and the
documents of other records (`pool_data`: every PubMedQA abstract), deduplicated by text. Scored by recall@k and the
mean reciprocal rank of the relevant document. The embedding model reads each text from its start, cut to its window;
BM25 (bm25s, Lucene's variant, English stopwords) reads whole texts. Contrastive fine-tuning (objective contrastive)
learns from the (query, document) pairs of the task's train records, built by `pairs` as here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from slmkit.errors import SlmkitError
from slmkit.eval.embedding import default_pooling, embed_rows, text_rows
from slmkit.eval.loglikelihood import Scorer
from slmkit.eval.metrics import Metric, TaskResult, ranking_scores, relevant_ranks
from slmkit.eval.prompting import RecordOptions, load_examples
from slmkit.eval.records import read_records
from slmkit.eval.task import TASK_TYPES, RunSettings, TaskSpec, required
from slmkit.eval.templates import render
from slmkit.options import at_least, option


@dataclass
class RetrievalOptions(RecordOptions):
    query: Optional[str] = required("Template of the query, e.g. '{{question}}'.")
    document: Optional[str] = required("Template of the record's relevant document, e.g. \"{{ contexts | join(' ') }}\".")
    pool_field: Optional[str] = option(None, "Record field holding a list of texts that all join the pool (the relevant one among them or not), e.g. paragraphs.")
    pool_data: Optional[str] = option(None, "Further records (a file or glob) whose documents, rendered with `document`, join the pool as distractors.")
    recall_at: list[int] = option([1, 10], "Recall is reported at each of these ranks.")
    bm25_k1: float = option(1.5, "BM25 term-frequency saturation of the baseline.", bounds=at_least(0))
    bm25_b: float = option(0.75, "BM25 length normalization of the baseline (0 = none, 1 = full).", bounds=at_least(0))


def pairs(spec: TaskSpec, records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(query, relevant document) of each record; an empty one is an error naming the record."""
    options: RetrievalOptions = spec.options
    out = []
    for number, record in enumerate(records, 1):
        query, document = render(options.query, record, spec.name), render(options.document, record, spec.name)
        if not query.strip() or not document.strip():
            raise SlmkitError(f"task {spec.name}: record {number} renders an empty {'query' if not query.strip() else 'document'}; "
                              "fix the record or filter it out with `where`")
        out.append((query, document))
    return out


def document_pool(spec: TaskSpec, records: list[dict[str, Any]], relevant: list[str]) -> list[str]:
    """The distinct documents the queries of `records` are ranked among: their relevant ones first, then the rest."""
    options: RetrievalOptions = spec.options
    pool = list(relevant)
    for record in records if options.pool_field else []:
        texts = record.get(options.pool_field)
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise SlmkitError(f"task {spec.name}: `pool_field: {options.pool_field}` must name a list of texts in every record")
        pool += texts
    if options.pool_data:
        pool += [document for _, document in pairs(spec, read_records(options.pool_data, spec.name, format=options.format))]
    return [text for text in dict.fromkeys(pool) if text.strip()]


def bm25_scores(queries: list[str], documents: list[str], k1: float, b: float) -> np.ndarray:
    """BM25 scores [queries, documents] on lowercased word tokens without English stopwords."""
    import bm25s

    retriever = bm25s.BM25(k1=k1, b=b)
    retriever.index(bm25s.tokenize(documents, stopwords="en", show_progress=False), show_progress=False)
    tokenized = bm25s.tokenize(queries, stopwords="en", return_ids=False, show_progress=False)
    return np.stack([retriever.get_scores(tokens) if tokens else np.zeros(len(documents)) for tokens in tokenized])


@TASK_TYPES.register("retrieval")
class RetrievalTask:
    Options = RetrievalOptions

    @staticmethod
    def run(spec: TaskSpec, scorer: Scorer, settings: RunSettings) -> TaskResult:
        options: RetrievalOptions = spec.options
        records = load_examples(spec, settings)
        queries, relevant = zip(*pairs(spec, records))
        pool = document_pool(spec, records, list(relevant))
        position = {text: i for i, text in enumerate(pool)}
        gold = [position[text] for text in relevant]
        pooling = default_pooling(scorer.model)

        def embed(texts: list[str]) -> np.ndarray:
            rows = text_rows(scorer.tokenizer, texts, scorer.window, scorer.prefix_id)
            return embed_rows(scorer.model, rows, scorer.pad_id, scorer.batch_size, pooling).numpy()

        similarity = embed(list(queries)) @ embed(pool).T
        bm25 = bm25_scores(list(queries), pool, options.bm25_k1, options.bm25_b)
        cut = sum(len(scorer.tokenizer.encode(text, add_special_tokens=False).ids) >= scorer.window for text in pool)
        baselines: dict[str, Metric] = {f"bm25 {name}": metric
                                        for name, metric in ranking_scores(relevant_ranks(bm25, gold), options.recall_at).items()}
        return TaskResult(
            task=spec.name,
            type=spec.type,
            n=len(queries),
            metrics=ranking_scores(relevant_ranks(similarity, gold), options.recall_at),
            baselines=baselines,
            details={"scored_with": f"cosine of {pooling}-pooled embeddings", "pool documents": len(pool),
                     f"documents cut to the window of {scorer.window} tokens": cut},
        )
