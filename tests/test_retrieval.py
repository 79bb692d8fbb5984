"""Retrieval: rank metrics against hand-computed cases, BM25 on the same pool as the baseline, the pool a task file
builds, and the retrieval task and embeddings on a small encoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from slmkit.eval import load_task_file
from slmkit.eval.embedding import default_pooling, embed_rows, text_rows
from slmkit.eval.loglikelihood import Scorer
from slmkit.eval.metrics import ranking_scores, relevant_ranks
from slmkit.eval.prompting import task_records
from slmkit.eval.retrieval import RetrievalTask, bm25_scores, document_pool, pairs
from slmkit.eval.task import RunSettings
from slmkit.model import HeadSpec

from export_helpers import tiny_model, train_tokenizer

ENCODER = dict(causal=False, embedding_norm=True, norm="layernorm", ffn="geglu", n_kv_heads=None)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_ranks_count_ties_against_the_relevant_document():
    scores = np.array([
        [0.9, 0.1, 0.5],  # relevant 0 ranks 1
        [0.9, 0.1, 0.5],  # relevant 2 ranks 2
        [0.3, 0.3, 0.3],  # all tied: relevant 1 ranks last
    ])
    assert relevant_ranks(scores, [0, 2, 1]).tolist() == [1, 2, 3]


def test_recall_at_k_and_mrr_are_the_hand_computed_values():
    scores = ranking_scores([1, 2, 3, 12], ks=[1, 10])
    assert scores["recall@1"].value == pytest.approx(1 / 4)
    assert scores["recall@10"].value == pytest.approx(3 / 4)
    assert scores["mrr"].value == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 12) / 4)
    assert scores["mrr"].stderr == pytest.approx(np.std([1, 1 / 2, 1 / 3, 1 / 12], ddof=1) / 2)


def test_bm25_ranks_the_document_that_shares_the_rare_words_first():
    documents = ["the statute of limitations bars the claim", "mitochondria drive programmed cell death in leaves",
                 "revenue rose on fixed price contracts"]
    scores = bm25_scores(["what drives cell death in lace plant leaves", "which contracts raised revenue", "the the"],
                         documents, k1=1.5, b=0.75)
    assert relevant_ranks(scores, [1, 2, 0]).tolist() == [1, 1, 3]  # a query of stopwords only matches nothing


@pytest.fixture
def task_file(tmp_path):
    records = [
        {"question": "What bars the claim?", "contexts": ["The statute of limitations", "bars the claim."],
         "paragraphs": ["An unrelated paragraph about leases.", "The statute of limitations bars the claim."]},
        {"question": "What drives cell death?", "contexts": ["Mitochondria drive", "programmed cell death."],
         "paragraphs": ["Mitochondria drive programmed cell death.", "Plants grow leaves."]},
        {"question": "Why did revenue rise?", "contexts": ["Revenue rose on", "fixed price contracts."],
         "paragraphs": ["Revenue rose on fixed price contracts."]},
    ]
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    path = tmp_path / "retrieval.yaml"
    path.write_text(f"type: retrieval\ndata: {data}\ntrain: {data}\nquery: '{{{{question}}}}'\n"
                    "document: \"{{ contexts | join(' ') }}\"\npool_field: paragraphs\n")
    return path


def test_the_pool_holds_each_relevant_document_and_the_pool_field_once(task_file):
    spec = load_task_file(task_file)
    records = task_records(spec)
    found = pairs(spec, records)
    assert found[0] == ("What bars the claim?", "The statute of limitations bars the claim.")
    pool = document_pool(spec, records, [d for _, d in found])
    assert len(pool) == len(set(pool)) == 5  # 3 relevant ones (each also among the paragraphs) + 2 other paragraphs
    assert pool[:3] == [d for _, d in found]


@pytest.fixture(scope="module")
def encoder_and_tokenizer(tmp_path_factory):
    tokenizer = Tokenizer.from_file(str(train_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")))
    return tiny_model(head=HeadSpec("masked_lm"), **ENCODER).eval(), tokenizer


def test_the_retrieval_task_reports_recall_and_mrr_beside_bm25(task_file, encoder_and_tokenizer):
    model, tokenizer = encoder_and_tokenizer
    result = RetrievalTask.run(load_task_file(task_file), Scorer(model, tokenizer, batch_size=2), RunSettings())
    assert set(result.metrics) == {"recall@1", "recall@10", "mrr"} and result.n == 3
    assert set(result.baselines) == {"bm25 recall@1", "bm25 recall@10", "bm25 mrr"}
    assert result.baselines["bm25 recall@1"].value == 1.0  # every query shares its rare words with its document
    assert result.metrics["recall@10"].value == 1.0  # a pool of 5: every document is in the first 10
    assert result.details["pool documents"] == 5


def test_embeddings_are_unit_length_pooled_hidden_states_independent_of_batching(encoder_and_tokenizer):
    model, tokenizer = encoder_and_tokenizer
    assert default_pooling(model) == "mean"
    texts = ["The court held that the statute applies.", "A party may appeal.", "The plaintiff moved for judgment."]
    rows = text_rows(tokenizer, texts, model.config.block_size, 0)
    together = embed_rows(model, rows, 0, batch_size=3, pooling="mean")
    alone = torch.cat([embed_rows(model, [row], 0, batch_size=1, pooling="mean") for row in rows])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(together.norm(dim=-1), torch.ones(3))
    with torch.no_grad():
        expected = model.body(torch.tensor([rows[1]])).mean(dim=1)
    torch.testing.assert_close(together[1], torch.nn.functional.normalize(expected, dim=-1)[0])
    unnormalized = embed_rows(model, rows, 0, batch_size=3, pooling="first", normalize=False)
    torch.testing.assert_close(unnormalized[1], model.body(torch.tensor([rows[1]]))[0, 0].detach())
