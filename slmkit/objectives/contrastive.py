"""Contrastive fine-tuning of an embedder: (query, relevant document) pairs of a retrieval task's `train` records, each
query against every document of its batch (in-batch negatives, as DPR and sentence-transformers'
MultipleNegativesRankingLoss).

loss = cross-entropy over the batch's documents of cosine(query, document) / temperature, the query's own document
being the right answer. A document that is another query's relevant one as well (TAT-QA questions share paragraphs) is
not counted as a negative of it. The embedding head pools and normalizes exactly as `slmkit embed` and the retrieval
task do, so what is learned is what is scored.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from slmkit.eval.embedding import text_rows
from slmkit.eval.encoding import pad_batch
from slmkit.eval.retrieval import pairs
from slmkit.model import EMBEDDING_HEAD, HeadSpec, Model, resolve_pooling
from slmkit.objectives.base import OBJECTIVES, Batch, Example, TaskObjective


@OBJECTIVES.register("contrastive")
class ContrastiveEmbedding(TaskObjective):
    task_type = "retrieval"

    @classmethod
    def complete(cls, config):
        objective = config.objective
        pooling = resolve_pooling(objective.pooling, config.model.causal)
        return dataclasses.replace(config, objective=dataclasses.replace(objective, pooling=pooling))

    @classmethod
    def heads(cls, config) -> list[HeadSpec]:
        return [HeadSpec(EMBEDDING_HEAD, pooling=config.objective.pooling)]

    def examples(self, split: str) -> list[Example]:
        found = pairs(self.spec, self.records(split))
        queries = text_rows(self.tokenizer, [q for q, _ in found], self.max_length, self.prefix_id)
        documents = text_rows(self.tokenizer, [d for _, d in found], self.max_length, self.prefix_id)
        number = {text: i for i, text in enumerate(dict.fromkeys(d for _, d in found))}
        return [{"query": q, "document": d, "document_id": number[text]}
                for q, d, (_, text) in zip(queries, documents, found)]

    def collate(self, examples: list[Example]) -> Batch:
        queries, query_mask = pad_batch([e["query"] for e in examples], self.pad_id)
        documents, document_mask = pad_batch([e["document"] for e in examples], self.pad_id)
        return {"input_ids": queries, "padding_mask": query_mask, "documents": documents, "document_mask": document_mask,
                "document_id": torch.tensor([e["document_id"] for e in examples])}

    def _similarities(self, model: Model, batch: Batch) -> torch.Tensor:
        """Cosine / temperature [queries, documents], with other queries' copies of a query's document left out."""
        queries = model(batch["input_ids"], padding_mask=batch["padding_mask"], head=EMBEDDING_HEAD)
        documents = model(batch["documents"], padding_mask=batch["document_mask"], head=EMBEDDING_HEAD)
        scores = queries @ documents.T / self.config.objective.temperature
        ids = batch["document_id"]
        duplicate = (ids[:, None] == ids[None, :]) & ~torch.eye(len(ids), dtype=torch.bool, device=ids.device)
        return scores.masked_fill(duplicate, float("-inf"))

    def loss(self, model: Model, batch: Batch) -> torch.Tensor:
        scores = self._similarities(model, batch)
        return F.cross_entropy(scores, torch.arange(len(scores), device=scores.device))

    def validation_metrics(self, model: Model, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        scores = self._similarities(model, batch)
        right = torch.arange(len(scores), device=scores.device)
        return F.cross_entropy(scores, right), {"in_batch_accuracy": (scores.argmax(dim=-1) == right).float().mean()}
