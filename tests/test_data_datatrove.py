"""data.engine=datatrove: the same bytes as the one-machine pool whatever the task count, the node split or a rerun."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path

import pytest

from data_helpers import write_mixed_corpus
from data_prep.prepare import prepare
from data_prep.sources import SourceStats, iter_documents
from slmkit.data_config import DataConfig, SourceConfig, TokenizerConfig
from slmkit.errors import SlmkitError

pytest.importorskip("datatrove", reason="the datatrove extra: pip install 'slmkit[distributed]'")

TOKENIZER = TokenizerConfig(kind="bpe", vocab_size=400)


@pytest.fixture(scope="module")
def texts(legal_corpus) -> list[str]:
    source = SourceConfig(path="federal_rules.jsonl.gz", max_documents=120)
    found = [d.text for d in iter_documents(source, legal_corpus, "stop", SourceStats("rules")) if len(d.text.split()) > 60]
    return found[:40]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, texts) -> dict:
    return write_mixed_corpus(tmp_path_factory.mktemp("mixed") / "data", texts)


def config(corpus: dict, **overrides) -> DataConfig:
    return DataConfig(**{**corpus, "val_fraction": 0.2, "num_workers": 1, "shard_tokens": 3000, "chunk_mb": 0.01,
                         **overrides})


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every shard, the tokenizer and the manifest (which holds no timestamps)."""
    names = ["manifest.json", "tokenizer.json", *sorted(p.name for p in folder.glob("*.bin"))]
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in names}


@pytest.fixture(scope="module")
def pool_digests(tmp_path_factory, corpus) -> dict[str, str]:
    prepared = prepare(config(corpus), TOKENIZER, tmp_path_factory.mktemp("pool") / "out", progress=False)
    return digests(prepared.shards_dir)


@pytest.mark.parametrize("tasks", [1, 3, 4])
def test_datatrove_writes_the_pools_bytes_whatever_the_task_count(tmp_path, corpus, pool_digests, tasks):
    data = config(corpus, engine="datatrove", tasks=tasks, workers=1)
    prepared = prepare(data, TOKENIZER, tmp_path / "out", progress=False)
    assert not prepared.reused and len(pool_digests) > 4
    assert digests(prepared.shards_dir) == pool_digests
    assert not (tmp_path / "out" / "work").exists()
