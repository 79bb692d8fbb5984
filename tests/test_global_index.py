"""The training data's global sample index: a seeded stream of non-overlapping windows whose position the
checkpoint keeps, so a resume continues it exactly, at the same world size or another."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from slmkit.data import FORMAT, MANIFEST, TokenShards
from slmkit.training.datamodule import EpochShuffledIndices, IndexedWindows, TokenWindows

WORKER = Path(__file__).parent / "distributed" / "global_index_worker.py"
REPO_ROOT = Path(__file__).resolve().parents[1]
BLOCK, SAMPLES = 8, 40


def write_counting_shards(folder: Path) -> Path:
    """A prepared folder whose train split is the tokens 0, 1, 2, ...: a window's first token says where it starts."""
    folder.mkdir(parents=True)
    splits = {}
    for split, tokens in (("train", np.arange(BLOCK * SAMPLES + 1)), ("val", np.arange(3 * BLOCK))):
        (folder / f"{split}_00000.bin").write_bytes(tokens.astype(np.uint16).tobytes())
        splits[split] = {"documents": 1, "tokens": len(tokens), "shards": [{"file": f"{split}_00000.bin", "tokens": len(tokens)}]}
    manifest = {"format": FORMAT, "dtype": "uint16", "eos_id": 0, "vocab_size": 1024, "tokenizer_sha256": "-",
                "inputs_sha256": "-", "sources": [], "splits": splits}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder


def test_the_global_index_cuts_the_split_into_windows_that_share_only_a_boundary_token(tmp_path):
    shards = TokenShards(write_counting_shards(tmp_path / "shards"), "train")
    samples = IndexedWindows(TokenWindows(shards, BLOCK), BLOCK)
    assert len(samples) == SAMPLES
    assert samples[0]["input_ids"].tolist() == list(range(BLOCK)) and samples[SAMPLES - 1]["targets"][-1] == BLOCK * SAMPLES
    with pytest.raises(IndexError):
        samples[SAMPLES]


def test_the_stream_position_alone_decides_what_each_rank_reads():
    def take(sampler: EpochShuffledIndices, count: int) -> list[int]:
        stream = iter(sampler)
        return [next(stream) for _ in range(count)]

    whole = take(EpochShuffledIndices(10, 2, 0, 1, seed=3), 30)  # three epochs of ten
    assert sorted(whole[:10]) == sorted(whole[10:20]) == list(range(10)) and whole[:10] != whole[10:20]
    rank0 = take(EpochShuffledIndices(10, 2, 0, 2, seed=3, start_sample=6), 4)
    rank1 = take(EpochShuffledIndices(10, 2, 1, 2, seed=3, start_sample=6), 4)
    assert rank0[:2] + rank1[:2] + rank0[2:] + rank1[2:] == whole[6:14]


def run_worker(tmp_path: Path, name: str, ranks: int, steps: int, grad_accum: int, resume: str = "-") -> list[list[int]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"] if ranks > 1 \
        else [sys.executable]
    command = [*launcher, str(WORKER), str(tmp_path / "shards"), str(tmp_path / name), str(steps), str(grad_accum), resume,
               str(tmp_path / f"{name}.ckpt")]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads((tmp_path / f"{name}.rank{rank}.json").read_text()) for rank in range(ranks)]


@pytest.mark.distributed
def test_a_resume_continues_the_stream_at_the_same_and_at_another_world_size(tmp_path):
    write_counting_shards(tmp_path / "shards")
    straight = run_worker(tmp_path, "straight", ranks=2, steps=6, grad_accum=1)
    first = run_worker(tmp_path, "first", ranks=2, steps=3, grad_accum=1)
    rest = run_worker(tmp_path, "rest", ranks=2, steps=6, grad_accum=1, resume=str(tmp_path / "first.ckpt"))
    assert [a + b for a, b in zip(first, rest)] == straight  # the same samples, rank by rank, step by step

    # on one rank, with twice the accumulation for the same global batch: the stream goes on where two ranks left it
    # (Lightning's first step after such a resume accumulates one micro-batch: steps 4-6 read 5 micro-batches)
    alone = run_worker(tmp_path, "alone", ranks=1, steps=6, grad_accum=2, resume=str(tmp_path / "first.ckpt"))[0]
    seen = global_stream(first) + alone
    assert len(seen) == len(set(seen)) == 22  # no window repeated
    assert seen == global_stream(straight)[:22]  # and none skipped
    saved = torch.load(tmp_path / "alone.ckpt", weights_only=True)["TokenDataModule"]["global_index"]
    assert saved == {"seed": 7, "samples": SAMPLES, "window": BLOCK, "consumed": 22}


def global_stream(per_rank: list[list[int]], micro_batch: int = 2) -> list[int]:
    """The samples of all ranks in stream order: each global micro-batch is rank 0's slice, then rank 1's."""
    steps = len(per_rank[0]) // micro_batch
    return [s for m in range(steps) for rank in per_rank for s in rank[m * micro_batch:(m + 1) * micro_batch]]


def test_slmkit_train_resumes_the_global_index_with_identical_losses(shared_dir, tmp_path):
    from test_training import read_metrics, tiny_config

    from slmkit.training.run import train

    settings = ["optim.decay_steps=8", "trainer.checkpoint_every=4", "trainer.data_order=global_index"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(tiny_config(shared_dir, straight, "trainer.max_steps=8", *settings))
    train(tiny_config(shared_dir, resumed, "trainer.max_steps=4", *settings))
    checkpoint = resumed / "checkpoints" / "step-4.ckpt"
    saved = torch.load(checkpoint, weights_only=True)["TokenDataModule"]["global_index"]
    assert saved["consumed"] == 4 * 4 and saved["window"] == 32  # 4 steps of 4 windows
    train(tiny_config(shared_dir, resumed, "trainer.max_steps=8", *settings, f"resume={checkpoint}"))
    assert [(r["step"], r["train_loss"]) for r in read_metrics(straight)] == \
        [(r["step"], r["train_loss"]) for r in read_metrics(resumed)]
