"""Deduplication across all sources: exact duplicates by a hash of normalized text, near duplicates by MinHash LSH.

Fingerprints (`fingerprint`, `minhash_signature`) are pure and run in worker processes; `Deduplicator` owns the
index, sees fingerprints in one process in corpus order, and keeps the first occurrence of every cluster.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Optional

import numpy as np

from slmkit.data_config import DedupConfig
from slmkit.errors import SlmkitError

_WORD = re.compile(r"\w+")
# splitmix64 constants: a cheap, well-mixing 64-bit finalizer for n-gram keys
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
_NGRAM_BASE = np.uint64(0x9E3779B97F4A7C15)


# ---- fingerprints (worker side) --------------------------------------------------------------------------------


def normalized_words(text: str) -> list[str]:
    """Lowercase word tokens with punctuation dropped: the unit of exact and near duplicate comparison."""
    return _WORD.findall(text.lower())


def word_ngram_hashes(words: list[str], n: int) -> np.ndarray:
    """Stable 64-bit hashes (uint64) of every run of n consecutive words; one hash of all words if fewer than n.

    Stable across processes and runs (CRC-32 per word, not Python's salted hash), so workers agree.
    """
    if not words:
        return np.empty(0, dtype=np.uint64)
    word_hashes = np.fromiter(map(zlib.crc32, map(str.encode, words)), dtype=np.uint64, count=len(words))
    n = min(n, len(words))
    count = len(words) - n + 1
    with np.errstate(over="ignore"):
        keys = word_hashes[:count].copy()
        for offset in range(1, n):
            keys *= _NGRAM_BASE
            keys += word_hashes[offset : offset + count]
        keys ^= keys >> np.uint64(30)
        keys *= _MIX_1
        keys ^= keys >> np.uint64(27)
        keys *= _MIX_2
        keys ^= keys >> np.uint64(31)
    return keys


# datasketch is imported where it is used: it pulls in scipy (~1 s), which a run with dedup off never needs.


@lru_cache(maxsize=8)
def _permutations(num_perm: int, seed: int) -> np.ndarray:
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=seed).permutations


def _identity(value: int) -> int:
    return value


# Shingles are fed to MinHash in blocks so a long document never builds a (shingles x num_perm) matrix at once.
_BLOCK = 4096


def minhash_signature(text: str, cfg: DedupConfig) -> Optional[np.ndarray]:
    """The MinHash signature (uint32[num_perm]) of the document's word-shingle set; None for a text without words.

    Uses datasketch's MinHash (affine32 scheme) with our own stable 32-bit shingle hashes as input.
    """
    return _signature_of_words(normalized_words(text), cfg)


def _signature_of_words(words: list[str], cfg: DedupConfig) -> Optional[np.ndarray]:
    from datasketch import MinHash

    if not words:
        return None
    # repeated shingles change nothing in a set: hashing each distinct one once saves most of the work
    shingles = np.unique(word_ngram_hashes(words, cfg.shingle_words) >> np.uint64(32))
    minhash = MinHash(num_perm=cfg.num_perm, seed=cfg.seed, hashfunc=_identity,
                      permutations=_permutations(cfg.num_perm, cfg.seed), scheme="affine32")
    for start in range(0, len(shingles), _BLOCK):
        minhash.update_batch(shingles[start : start + _BLOCK].tolist())
    return minhash.hashvalues.copy()


@dataclass(frozen=True, eq=False)
class Fingerprint:
    """What the index needs of one document: picklable and small (num_perm * 4 + 16 bytes)."""

    exact: bytes
    signature: Optional[np.ndarray]
    characters: int


def fingerprint(text: str, cfg: DedupConfig) -> Fingerprint:
    """Exact-text digest and MinHash signature of a document; run it in worker processes."""
    words = normalized_words(text)
    exact = hashlib.blake2b(" ".join(words).encode("utf-8"), digest_size=16).digest()
    signature = _signature_of_words(words, cfg) if cfg.near else None
    return Fingerprint(exact=exact, signature=signature, characters=len(text))


# ---- the index (one process, corpus order) ---------------------------------------------------------------------


@dataclass(frozen=True)
class DedupDecision:
    keep: bool
    duplicate_of: Optional[str] = None
    kind: Optional[str] = None  # 'exact' | 'near' | None
    similarity: Optional[float] = None  # estimated Jaccard for near duplicates


@dataclass
class DedupStats:
    documents: int = 0
    characters: int = 0
    dropped_documents: dict[str, int] = field(default_factory=lambda: {"exact": 0, "near": 0})
    dropped_characters: dict[str, int] = field(default_factory=lambda: {"exact": 0, "near": 0})
    clusters: dict[str, list[str]] = field(default_factory=dict)  # kept document id -> ids dropped as its duplicates
    examples: list[str] = field(default_factory=list)
    max_examples: int = 5


class Deduplicator:
    """Keeps the first document of every exact or near-duplicate cluster, in the order documents are checked.

    Memory per kept document: a 16-byte digest plus its signature (4 * num_perm bytes) and the LSH band keys,
    about 1.5 KB at num_perm=128, so ~1.5 GB for a million documents.
    """

    def __init__(self, cfg: DedupConfig):
        from datasketch import MinHashLSH

        self.cfg = cfg
        self.stats = DedupStats(max_examples=cfg.max_examples)
        self._exact: dict[bytes, str] = {}
        self._signatures: dict[str, np.ndarray] = {}
        self._order: dict[str, int] = {}
        self._lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm) if cfg.near else None

    def check(self, doc_id: str, text: str) -> DedupDecision:
        """Decide on one document (computing its fingerprint here); kept documents join the index."""
        return self.check_fingerprint(doc_id, fingerprint(text, self.cfg), text)

    def check_fingerprint(self, doc_id: str, fp: Fingerprint, text: Optional[str] = None) -> DedupDecision:
        """Decide on one document from a fingerprint computed elsewhere; `text` only feeds report examples."""
        from datasketch import LeanMinHash

        if doc_id in self._order:
            raise SlmkitError(f"document id {doc_id!r} was checked twice; document ids given to dedup must be unique.")
        self.stats.documents += 1
        self.stats.characters += fp.characters

        if self.cfg.exact:
            first = self._exact.get(fp.exact)
            if first is not None:
                return self._drop(doc_id, first, "exact", None, fp, text)

        minhash = None
        if self._lsh is not None and fp.signature is not None:
            minhash = LeanMinHash(seed=self.cfg.seed, hashvalues=fp.signature, scheme="affine32")
            best: Optional[tuple[float, int, str]] = None
            for candidate in self._lsh.query(minhash):
                similarity = float(np.mean(self._signatures[candidate] == fp.signature))
                # LSH returns candidates in no fixed order: rank by similarity, then by first appearance
                rank = (-similarity, self._order[candidate], candidate)
                if similarity >= self.cfg.threshold and (best is None or rank < best):
                    best = rank
            if best is not None:
                return self._drop(doc_id, best[2], "near", -best[0], fp, text)

        self._order[doc_id] = len(self._order)
        if self.cfg.exact:
            self._exact.setdefault(fp.exact, doc_id)
        if minhash is not None:
            self._signatures[doc_id] = fp.signature
            self._lsh.insert(doc_id, minhash, check_duplication=False)
        return DedupDecision(keep=True)

    def _drop(self, doc_id: str, first: str, kind: str, similarity: Optional[float], fp: Fingerprint,
              text: Optional[str]) -> DedupDecision:
        self.stats.dropped_documents[kind] += 1
        self.stats.dropped_characters[kind] += fp.characters
        self.stats.clusters.setdefault(first, []).append(doc_id)
        if len(self.stats.examples) < self.stats.max_examples:
            detail = f" (Jaccard ~{similarity:.2f})" if similarity is not None else ""
            snippet = f": {' '.join(text[:120].split())!r}" if text else ""
            self.stats.examples.append(f"{doc_id} is a {kind} duplicate of {first}{detail}{snippet}")
        return DedupDecision(keep=False, duplicate_of=first, kind=kind, similarity=similarity)
