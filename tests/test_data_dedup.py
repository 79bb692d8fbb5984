"""Deduplication: exact duplicates, planted near duplicates in real legal text (precision/recall), determinism."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest

from data_prep.dedup import Deduplicator, fingerprint, minhash_signature, normalized_words, word_ngram_hashes
from slmkit.data_config import DedupConfig
from slmkit.errors import SlmkitError
from tests.conftest import REPO_ROOT


def test_exact_duplicates_ignore_case_punctuation_and_spacing():
    dedup = Deduplicator(DedupConfig(near=False))
    assert dedup.check("a", "The Court held, that the rule applies.").keep
    decision = dedup.check("b", "  the court HELD that the rule   applies  ")
    assert (decision.keep, decision.duplicate_of, decision.kind) == (False, "a", "exact")
    assert dedup.check("c", "The Court held that the rule does not apply.").keep
    assert dedup.stats.clusters == {"a": ["b"]}
    assert dedup.stats.dropped_documents == {"exact": 1, "near": 0}


def test_checking_the_same_id_twice_is_an_error():
    dedup = Deduplicator(DedupConfig())
    dedup.check("a", "some text of a document")
    with pytest.raises(SlmkitError, match="unique"):
        dedup.check("a", "other text")


@pytest.mark.parametrize("overrides", [{"threshold": 0.0}, {"num_perm": 4}, {"shingle_words": 0}])
def test_bad_config_values_raise_slmkit_error(overrides):
    with pytest.raises(SlmkitError, match="data.dedup"):
        DedupConfig(**overrides)


def test_ngram_hashes_and_signatures_do_not_depend_on_the_process_hash_seed():
    text = "The petition for review is denied and the judgment of the district court is affirmed."
    cfg = DedupConfig()
    code = (
        "import sys; from data_prep.dedup import minhash_signature; from slmkit.data_config import DedupConfig; "
        "cfg = DedupConfig(); "
        f"sys.stdout.write(minhash_signature({text!r}, cfg).tobytes().hex())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert bytes.fromhex(out) == minhash_signature(text, cfg).tobytes()
    assert word_ngram_hashes(normalized_words(text), 5).dtype == np.uint64
    assert minhash_signature("", cfg) is None
    restored = pickle.loads(pickle.dumps(fingerprint(text, cfg)))
    assert restored.exact == fingerprint(text, cfg).exact
    assert np.array_equal(restored.signature, fingerprint(text, cfg).signature)


def _edit(text: str, rng: random.Random, vocabulary: list[str]) -> str:
    """A few word substitutions, insertions and deletions, and different whitespace."""
    words = text.split()
    for _ in range(rng.randint(2, 5)):
        at = rng.randrange(len(words))
        action = rng.choice(["change", "insert", "delete"])
        if action == "change":
            words[at] = rng.choice(vocabulary)
        elif action == "insert":
            words.insert(at, rng.choice(vocabulary))
        else:
            del words[at]
    separators = [rng.choice([" ", " ", " ", "  ", "\n"]) for _ in words]
    return "".join(word + sep for word, sep in zip(words, separators))


def _shingles(text: str, n: int) -> set[tuple[str, ...]]:
    words = normalized_words(text)
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def test_planted_near_duplicates_in_real_legal_documents_are_found(legal_corpus):
    rng = random.Random(7)
    docs = []
    for source in ("appellate_opinions", "dc_session_laws", "scotus_opinions"):
        with gzip.open(legal_corpus / f"{source}.jsonl.gz", "rt", encoding="utf-8") as handle:
            texts = [json.loads(line)["text"] for line in handle]
        # documents of 500+ words, cut to 1,500 words to keep the test fast; a few edits then change <= ~10%
        # of the shingles, so every planted copy is a true near duplicate at threshold 0.8
        long_texts = [" ".join(t.split()[:1500]) for t in texts if len(t.split()) >= 500]
        docs += [(f"{source}/{i}", t) for i, t in enumerate(rng.sample(long_texts, 55))]
    vocabulary = sorted({w for _, t in docs[:20] for w in t.split()})
    planted_near = {f"near/{i}": rng.choice(docs) for i in range(40)}
    planted_exact = {f"exact/{i}": rng.choice(docs) for i in range(10)}
    stream = list(docs)
    for new_id, (source_id, text) in planted_near.items():
        stream.append((new_id, _edit(text, rng, vocabulary)))
    for new_id, (source_id, text) in planted_exact.items():
        stream.append((new_id, text.upper().replace(" ", "  ")))
    order = list(range(len(docs), len(stream)))
    rng.shuffle(order)
    stream = stream[: len(docs)] + [stream[i] for i in order]

    cfg = DedupConfig()
    dedup = Deduplicator(cfg)
    texts = dict(stream)
    decisions = {doc_id: dedup.check(doc_id, text) for doc_id, text in stream}

    flagged = {doc_id: d for doc_id, d in decisions.items() if not d.keep}
    # a flagged pair is right when the two texts really are near duplicates (true shingle Jaccard),
    # which covers the planted copies and any near duplicates the legal corpus holds by itself
    correct = 0
    for doc_id, decision in flagged.items():
        a, b = _shingles(texts[doc_id], cfg.shingle_words), _shingles(texts[decision.duplicate_of], cfg.shingle_words)
        correct += len(a & b) / len(a | b) >= 0.7
    precision = correct / len(flagged)
    recall = sum(not decisions[doc_id].keep for doc_id in planted_near) / len(planted_near)
    print(f"near-duplicate precision {precision:.3f} recall {recall:.3f} on {len(stream)} documents")
    assert precision >= 0.95, precision
    assert recall >= 0.9, recall
    assert all(not decisions[doc_id].keep and decisions[doc_id].kind == "exact" for doc_id in planted_exact)
    assert all(decisions[doc_id].duplicate_of is not None for doc_id in planted_near if not decisions[doc_id].keep)
    assert sum(len(v) for v in dedup.stats.clusters.values()) == len(flagged)
    assert dedup.stats.dropped_documents["near"] + dedup.stats.dropped_documents["exact"] == len(flagged)


def test_fingerprints_from_workers_give_the_same_decisions_as_checking_text():
    cfg = DedupConfig()
    texts = [
        ("a", "the council adopts the fiscal impact statement of the budget director as the fiscal impact statement"),
        ("b", "The Council adopts the fiscal impact statement of the Budget Director as the fiscal impact statement."),
        ("c", "this act shall take effect following approval by the mayor and a thirty day period of review"),
        ("d", "this act shall take effect following approval by the mayor and a thirty day period of review by congress"),
    ]
    direct = Deduplicator(cfg)
    from_fingerprints = Deduplicator(cfg)
    fingerprints = [pickle.loads(pickle.dumps(fingerprint(text, cfg))) for _, text in texts]
    first = [direct.check(doc_id, text) for doc_id, text in texts]
    second = [from_fingerprints.check_fingerprint(doc_id, fp) for (doc_id, _), fp in zip(texts, fingerprints)]
    assert first == second
    assert [d.keep for d in first] == [True, False, True, False]
    assert first[3].kind == "near" and first[3].duplicate_of == "c" and first[3].similarity >= cfg.threshold


def test_minhash_signature_estimates_jaccard():
    cfg = DedupConfig(num_perm=256)
    base = " ".join(f"word{i}" for i in range(400))
    half = " ".join(f"word{i}" for i in range(200, 600))
    a, b = minhash_signature(base, cfg), minhash_signature(half, cfg)
    true = len(_shingles(base, 5) & _shingles(half, 5)) / len(_shingles(base, 5) | _shingles(half, 5))
    assert a.shape == (256,) and a.dtype == np.uint32
    assert abs(float(np.mean(a == b)) - true) < 0.08
