"""The curation pipeline inside prepare: stages, report, determinism, memory bound and resuming after a crash."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import data_prep.curate as curate_module
from data_helpers import curated_documents
from fault_helpers import kill_the_first_worker_while_the_second_starts, running, wait_for
from data_prep.curate import CHUNK_MEMORY_FACTOR
from data_prep.pipeline import prepare
from data_prep.report import render_markdown
from data_prep.sources import SourceStats, iter_documents
from slmkit.data_config import DataConfig, DecontaminateConfig, DedupConfig, SourceConfig, TokenizerConfig
from slmkit.errors import SlmkitError
from tests.conftest import REPO_ROOT

TOKENIZER = TokenizerConfig(kind="bpe", vocab_size=500)


@pytest.fixture(scope="module")
def rules(legal_corpus) -> list[str]:
    source = SourceConfig(path="federal_rules.jsonl.gz", max_documents=120)
    return [d.text for d in iter_documents(source, legal_corpus, "stop", SourceStats("rules")) if len(d.text.split()) > 60]


def write_jsonl(path: Path, texts: list[str]) -> None:
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))


@pytest.fixture
def corpus_dir(tmp_path, rules) -> Path:
    """Two sources; b repeats one document of a exactly and another with a small edit (a near duplicate)."""
    root = tmp_path / "data"
    root.mkdir()
    write_jsonl(root / "a.jsonl", rules[:60])
    near = rules[1].replace("the", "a", 1)
    write_jsonl(root / "b.jsonl", rules[60:] + [rules[0], near])
    return root


def config(root: Path, **overrides) -> DataConfig:
    fields = dict(root=str(root), sources=[SourceConfig(name="a", path="a.jsonl"), SourceConfig(name="b", path="b.jsonl")],
                  val_fraction=0.1, num_workers=1, memory_limit_mb=1)
    fields.update(overrides)
    return DataConfig(**fields)


def output_bytes(folder: Path) -> dict[str, bytes]:
    names = ["manifest.json", "tokenizer.json"]  # curated/corpus.json holds timings, like the report
    names += sorted(p.name for p in folder.glob("*.bin")) + sorted(f"curated/{p.name}" for p in folder.glob("curated/*.gz"))
    return {name: (folder / name).read_bytes() for name in names}


def test_duplicates_across_sources_are_dropped_and_the_report_is_written(tmp_path, corpus_dir, rules):
    prepared = prepare(config(corpus_dir), TOKENIZER, tmp_path / "out", progress=False)
    report = json.loads((tmp_path / "out" / "report" / "report.json").read_text())
    dedup = report["corpus"]["dedup"]
    assert dedup["dropped_documents"] == {"exact": 1, "near": 1}
    texts = [r["text"] for split in ("train", "val") for r in curated_documents(tmp_path / "out", split)]
    assert texts.count(rules[0]) == 1 and len(texts) == len(set(texts))
    b = next(s for s in report["corpus"]["sources"] if s["name"] == "b")
    assert b["stages"]["filter"][0] - b["stages"]["dedup"][0] == 2
    markdown = prepared.report_path.read_text()
    for heading in ("Documents and characters per source", "Mixture", "Quality filters", "Deduplication", "Time"):
        assert heading in markdown
    assert (tmp_path / "out" / "report" / "lengths.png").read_bytes()[:4] == b"\x89PNG"

    # the figures-only rendering (for publishing a report) quotes no corpus text
    corpus = report["corpus"]
    quotes = [*corpus["dedup"]["examples"]]
    for stage in ("clean", "filter"):
        quotes += [text for texts in corpus[stage]["examples"].values() for text in texts]
    assert quotes and all(quote[:40] in markdown for quote in quotes[:3])
    figures_only = render_markdown(report, examples=False)
    assert "Quality filters" in figures_only and not any(quote[:40] in figures_only for quote in quotes)


def test_outputs_are_byte_identical_whatever_the_worker_count(tmp_path, corpus_dir):
    one = prepare(config(corpus_dir, num_workers=1), TOKENIZER, tmp_path / "one", progress=False)
    two = prepare(config(corpus_dir, num_workers=2), TOKENIZER, tmp_path / "two", progress=False)
    assert not two.reused
    assert output_bytes(one.shards_dir) == output_bytes(two.shards_dir)


def test_memory_limit_bounds_buffered_text_without_changing_the_tokens(tmp_path, corpus_dir, rules):
    small = prepare(config(corpus_dir, memory_limit_mb=1, chunk_mb=0.02), TOKENIZER, tmp_path / "small", progress=False)
    large = prepare(config(corpus_dir, memory_limit_mb=4096), TOKENIZER, tmp_path / "large", progress=False)
    corpus = json.loads((tmp_path / "small" / "report" / "report.json").read_text())["corpus"]
    assert corpus["chunks"] >= 5
    largest_document = max(len(text) for text in rules)
    assert corpus["peak_buffered_chars"] <= 0.02e6 + largest_document
    assert corpus["peak_buffered_chars"] * CHUNK_MEMORY_FACTOR <= corpus["memory_limit_chars"]
    assert sorted(p.name for p in small.shards_dir.glob("*.bin")) == sorted(p.name for p in large.shards_dir.glob("*.bin"))
    for shard in small.shards_dir.glob("*.bin"):
        assert shard.read_bytes() == (large.shards_dir / shard.name).read_bytes()


@pytest.mark.parametrize("dedup", [True, False], ids=["dedup", "no-dedup"])
def test_a_crash_resumes_from_the_last_finished_chunk(tmp_path, corpus_dir, monkeypatch, dedup):
    # with dedup the last per-chunk stage runs after the dedup pass; without, one task does every stage of a chunk
    data = config(corpus_dir, chunk_mb=0.03, dedup=DedupConfig(exact=dedup, near=dedup))
    stage = "finish_chunk" if dedup else "curate_chunk"
    original = getattr(curate_module, stage)
    ran: list[int] = []

    def crash_at_chunk_two(task):
        if task[1] == 2:
            raise RuntimeError("simulated crash")
        ran.append(task[1])
        return original(task)

    with monkeypatch.context() as patch:
        patch.setattr(curate_module, stage, crash_at_chunk_two)
        with pytest.raises(RuntimeError, match="simulated crash"):
            prepare(data, TOKENIZER, tmp_path / "out", progress=False)
    assert ran == [0, 1]
    written: list[str] = []
    write_records = curate_module.write_records

    def recording_write(path, *args, **kwargs):
        written.append(f"{path.parent.name}/{path.name}")
        return write_records(path, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(curate_module, "write_records", recording_write)
        resumed = prepare(data, TOKENIZER, tmp_path / "out", progress=False)
    # chunks 0 and 1 had finished every stage: none of their files is written again
    assert written and all(name.startswith("final/chunk_") for name in written)
    assert not any(name.startswith(("final/chunk_00000", "final/chunk_00001")) for name in written)
    fresh = prepare(data, TOKENIZER, tmp_path / "fresh", progress=False)
    assert output_bytes(resumed.shards_dir) == output_bytes(fresh.shards_dir)
    assert not (tmp_path / "out" / "work").exists()


def curate_or_die_at_chunk_two(task):
    """curate_chunk, except that the worker given chunk 2 dies the way the out-of-memory killer ends a process."""
    if task[1] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return curate_module.curate_chunk(task)


def test_a_killed_worker_stops_the_run_with_one_error_and_the_rerun_resumes(tmp_path, corpus_dir, monkeypatch):
    data = config(corpus_dir, chunk_mb=0.03, num_workers=2)
    with monkeypatch.context() as patch:
        # workers receive the stage by name and import this module to run it; in them curate_chunk is the real one
        patch.setattr(curate_module, "curate_chunk", curate_or_die_at_chunk_two)
        with pytest.raises(SlmkitError, match=r"out-of-memory killer.*lower data\.num_workers \(it is 2\)"):
            prepare(data, TOKENIZER, tmp_path / "out", progress=False)
    finished = {path.name for path in (tmp_path / "out" / "work").rglob("curate/chunk_*.json")}
    assert "chunk_00000.json" in finished and "chunk_00002.json" not in finished
    resumed = prepare(data, TOKENIZER, tmp_path / "out", progress=False)
    fresh = prepare(config(corpus_dir, chunk_mb=0.03), TOKENIZER, tmp_path / "fresh", progress=False)
    assert output_bytes(resumed.shards_dir) == output_bytes(fresh.shards_dir)


UNGUARDED_SCRIPT = """
import pickle, sys
from pathlib import Path
from data_prep.pipeline import prepare
data, tokenizer = pickle.loads(Path(sys.argv[1]).read_bytes())
prepare(data, tokenizer, Path(sys.argv[2]), progress=False)
"""


def test_a_worker_that_fails_on_its_own_is_not_blamed_on_memory(tmp_path, corpus_dir):
    # spawned workers run a script's top level again: without the __main__ guard each one fails as it starts
    recipe, script = tmp_path / "recipe.pkl", tmp_path / "prepare_unguarded.py"
    recipe.write_bytes(pickle.dumps((config(corpus_dir, chunk_mb=0.03, num_workers=2), TOKENIZER)))
    script.write_text(UNGUARDED_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, str(script), str(recipe), str(tmp_path / "out")], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    message = result.stderr[result.stderr.index("SlmkitError: a data worker process"):]
    # mostly the worker's own exit code is seen; when the executor's SIGTERM reaches it first, the message says that
    # no exit code shows the cause, and names the guard all the same
    assert 'if __name__ == "__main__":' in message
    if "exited with code 1" in message:
        assert "Fix that and run again" in message and "out-of-memory" not in message
    else:
        assert "stopped as the pool broke" in message


@pytest.mark.timeout(120)  # a hang: the timeout fails it in minutes rather than at the suite's 600 s
@pytest.mark.parametrize("early", [False, True], ids=["as-its-start-returns", "before-it-is-handed-the-queues"])
def test_a_worker_killed_while_the_pool_starts_the_next_one_stops_the_run_in_bounded_time(tmp_path, corpus_dir,
                                                                                          monkeypatch, early):
    data = config(corpus_dir, chunk_mb=0.03, num_workers=2)
    with monkeypatch.context() as patch:
        started = kill_the_first_worker_while_the_second_starts(patch, early)
        began = time.monotonic()
        with pytest.raises(SlmkitError, match=r"out-of-memory killer.*lower data\.num_workers \(it is 2\)"):
            prepare(data, TOKENIZER, tmp_path / "out", progress=False)
    assert time.monotonic() - began < 60 and len(started) == 2
    wait_for(lambda: not any(running(process.pid) for process in started), 10, "the workers to end with the run")
    assert not (tmp_path / "out" / "manifest.json").exists()
    resumed = prepare(data, TOKENIZER, tmp_path / "out", progress=False)
    fresh = prepare(config(corpus_dir, chunk_mb=0.03), TOKENIZER, tmp_path / "fresh", progress=False)
    assert output_bytes(resumed.shards_dir) == output_bytes(fresh.shards_dir)


def test_documents_copied_from_an_eval_set_are_dropped(tmp_path, corpus_dir, rules):
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    (eval_dir / "task.jsonl").write_text(json.dumps({"question": rules[5][:400]}) + "\n")
    data = config(corpus_dir, decontaminate=DecontaminateConfig(eval_files=[str(eval_dir)]))
    prepare(data, TOKENIZER, tmp_path / "out", progress=False)
    corpus = json.loads((tmp_path / "out" / "report" / "report.json").read_text())["corpus"]
    assert corpus["decontaminate"]["dropped_documents"] == 1
    texts = [r["text"] for split in ("train", "val") for r in curated_documents(tmp_path / "out", split)]
    assert rules[5] not in texts and rules[6] in texts
