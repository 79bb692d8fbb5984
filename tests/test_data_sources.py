"""Reading corpus sources: every file format and compression, bad inputs reported with file and line, mixture weights."""

from __future__ import annotations

import bz2
import csv
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from data_prep.sources import SourceStats, iter_documents, mixture_copies, resolve_data_root
from slmkit.data_config import SourceConfig
from slmkit.errors import SlmkitError

RECORDS = [{"text": "first document", "court": "a"}, {"text": "second document", "court": "b"}]


def read(source: SourceConfig, root: Path, on_error: str = "stop") -> tuple[list, SourceStats]:
    stats = SourceStats(source.name or "s")
    return list(iter_documents(source, root, on_error, stats)), stats


def jsonl_bytes(records: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")


@pytest.mark.parametrize(
    "name, write",
    [
        ("c.jsonl", lambda p: p.write_bytes(jsonl_bytes(RECORDS))),
        ("c.jsonl.gz", lambda p: p.write_bytes(gzip.compress(jsonl_bytes(RECORDS)))),
        ("c.jsonl.zst", lambda p: p.write_bytes(zstandard.ZstdCompressor().compress(jsonl_bytes(RECORDS)))),
        ("c.jsonl.bz2", lambda p: p.write_bytes(bz2.compress(jsonl_bytes(RECORDS)))),
        ("c.json", lambda p: p.write_text(json.dumps(RECORDS))),
        ("c.parquet", lambda p: pq.write_table(pa.Table.from_pylist(RECORDS), p)),
    ],
)
def test_record_formats_give_text_and_keep_other_fields_as_metadata(tmp_path, name, write):
    write(tmp_path / name)
    docs, stats = read(SourceConfig(name="s", path=name), tmp_path)
    assert [d.text for d in docs] == ["first document", "second document"]
    assert [d.metadata["court"] for d in docs] == ["a", "b"]
    assert len({d.doc_id for d in docs}) == 2 and all(d.source == "s" for d in docs)
    assert stats.documents == 2 and stats.characters == len("first document") + len("second document")


def test_csv_with_a_custom_text_field(tmp_path):
    with open(tmp_path / "c.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["body", "id"])
        writer.writeheader()
        writer.writerow({"body": "line one\nline two", "id": "7"})
    docs, _ = read(SourceConfig(path="c.csv", text_field="body"), tmp_path)
    assert docs[0].text == "line one\nline two" and docs[0].metadata["id"] == "7"


def test_text_files_one_document_per_file_or_per_blank_line_block(tmp_path):
    (tmp_path / "dir" / "sub").mkdir(parents=True)
    (tmp_path / "dir" / "a.txt").write_text("para one\nstill one\n\n\npara two\n")
    (tmp_path / "dir" / "sub" / "b.md.gz").write_bytes(gzip.compress(b"# title\n"))
    whole, stats = read(SourceConfig(path="dir"), tmp_path)
    assert [d.text for d in whole] == ["para one\nstill one\n\n\npara two\n", "# title\n"]
    assert stats.files == 2
    blocks, _ = read(SourceConfig(path="dir/*.txt", txt_documents="blank_line"), tmp_path)
    assert [d.text for d in blocks] == ["para one\nstill one", "para two"]


def test_glob_and_max_documents(tmp_path):
    for index in range(3):
        (tmp_path / f"part{index}.jsonl").write_bytes(jsonl_bytes(RECORDS))
    docs, _ = read(SourceConfig(path="part*.jsonl", max_documents=5), tmp_path)
    assert len(docs) == 5


def test_missing_source_says_where_it_looked_and_how_to_point_elsewhere(tmp_path):
    with pytest.raises(SlmkitError) as error:
        read(SourceConfig(name="laws", path="legal/missing.jsonl.gz"), tmp_path)
    message = str(error.value)
    assert "'laws'" in message and str(tmp_path / "legal" / "missing.jsonl.gz") in message
    assert "data.root=" in message and "SLMKIT_DATA" in message


def test_data_root_from_config_then_environment_then_default(monkeypatch):
    monkeypatch.setenv("SLMKIT_DATA", "/from/env")
    assert resolve_data_root("/from/config") == Path("/from/config")
    assert resolve_data_root(None) == Path("/from/env")
    monkeypatch.delenv("SLMKIT_DATA")
    assert resolve_data_root(None) == Path("data")


def test_bad_json_line_stops_with_file_and_line_or_is_skipped_and_counted(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"text": "ok"}\n{"text": broken\n{"other": 1}\n{"text": "fine"}\n')
    with pytest.raises(SlmkitError, match=r"c\.jsonl:2: invalid JSON"):
        read(SourceConfig(path="c.jsonl"), tmp_path)
    docs, stats = read(SourceConfig(path="c.jsonl"), tmp_path, on_error="skip")
    assert [d.text for d in docs] == ["ok", "fine"]
    assert stats.skipped == {"bad_json": 1, "missing_text_field": 1}
    assert any("line 3" in e and "'text'" in e for e in stats.errors)


def test_corrupt_gzip_reports_file_and_line(tmp_path):
    data = gzip.compress(jsonl_bytes([{"text": f"document number {i} " * 20} for i in range(2000)]))
    (tmp_path / "c.jsonl.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(SlmkitError, match=r"c\.jsonl\.gz:\d+: cannot decompress"):
        read(SourceConfig(path="c.jsonl.gz"), tmp_path)
    docs, stats = read(SourceConfig(path="c.jsonl.gz"), tmp_path, on_error="skip")
    assert 0 < len(docs) < 2000 and stats.skipped == {"corrupt_file": 1}


def test_binary_and_empty_files_are_reported(tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01\x02text")
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "good.txt").write_text("good")
    with pytest.raises(SlmkitError, match="binary"):
        read(SourceConfig(path="bin.txt"), tmp_path)
    with pytest.raises(SlmkitError, match="empty file"):
        read(SourceConfig(path="empty.txt"), tmp_path)
    docs, stats = read(SourceConfig(path="*.txt"), tmp_path, on_error="skip")
    assert [d.text for d in docs] == ["good"]
    assert stats.skipped == {"binary_file": 1, "empty_file": 1}


def test_invalid_utf8_is_replaced_and_counted_but_real_replacement_characters_are_not(tmp_path):
    (tmp_path / "c.jsonl").write_bytes(b'{"text": "caf\xe9 \xff\xfe ok \xef\xbf\xbd"}\n')
    docs, stats = read(SourceConfig(path="c.jsonl"), tmp_path)
    assert docs[0].text == "caf\ufffd \ufffd\ufffd ok \ufffd"
    assert stats.replaced_chars == 3


def test_hub_dataset_offline_says_to_download_and_use_a_local_path(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SlmkitError, match="could not be reached.*path"):
        read(SourceConfig(hf_dataset="someone/legal-corpus"), tmp_path)


def test_real_corpus_sample(legal_corpus):
    docs, stats = read(SourceConfig(path="federal_rules.jsonl.gz", max_documents=5), legal_corpus)
    assert len(docs) == 5 and all(len(d.text) > 50 for d in docs) and "ruleset" in docs[0].metadata


def test_mixture_weights_repeat_or_keep_a_seeded_fraction():
    ids = [f"doc{i}" for i in range(2000)]
    assert all(mixture_copies(i, 2.0, 1) == 2 for i in ids)
    half = [mixture_copies(i, 0.5, 1) for i in ids]
    assert 900 < sum(half) < 1100
    assert half == [mixture_copies(i, 0.5, 1) for i in ids]  # deterministic
    assert half != [mixture_copies(i, 0.5, 2) for i in ids]  # and seeded
