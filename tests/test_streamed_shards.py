"""Token shards streamed from a folder or object store (data.shards_from), on fsspec's memory:// and file:// file
systems: the same windows as the local folder, only the shards read are fetched, each checked against its sha256
and written whole or not at all, once however many fetchers want it, a brief network error is retried, a warm cache
fetches nothing, a resume continues the exact sample stream and refuses a new copy under the same URL, and every bad
input gets one message."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import logging
import threading
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem

import slmkit.streamed as streamed
from data_prep.pack import ShardPacker, write_manifest
from data_prep.remote import publish_copy
from slmkit.data import FORMAT, MANIFEST, TokenShards, cache_root
from slmkit.errors import SlmkitError
from slmkit.streamed import CACHE_DIR, open_streamed, token_shards
from slmkit.tokenizer import TOKENIZER_FILE
from slmkit.training.datamodule import TokenDataModule

TRAIN_TOKENS, SHARD_TOKENS = 161, 40  # five train shards: 40 + 40 + 40 + 40 + 1 tokens
TOKENIZER_BYTES = b'{"stand-in": "the shards only need its sha256 to match"}'


def write_prepared(folder: Path) -> Path:
    """A prepared folder, packed by data_prep, whose train split is the tokens 0, 1, 2, ... (a window's first token
    says where it starts)."""
    packer = ShardPacker(folder, np.dtype(np.uint16), SHARD_TOKENS)
    packer.add("train", np.arange(TRAIN_TOKENS), np.array([TRAIN_TOKENS]))
    packer.add("val", np.arange(50), np.array([50]))
    splits = {name: counts.as_dict() for name, counts in packer.finish().items()}
    (folder / TOKENIZER_FILE).write_bytes(TOKENIZER_BYTES)
    write_manifest(folder, {"format": FORMAT, "dtype": "uint16", "eos_id": 0, "vocab_size": 1024,
                            "tokenizer_sha256": hashlib.sha256(TOKENIZER_BYTES).hexdigest(), "inputs_sha256": "-",
                            "sources": [], "splits": splits})
    return folder


@pytest.fixture(autouse=True)
def cold_cache(tmp_path, monkeypatch):
    """Each test starts with an empty cache (the session's is shared by every test)."""
    monkeypatch.setenv("SLMKIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def local(tmp_path) -> Path:
    return write_prepared(tmp_path / "prepared")


@pytest.fixture
def remote(local):
    """The prepared folder published to memory://, as data.publish_to copies it."""
    publish_copy(local, "memory://bucket/prepared", MANIFEST)
    yield "memory://bucket/prepared"
    MemoryFileSystem().rm("/bucket", recursive=True)


@pytest.fixture
def opened(monkeypatch):
    """Every path the memory file system opens for reading, in order."""
    paths: list[str] = []
    original = MemoryFileSystem._open

    def spy(self, path, mode="rb", *args, **kwargs):
        if "r" in mode:
            paths.append(path.rsplit("/", 1)[-1])
        return original(self, path, mode, *args, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "_open", spy)
    return paths


@pytest.fixture
def waits(monkeypatch) -> list[float]:
    """The backoff waits between tries of a download, recorded instead of slept."""
    seconds: list[float] = []
    monkeypatch.setattr(streamed, "_sleep", seconds.append)
    return seconds


def cached_files(folder: Path) -> list[str]:
    """The cache folder's files, less the fetchers' lock files (each a shard's, kept for the next fetcher)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def test_pack_records_each_shards_sha256_also_for_the_cut_tail(tmp_path):
    packer = ShardPacker(tmp_path, np.dtype(np.uint16), 10, val_fraction=0.25)
    packer.add("stream", np.arange(37), np.array([20, 17]))  # the cut at token 27 falls inside the third shard
    counts = packer.finish()
    entries = counts["train"].shards + counts["val"].shards
    assert [e["tokens"] for e in entries] == [10, 10, 7, 3, 7]
    for entry in entries:
        assert entry["sha256"] == hashlib.sha256((tmp_path / entry["file"]).read_bytes()).hexdigest()


@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_streaming_gives_the_windows_of_the_local_folder(local, remote, scheme):
    url = remote if scheme == "memory" else f"file://{local}"
    prepared = open_streamed(url)
    assert prepared.shards_dir.parent == cache_root() / CACHE_DIR and not prepared.reused
    assert (prepared.tokenizer_path.read_bytes(), prepared.manifest) == (TOKENIZER_BYTES, json.loads((local / MANIFEST).read_text()))
    streamed_train, local_train = token_shards(prepared.shards_dir, "train"), TokenShards(local, "train")
    assert len(streamed_train) == len(local_train) == TRAIN_TOKENS
    for start in range(0, TRAIN_TOKENS - 33, 7):  # windows inside shards and across their boundaries
        assert streamed_train.window(start, 33).tolist() == local_train.window(start, 33).tolist() == list(range(start, start + 33))
    assert streamed_train.window(0, TRAIN_TOKENS).tolist() == list(range(TRAIN_TOKENS))
    assert token_shards(prepared.shards_dir, "val").window(0, 50).tolist() == list(range(50))
    assert open_streamed(url).reused  # every shard is in the cache now


def test_only_the_shards_read_are_fetched(remote, opened):
    prepared = open_streamed(remote)
    shards = token_shards(prepared.shards_dir, "train")
    assert not [name for name in cached_files(prepared.shards_dir) if name.endswith(".bin")]
    shards.window(3, 10)
    shards.window(75, 10)  # crosses from the second shard into the third
    assert [name for name in cached_files(prepared.shards_dir) if name.endswith(".bin")] == \
        ["train_00000.bin", "train_00001.bin", "train_00002.bin"]
    assert [name for name in opened if name.endswith(".bin")] == ["train_00000.bin", "train_00001.bin", "train_00002.bin"]


def test_a_warm_cache_fetches_nothing(remote, opened):
    first = open_streamed(remote)
    everything = token_shards(first.shards_dir, "train").window(0, TRAIN_TOKENS).tolist()
    token_shards(first.shards_dir, "val").window(0, 50)
    opened.clear()
    again = open_streamed(remote)
    assert again.reused and again.shards_dir == first.shards_dir
    assert token_shards(again.shards_dir, "train").window(0, TRAIN_TOKENS).tolist() == everything
    assert opened == []  # the manifest is read whole (cat_file), and nothing else is opened


def test_a_corrupt_remote_shard_is_refused_and_nothing_of_it_kept(remote, caplog):
    memory = MemoryFileSystem()
    damaged = bytearray(memory.cat_file("/bucket/prepared/train_00001.bin"))
    damaged[5] ^= 1  # one flipped bit, same size
    memory.pipe_file("/bucket/prepared/train_00001.bin", bytes(damaged))
    prepared = open_streamed(remote)
    shards = token_shards(prepared.shards_dir, "train")
    assert shards.window(0, 10).tolist() == list(range(10))  # the intact shard reads as ever
    with caplog.at_level(logging.WARNING, logger="slmkit"), \
            pytest.raises(SlmkitError, match=r"train_00001.bin at data.shards_from=memory://bucket/prepared does not "
                                             r"match its manifest: fetched 2 times.*publish the prepared folder there again"):
        shards.window(45, 10)
    assert "fetching it again" in caplog.text
    assert cached_files(prepared.shards_dir) == [MANIFEST, "streamed_from.json", TOKENIZER_FILE, "train_00000.bin"]


def test_a_corrupt_download_is_fetched_again(remote, monkeypatch):
    chunks, calls = streamed._remote_chunks, []

    def flaky(*args):
        calls.append(args[1])
        for index, chunk in enumerate(chunks(*args)):
            yield chunk[:-1] + b"\xff" if len(calls) == 1 and index == 0 else chunk  # the first download is damaged

    monkeypatch.setattr(streamed, "_remote_chunks", flaky)
    prepared = open_streamed(remote)  # the tokenizer's first download is the damaged one
    assert prepared.tokenizer_path.read_bytes() == TOKENIZER_BYTES and len(calls) == 2


def test_a_download_cut_short_leaves_no_partial_shard(remote, monkeypatch, waits):
    prepared = open_streamed(remote)
    original = MemoryFileSystem._open

    class CutShort(io.BytesIO):
        """The connection drops after the first 10 bytes."""

        def read(self, size=-1):
            if self.tell() >= 10:
                raise ConnectionResetError(104, "Connection reset by peer")
            return super().read(10)

    monkeypatch.setattr(MemoryFileSystem, "_open", lambda self, path, mode="rb", *args, **kwargs: CutShort(b"\1" * 80))
    with pytest.raises(SlmkitError, match=r"train_00000.bin at data.shards_from=memory://bucket/prepared cannot be "
                                          r"reached \(ConnectionResetError.*check the URL, the network"):
        token_shards(prepared.shards_dir, "train").window(0, 5)
    assert waits == [2.0, 4.0, 8.0]  # four tries, the one message only after the last
    assert cached_files(prepared.shards_dir) == [MANIFEST, "streamed_from.json", TOKENIZER_FILE]  # no temporary either
    monkeypatch.setattr(MemoryFileSystem, "_open", original)
    assert token_shards(prepared.shards_dir, "train").window(0, 5).tolist() == list(range(5))


def test_a_brief_network_error_is_retried(remote, monkeypatch, waits, caplog):
    prepared = open_streamed(remote)
    original, reads = MemoryFileSystem._open, []

    class ResetOnce(io.BytesIO):
        def read(self, size=-1):
            raise ConnectionResetError(104, "Connection reset by peer")

    def flaky(self, path, mode="rb", *args, **kwargs):
        reads.append(path.rsplit("/", 1)[-1])
        return ResetOnce() if len(reads) == 1 else original(self, path, mode, *args, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "_open", flaky)
    with caplog.at_level(logging.WARNING, logger="slmkit"):
        assert token_shards(prepared.shards_dir, "train").window(0, 5).tolist() == list(range(5))
    assert reads == ["train_00000.bin", "train_00000.bin"] and waits == [2.0]
    assert "reading train_00000.bin from memory://bucket/prepared failed (ConnectionResetError" in caplog.text


def test_fetchers_of_one_shard_wait_for_one_download_and_clear_a_crashed_ones_temporary(remote, opened, monkeypatch):
    prepared = open_streamed(remote)
    stale = [prepared.shards_dir / ".train_00000.bin.k3j9x2.tmp", prepared.shards_dir / ".train_00001.bin.a8f0q1.tmp"]
    for path in stale:
        path.write_bytes(b"left by a fetcher that crashed")
    original = MemoryFileSystem._open

    def slow(self, path, mode="rb", *args, **kwargs):
        time.sleep(0.3)  # a download long enough that the other fetcher asks for the shard meanwhile
        return original(self, path, mode, *args, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "_open", slow)
    opened.clear()
    start, windows = threading.Barrier(3), []

    def fetcher():  # a rank or a DataLoader worker: its own TokenShards, the node's one cache folder
        shards = token_shards(prepared.shards_dir, "train")
        start.wait()
        windows.append(shards.window(0, 5).tolist())

    threads = [threading.Thread(target=fetcher) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert windows == [list(range(5))] * 3 and opened == ["train_00000.bin"]
    assert not stale[0].exists() and stale[1].exists()  # only the fetched shard's leftovers: the other may be written now


def test_bad_urls_get_one_message(remote, tmp_path, monkeypatch):
    with pytest.raises(SlmkitError, match=r"data.shards_from=memory://bucket/elsewhere has no manifest.json: it is not "
                                          r"a prepared data folder.*slmkit data prepare"):
        open_streamed("memory://bucket/elsewhere")
    with pytest.raises(SlmkitError, match="has no manifest.json"):
        open_streamed(f"file://{tmp_path}/nothing")
    MemoryFileSystem().rm("/bucket/prepared/train_00003.bin")
    with pytest.raises(SlmkitError, match=r"data.shards_from=memory://bucket/prepared has no train_00003.bin, which "
                                          r"its manifest lists"):
        token_shards(open_streamed(remote).shards_dir, "train").window(130, 5)
    MemoryFileSystem().rm(f"/bucket/prepared/{TOKENIZER_FILE}")
    monkeypatch.setenv("SLMKIT_CACHE", str(tmp_path / "cold"))
    with pytest.raises(SlmkitError, match=f"has no {TOKENIZER_FILE}"):
        open_streamed(remote)

    def unreachable(self, path, *args, **kwargs):
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(MemoryFileSystem, "cat_file", unreachable)
    with pytest.raises(SlmkitError, match=r"data.shards_from=memory://bucket/prepared cannot be reached "
                                          r"\(ConnectionRefusedError"):
        open_streamed(remote)


def test_a_manifest_that_is_not_one_is_refused(remote):
    MemoryFileSystem().pipe_file("/bucket/prepared/manifest.json", b'{"format": "slmkit-shards/1"}')
    with pytest.raises(SlmkitError, match=r"memory://bucket/prepared/manifest.json lacks dtype"):
        open_streamed(remote)


def test_another_tokenizer_is_refused(remote, tmp_path):
    other = tmp_path / "other.json"
    other.write_bytes(b"{}")
    with pytest.raises(SlmkitError, match=r"tokenizer.path=.*other.json is not the tokenizer the shards at "
                                          r"data.shards_from=memory://bucket/prepared were encoded with"):
        open_streamed(remote, str(other))
    assert open_streamed(remote, str(tmp_path / "prepared" / TOKENIZER_FILE)).tokenizer_path.is_file()


def test_a_manifest_without_shard_digests_is_checked_by_size(local, remote, caplog):
    manifest = json.loads((local / MANIFEST).read_text())
    for split in manifest["splits"].values():
        for entry in split["shards"]:
            del entry["sha256"]
    MemoryFileSystem().pipe_file("/bucket/prepared/manifest.json", json.dumps(manifest).encode())
    MemoryFileSystem().pipe_file("/bucket/prepared/train_00002.bin", b"\0\0")  # truncated
    with caplog.at_level(logging.WARNING, logger="slmkit"):
        prepared = open_streamed(remote)
    assert "records no sha256 per shard" in caplog.text and "checked by size only" in caplog.text
    shards = token_shards(prepared.shards_dir, "train")
    assert shards.window(0, 80).tolist() == list(range(80))
    with pytest.raises(SlmkitError, match=r"train_00002.bin .* says 80 bytes"):
        shards.window(80, 5)


def load_recorder():
    """The one-parameter module of the global index's worker, which records each window's sample id."""
    path = Path(__file__).parent / "distributed" / "global_index_worker.py"
    spec = importlib.util.spec_from_file_location("global_index_worker", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fit(shards_dir: Path, steps: int, resume: Path | None = None, save: Path | None = None) -> list[int]:
    worker = load_recorder()
    data = TokenDataModule(shards_dir, block_size=worker.BLOCK, micro_batch_size=worker.MICRO_BATCH, grad_accum=1,
                           val_batches=0, seed=worker.SEED, data_order="global_index")
    module = worker.Recorder()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, use_distributed_sampler=False,
                        enable_checkpointing=False, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)
    trainer.fit(module, datamodule=data, ckpt_path=str(resume) if resume else None, weights_only=True)
    if save is not None:
        trainer.save_checkpoint(save)
    return module.samples


def test_a_resumed_run_continues_the_exact_sample_stream(remote, tmp_path, monkeypatch):
    straight = fit(open_streamed(remote).shards_dir, steps=12)
    monkeypatch.setenv("SLMKIT_CACHE", str(tmp_path / "node-a"))
    first = fit(open_streamed(remote).shards_dir, steps=5, save=tmp_path / "step-5.ckpt")
    monkeypatch.setenv("SLMKIT_CACHE", str(tmp_path / "node-b"))  # resumed on a machine with an empty cache
    rest = fit(open_streamed(remote).shards_dir, steps=12, resume=tmp_path / "step-5.ckpt")
    assert len(straight) == 24 and first + rest == straight
    assert len(set(straight[:20])) == 20  # one epoch (20 windows of 8) holds each window once


def test_slmkit_train_streams_the_shards_of_a_published_folder(shared_dir, tmp_path):
    from test_training import read_metrics, tiny_config

    from slmkit.data import RUN_MANIFEST, data_preparer
    from slmkit.training.run import train

    settings = ["trainer.max_steps=3", "trainer.val_every=3", "trainer.data_order=global_index"]
    local = train(tiny_config(shared_dir, tmp_path / "local", *settings))
    config = tiny_config(shared_dir, tmp_path / "local", *settings)
    prepared = data_preparer().prepare(config.data, config.tokenizer)
    url = f"file://{tmp_path / 'published'}"
    publish_copy(prepared.shards_dir, url, MANIFEST)
    streamed_run = train(tiny_config(shared_dir, tmp_path / "streamed", *settings, f"data.shards_from={url}",
                                     "data.sources=[]"))
    assert [(r["step"], r["train_loss"]) for r in read_metrics(local.out_dir)] == \
        [(r["step"], r["train_loss"]) for r in read_metrics(streamed_run.out_dir)]
    assert streamed_run.final_val_loss == local.final_val_loss
    assert (tmp_path / "streamed" / RUN_MANIFEST).read_bytes() == (prepared.shards_dir / MANIFEST).read_bytes()


def test_a_streamed_run_is_refused_a_vocabulary_extension(shared_dir, tmp_path):
    """tokenizer.extend learns its tokens while preparing the corpus, which a streamed run never does: refused before
    anything is fetched, rather than training on shards of the unextended tokenizer."""
    from test_training import tiny_config

    from slmkit.data import data_preparer
    from slmkit.training.run import train

    config = tiny_config(shared_dir, tmp_path / "local")
    prepared = data_preparer().prepare(config.data, config.tokenizer)
    url = f"file://{tmp_path / 'published'}"
    publish_copy(prepared.shards_dir, url, MANIFEST)
    with pytest.raises(SlmkitError, match=r"tokenizer\.extend .* data\.shards_from"):
        train(tiny_config(shared_dir, tmp_path / "streamed", f"data.shards_from={url}", "data.sources=[]",
                          f"tokenizer.path={prepared.tokenizer_path}", "tokenizer.extend=8"))
    assert not (cache_root() / CACHE_DIR).exists()


def test_a_resume_refuses_a_new_copy_published_under_the_same_url(shared_dir, tmp_path):
    """The run's config names only the URL: a copy published there again is other data, refused before the run folder
    is touched; the old copy restored, the run continues."""
    from test_resume import snapshot
    from test_training import tiny_config

    from slmkit.data import RUN_MANIFEST, data_preparer
    from slmkit.training.run import train

    settings = ["trainer.max_steps=2", "trainer.checkpoint_every=2", "trainer.val_every=2", "data.sources=[]"]
    config = tiny_config(shared_dir, tmp_path / "local")
    prepared = data_preparer().prepare(config.data, config.tokenizer)
    published = tmp_path / "published"
    url = f"file://{published}"
    publish_copy(prepared.shards_dir, url, MANIFEST)
    run = tmp_path / "run"
    train(tiny_config(shared_dir, run, *settings, f"data.shards_from={url}"))
    old = (published / MANIFEST).read_bytes()
    assert (run / RUN_MANIFEST).read_bytes() == old
    republished = json.loads(old)
    republished["inputs_sha256"] = "0" * 64  # the same URL, other data
    (published / MANIFEST).write_text(json.dumps(republished))
    before = snapshot(run)
    with pytest.raises(SlmkitError, match=rf"cannot resume {run}: data.shards_from={url} holds other data than the "
                                          rf"run trained on .*Restore the old copy.*publish the new data under a new URL"):
        train(tiny_config(shared_dir, run, *settings, f"data.shards_from={url}", "trainer.max_steps=4", "resume=true"))
    assert snapshot(run) == before
    (published / MANIFEST).write_bytes(old)
    assert train(tiny_config(shared_dir, run, *settings, f"data.shards_from={url}", "trainer.max_steps=4",
                             "resume=true")).steps == 4
