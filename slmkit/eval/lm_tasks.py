"""Language modelling on held-out text: loss and perplexity per token, and bits per byte across tokenizers.

Bits per byte divides the total negative log-likelihood by the UTF-8 bytes of the text, so models with different
tokenizers compare. Long documents go through a sliding window; each document is scored on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from slmkit.eval.loglikelihood import Scorer
from slmkit.eval.metrics import Metric, TaskResult, bootstrap_stderr
from slmkit.eval.records import read_records, subset
from slmkit.eval.task import TASK_TYPES, RunSettings, TaskSpec, required
from slmkit.errors import SlmkitError
from slmkit.options import option


@dataclass
class PerplexityOptions:
    data: Optional[str] = required("Text to score: a .txt/.jsonl/.json file or glob, optionally .gz.")
    text_field: str = option("text", "Field of jsonl/json records that holds the text.")
    split_documents: Optional[str] = option(None, "Text files: a regex (multiline) whose matches start new documents; None = one per file.")
    stride: Optional[int] = option(None, "Tokens each sliding window adds after the first; None = half the model's window.")
    limit: Optional[int] = option(None, "Score at most this many documents unless the run sets its own limit.")


@TASK_TYPES.register("perplexity")
class PerplexityTask:
    Options = PerplexityOptions

    @staticmethod
    def run(spec: TaskSpec, scorer: Scorer, settings: RunSettings) -> TaskResult:
        options: PerplexityOptions = spec.options
        records = read_records(options.data, spec.name, options.text_field, options.split_documents)
        records = subset(records, settings.limit if settings.limit is not None else options.limit, settings.seed)
        texts = []
        for record in records:
            text = record.get(options.text_field)
            if not isinstance(text, str):
                raise SlmkitError(f"task {spec.name}: a record has no text field {options.text_field!r}; set text_field")
            if text.strip():
                texts.append(text)
        if not texts:
            raise SlmkitError(f"task {spec.name}: {options.data} holds no text to score")
        stride = settings.stride or options.stride or max(1, scorer.window // 2)
        scores = scorer.rolling(texts, stride=min(stride, scorer.window))
        nll = [-s.logprob for s in scores]
        tokens = [s.n_tokens for s in scores]
        n_bytes = [len(t.encode("utf-8")) for t in texts]
        total_nll, total_tokens, total_bytes = sum(nll), sum(tokens), sum(n_bytes)
        loss = total_nll / total_tokens
        loss_se = bootstrap_stderr(list(zip(nll, tokens)), np.divide, seed=settings.seed)
        bpb_se = bootstrap_stderr(list(zip(nll, n_bytes)), lambda a, b: a / b / math.log(2), seed=settings.seed)
        return TaskResult(
            task=spec.name,
            type=spec.type,
            n=len(texts),
            metrics={
                "bits_per_byte": Metric(total_nll / total_bytes / math.log(2), bpb_se),
                "loss": Metric(loss, loss_se),
                # Delta method: d exp(x) = exp(x) dx.
                "perplexity": Metric(math.exp(loss), math.exp(loss) * loss_se if loss_se is not None else None),
            },
            # Bits per byte of a uniform guess over the vocabulary: a model that learned anything is far below it.
            baselines={"uniform": Metric(total_tokens * math.log(scorer.model.config.vocab_size) / total_bytes / math.log(2))},
            details={"tokens": total_tokens, "bytes": total_bytes, "stride": stride},
        )
