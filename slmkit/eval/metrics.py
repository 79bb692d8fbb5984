"""What a task returns: metric values with their standard error, and the chance/majority baselines beside them.

Accuracies get the binomial standard error; corpus-level ratios (bits per byte, loss) a seeded bootstrap over documents.
"""

from __future__ import annotations

import math
import string
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Hashable, Sequence

import numpy as np


@dataclass
class Metric:
    value: float
    stderr: float | None = None


@dataclass
class TaskResult:
    task: str
    type: str
    n: int  # examples (documents for perplexity tasks)
    metrics: dict[str, Metric]
    baselines: dict[str, Metric] = field(default_factory=dict)  # what guessing scores on the same examples
    details: dict[str, float] = field(default_factory=dict)  # counts a reader may want (tokens, bytes, ...)

    def to_dict(self) -> dict:
        return {
            "type": self.type,
            "n": self.n,
            "metrics": {k: {"value": m.value, "stderr": m.stderr} for k, m in self.metrics.items()},
            "baselines": {k: {"value": m.value, "stderr": m.stderr} for k, m in self.baselines.items()},
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, task: str, data: dict) -> "TaskResult":
        def metrics(section: dict) -> dict[str, Metric]:
            return {k: Metric(v["value"], v.get("stderr")) for k, v in section.items()}

        return cls(task, data["type"], data["n"], metrics(data["metrics"]), metrics(data.get("baselines", {})),
                   data.get("details", {}))


def accuracy(hits: Sequence[bool]) -> Metric:
    """Mean of hits with the binomial standard error sqrt(p(1-p)/(n-1))."""
    n = len(hits)
    p = sum(hits) / n if n else float("nan")
    return Metric(p, math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else None)


def chance(num_choices: Sequence[int]) -> Metric:
    """Expected accuracy of picking uniformly at random among each example's choices."""
    return Metric(sum(1 / k for k in num_choices) / len(num_choices))


def majority(golds: Sequence[Hashable]) -> Metric:
    """Accuracy of always answering the most frequent gold answer of these examples."""
    most_common = Counter(golds).most_common(1)[0][0]
    return accuracy([g == most_common for g in golds])


def bootstrap_stderr(
    parts: Sequence[tuple[float, float]], statistic: Callable[[np.ndarray, np.ndarray], np.ndarray],
    iterations: int = 1000, seed: int = 0,
) -> float | None:
    """Standard error of statistic(sum of numerators, sum of denominators) when documents are resampled."""
    if len(parts) < 2:
        return None
    numerators, denominators = np.asarray(parts, dtype=np.float64).T
    picks = np.random.default_rng(seed).integers(0, len(parts), size=(iterations, len(parts)))
    values = statistic(numerators[picks].sum(1), denominators[picks].sum(1))
    return float(values.std(ddof=1))


# ---------------------------------------------------------------------------------------------------------------------
# Scores of fine-tuned heads: label classification, entity spans, extractive answers.

@dataclass
class LabelReport:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix (rows gold, columns predicted)."""

    accuracy: Metric
    macro_f1: Metric
    per_class: dict[str, dict[str, float]]
    confusion: list[list[int]]


def label_report(golds: Sequence[int], predictions: Sequence[int], names: Sequence[str]) -> LabelReport:
    n = len(names)
    confusion = np.zeros((n, n), dtype=np.int64)
    for gold, predicted in zip(golds, predictions):
        confusion[gold, predicted] += 1
    per_class = {}
    f1s = []
    for i, name in enumerate(names):
        tp = confusion[i, i]
        precision = tp / confusion[:, i].sum() if confusion[:, i].sum() else 0.0
        recall = tp / confusion[i].sum() if confusion[i].sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": float(precision), "recall": float(recall), "f1": float(f1), "support": int(confusion[i].sum())}
        f1s.append(f1)
    return LabelReport(
        accuracy=accuracy([g == p for g, p in zip(golds, predictions)]),
        macro_f1=Metric(float(np.mean(f1s))),
        per_class=per_class,
        confusion=confusion.tolist(),
    )


def bio_entities(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """(type, first, last) of each entity in a BIO (or IOB1) tag sequence, chunked as conlleval and seqeval do:
    an entity starts at B-X, or at I-X after a tag of another type or O; it ends before the next start or O."""
    entities = set()
    start, kind = None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, label = tag.partition("-")
        begins = prefix == "B" or (prefix == "I" and label != kind)
        if start is not None and (prefix == "O" or begins):
            entities.add((kind, start, i - 1))
            start, kind = None, None
        if begins:
            start, kind = i, label
    return entities


def entity_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict[str, Metric]:
    """Micro precision, recall and F1 over entities whose type and exact span both match (seqeval's default)."""
    tp = n_gold = n_predicted = 0
    for gold_tags, predicted_tags in zip(gold, predicted):
        g, p = bio_entities(gold_tags), bio_entities(predicted_tags)
        tp += len(g & p)
        n_gold += len(g)
        n_predicted += len(p)
    precision = tp / n_predicted if n_predicted else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"entity_f1": Metric(f1), "entity_precision": Metric(precision), "entity_recall": Metric(recall)}


def normalize_answer(text: str) -> str:
    """SQuAD's normalization: lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(word for word in text.split() if word not in ("a", "an", "the"))


def answer_f1(prediction: str, gold: str) -> float:
    """Token-overlap F1 of two normalized answers (SQuAD)."""
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = sum((Counter(p) & Counter(g)).values())
    if not p or not g:
        return float(p == g)
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def answer_scores(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, Metric]:
    """SQuAD exact match and F1, each the best over an example's gold answers, averaged over examples."""
    exact = [max(normalize_answer(p) == normalize_answer(g) for g in gs) for p, gs in zip(predictions, golds)]
    f1 = [max(answer_f1(p, g) for g in gs) for p, gs in zip(predictions, golds)]
    return {"exact_match": accuracy(exact), "f1": Metric(float(np.mean(f1)) if f1 else float("nan"))}




# ---------------------------------------------------------------------------------------------------------------------
# Ranking: each query's relevant document among a pool.

def relevant_ranks(scores: np.ndarray, relevant: Sequence[int]) -> np.ndarray:
    """1-based rank of each query's relevant document under scores [queries, documents]: one plus the number of other
    documents scoring at least as high, so a tie counts against the relevant one (a query matching nothing ranks last)."""
    scores = np.asarray(scores, dtype=np.float64)
    own = scores[np.arange(len(relevant)), np.asarray(relevant)]
    return (scores >= own[:, None]).sum(axis=1)


def ranking_scores(ranks: Sequence[int], ks: Sequence[int]) -> dict[str, Metric]:
    """recall@k (the relevant document among the first k) for each k, and the mean reciprocal rank."""
    ranks = np.asarray(ranks)
    out = {f"recall@{k}": accuracy([bool(r <= k) for r in ranks]) for k in ks}
    reciprocal = 1.0 / ranks
    stderr = float(reciprocal.std(ddof=1) / math.sqrt(len(ranks))) if len(ranks) > 1 else None
    out["mrr"] = Metric(float(reciprocal.mean()) if len(ranks) else float("nan"), stderr)
    return out
