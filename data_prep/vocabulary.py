"""A domain vocabulary (tokenizer.extend): new tokens for a BPE tokenizer, learned as merges on the domain corpus
from the tokenizer's own segmentation, chosen by the tokens they save, and written into its BPE model.

The new tokens are BPE merges appended after the tokenizer's own, not "added tokens": added tokens are matched as
whole strings before pre-tokenization, so " inflation" would be cut out of " inflationary" and mid-word pieces could
never be used, while appended merges apply only once every old merge has, exactly where a word's old segmentation
holds the pair. Text without the new pairs is encoded as before, and the merges learned here replay on encoding in
the order they were learned, so the tokens saved on the sample are the tokens saved on encoding.
"""

from __future__ import annotations

import heapq
import json
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable, Optional

from tokenizers import Tokenizer

from data_prep.tokenizer import bytes_per_token, limited, save_tokenizer
from slmkit.data_config import TokenizerConfig
from slmkit.errors import SlmkitError
from slmkit.tokenizer import check_extension, load_tokenizer, tokenizer_sha256

EXAMPLES = 20  # new tokens shown in the tokenizer report


def extend_tokenizer(config: TokenizerConfig, texts: Iterable[str], out_path: Path, heldout: list[str]) -> dict[str, Any]:
    """config.path's tokenizer with up to config.extend new tokens (or extend_from's that save tokens), learned on at
    most config.train_chars characters of `texts`, saved to out_path; returns a report dict."""
    check_extension(config)
    base_path = Path(config.path)
    start = time.perf_counter()
    base = load_tokenizer(base_path)
    words = word_counts(base, limited(texts, config.train_chars))
    if not words:
        raise SlmkitError("tokenizer.extend has no text to learn new tokens from: the train split is empty; add data "
                          "or lower data.val_fraction")
    allowed = domain_tokens(Path(config.extend_from), base) if config.extend_from else None
    merges = learn_merges(base, words, config.extend or None, max(config.min_frequency, 2), allowed)
    extended = with_merges(base_path, merges)
    save_tokenizer(extended, out_path)
    return {
        "kind": "bpe, extended",
        "base": str(base_path),
        "base_sha256": tokenizer_sha256(base_path),
        "extend": config.extend,
        "extend_from": config.extend_from,
        "added_tokens": len(merges),
        "base_vocab_size": base.get_vocab_size(with_added_tokens=True),
        "vocab_size": extended.get_vocab_size(with_added_tokens=True),
        "train_words": sum(words.values()),
        "heldout_documents": len(heldout),
        "bytes_per_token_before": bytes_per_token(base, heldout),
        "bytes_per_token": bytes_per_token(extended, heldout),
        "examples": [extended.decode([extended.token_to_id(a + b)]) for a, b in merges[:EXAMPLES]],
        "seconds": round(time.perf_counter() - start, 3),
        "sha256": tokenizer_sha256(out_path),
    }


def word_counts(tokenizer: Tokenizer, texts: Iterable[str]) -> Counter[str]:
    """How often each pre-tokenized word occurs in `texts`, normalized and pre-tokenized as `tokenizer` encodes."""
    counts: Counter[str] = Counter()
    for text in texts:
        if tokenizer.normalizer is not None:
            text = tokenizer.normalizer.normalize_str(text)
        counts.update(word for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(text))
    return counts


def domain_tokens(path: Path, base: Tokenizer) -> set[str]:
    """tokenizer.extend_from's vocabulary in the base tokenizer's spelling (the same pre-tokenizer's characters)."""
    domain = load_tokenizer(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    if (data.get("model") or {}).get("type") != "BPE" or json.dumps(data.get("pre_tokenizer"), sort_keys=True) != \
            json.dumps(json.loads(base.to_str()).get("pre_tokenizer"), sort_keys=True):
        raise SlmkitError(
            f"tokenizer.extend_from={path} is not a BPE tokenizer with the same pre-tokenizer as the tokenizer it "
            "extends, so its tokens are not spelled as that tokenizer's are: train the domain tokenizer with the "
            "base tokenizer's pre-tokenizer (slmkit's bpe kind for slmkit's), or drop extend_from to learn the tokens "
            "from the corpus"
        )
    return set(domain.get_vocab(with_added_tokens=False))


def learn_merges(base: Tokenizer, words: Counter[str], limit: Optional[int], min_count: int,
                 allowed: Optional[set[str]]) -> list[tuple[str, str]]:
    """BPE training continued from `base`'s segmentation of each word: again and again the adjacent pair that occurs
    most often (so saves the most tokens) becomes a token, while its count is at least min_count and, with
    `allowed`, only pairs that spell an allowed token. A pair that spells a token `base` has already is skipped: a
    merge into an old token could set off old merges on encoding that this count does not see."""
    vocab = set(base.get_vocab(with_added_tokens=True))
    segmented = [[piece.value for piece in base.model.tokenize(word)] for word in words]
    counts = list(words.values())
    pairs: Counter[tuple[str, str]] = Counter()
    holders: dict[tuple[str, str], set[int]] = defaultdict(set)
    for index, symbols in enumerate(segmented):
        for pair in zip(symbols, symbols[1:]):
            pairs[pair] += counts[index]
            holders[pair].add(index)
    queue = [(-count, pair) for pair, count in pairs.items()]
    heapq.heapify(queue)
    merges: list[tuple[str, str]] = []
    while queue and (limit is None or len(merges) < limit):
        negative, pair = heapq.heappop(queue)
        if -negative != pairs.get(pair, 0):
            continue  # a stale count: the pair's current count is queued too
        if -negative < min_count:
            break
        token = pair[0] + pair[1]
        if token in vocab or (allowed is not None and token not in allowed):
            continue
        merges.append(pair)
        vocab.add(token)
        changed = set()
        for index in holders.pop(pair):
            old = segmented[index]
            new = _merged(old, pair, token)
            if len(new) == len(old):
                continue
            for p in zip(old, old[1:]):
                pairs[p] -= counts[index]
                changed.add(p)
            for p in zip(new, new[1:]):
                pairs[p] += counts[index]
                holders[p].add(index)
                changed.add(p)
            segmented[index] = new
        pairs.pop(pair, None)
        for p in changed - {pair}:
            if pairs[p] > 0:
                heapq.heappush(queue, (-pairs[p], p))
    return merges


def _merged(symbols: list[str], pair: tuple[str, str], token: str) -> list[str]:
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(token)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def with_merges(base_path: Path, merges: list[tuple[str, str]]) -> Tokenizer:
    """The base tokenizer with each merge appended to its BPE model, its token given the next id after every id the
    tokenizer has (special and added tokens included), so every old id keeps its meaning."""
    data = json.loads(base_path.read_text(encoding="utf-8"))
    model = data["model"]
    ids = [*model["vocab"].values(), *(token["id"] for token in data.get("added_tokens", []))]
    next_id = max(ids) + 1
    as_text = bool(model["merges"]) and isinstance(model["merges"][0], str)  # older files write "a b"
    for a, b in merges:
        model["vocab"][a + b] = next_id
        next_id += 1
        model["merges"].append(f"{a} {b}" if as_text else [a, b])
    return Tokenizer.from_str(json.dumps(data, ensure_ascii=False))
