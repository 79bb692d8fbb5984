"""Decontamination: evaluation text planted in real training documents is found; clean documents pass."""

from __future__ import annotations

import gzip
import json
import pickle
from itertools import islice

import pytest

from data_prep.decontaminate import DecontaminateStats, Decontaminator
from slmkit.data_config import DecontaminateConfig
from slmkit.errors import SlmkitError


@pytest.fixture(scope="module")
def pubmedqa(shared_dir):
    path = shared_dir / "eval" / "biomedical" / "pubmedqa" / "pqal_test.jsonl"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return path, records


@pytest.fixture(scope="module")
def legal_documents(shared_dir):
    with gzip.open(shared_dir / "corpora" / "legal" / "appellate_opinions.jsonl.gz", "rt", encoding="utf-8") as handle:
        return [json.loads(line)["text"][:6000] for line in islice(handle, 20)]


def _plant(document: str, passage: str) -> str:
    middle = len(document) // 2
    return document[:middle] + " " + passage + " " + document[middle:]


def test_planted_pubmedqa_text_is_found_in_a_legal_document(pubmedqa, legal_documents):
    path, records = pubmedqa
    decon = Decontaminator.from_files([str(path)], fields=["question", "contexts"], n=13)
    assert len(decon) > 10_000
    assert all(decon.check(doc) == 0 for doc in legal_documents)

    context = records[3]["contexts"][0]
    planted = _plant(legal_documents[0], context)
    words = len(context.split())
    assert decon.check(planted) >= words - 13 - 5  # every 13-gram of the passage, give or take tokenization
    # case, punctuation and line breaks do not hide it
    assert decon.check(_plant(legal_documents[1], context.upper().replace(",", "").replace(" ", "\n"))) > 0

    question = next(r["question"] for r in records if len(r["question"].split()) >= 15)
    assert decon.check(_plant(legal_documents[2], question)) >= 1


def test_keep_drops_or_reports_contaminated_documents_and_counts_them(pubmedqa, legal_documents):
    path, records = pubmedqa
    cfg = DecontaminateConfig(eval_files=[str(path)], fields=["contexts"], max_examples=1)
    decon = pickle.loads(pickle.dumps(Decontaminator.from_config(cfg)))
    stats = DecontaminateStats(max_examples=1)
    planted = _plant(legal_documents[4], records[10]["contexts"][0])
    assert decon.keep(legal_documents[5], stats) is True
    assert decon.keep(planted, stats) is False
    assert stats.documents == 2 and stats.dropped_documents == 1 and stats.contaminated_characters == len(planted)
    assert "shared 13-grams" in stats.examples[0]

    report_only = Decontaminator.from_config(DecontaminateConfig(eval_files=[str(path)], fields=["contexts"], action="report"))
    counted = DecontaminateStats()
    assert report_only.keep(planted, counted) is True
    assert counted.contaminated_documents == 1 and counted.dropped_documents == 0
    assert Decontaminator.from_config(DecontaminateConfig()) is None


def test_plain_text_files_folders_and_min_matches(tmp_path):
    passage = "the quick brown fox jumps over the lazy dog while the farmer watches from the porch"
    (tmp_path / "evalset").mkdir()
    (tmp_path / "evalset" / "items.txt").write_text(passage, encoding="utf-8")
    (tmp_path / "evalset" / "README.md").write_text("readme " * 50, encoding="utf-8")
    decon = Decontaminator.from_files([str(tmp_path / "evalset")], n=13)
    assert decon.sources == [str(tmp_path / "evalset" / "items.txt")]
    document = "Yesterday The quick brown fox jumps over the lazy dog, while the farmer watches from the porch."
    assert decon.check(document) == 4  # 16 shared words hold 4 13-grams
    assert decon.check("readme " * 50) == 0
    strict = Decontaminator.from_files([str(tmp_path / "evalset" / "items.txt")], n=13, min_matches=5)
    assert strict.keep(document) is True


def test_unreadable_or_mismatched_eval_files_raise_slmkit_error(tmp_path):
    with pytest.raises(SlmkitError, match="does not exist"):
        Decontaminator.from_files([str(tmp_path / "missing.jsonl")])
    wrong_fields = tmp_path / "rows.jsonl"
    wrong_fields.write_text(json.dumps({"prompt": "a b c"}) + "\n", encoding="utf-8")
    with pytest.raises(SlmkitError, match="none of the fields"):
        Decontaminator.from_files([str(wrong_fields)], fields=["text"])
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{not json\n', encoding="utf-8")
    with pytest.raises(SlmkitError, match="broken.jsonl:2"):
        Decontaminator.from_files([str(broken)])
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81 not utf-8")
    with pytest.raises(SlmkitError, match="cannot read"):
        Decontaminator.from_files([str(binary)])


@pytest.mark.parametrize("overrides, message", [({"n": 3}, "n is 3"), ({"action": "delete"}, "action"), ({"min_matches": 0}, "min_matches")])
def test_bad_config_values_raise_slmkit_error(overrides, message):
    with pytest.raises(SlmkitError, match=message):
        DecontaminateConfig(**overrides)
