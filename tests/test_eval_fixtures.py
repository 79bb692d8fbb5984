"""Fixtures of the eval tests: a byte-level BPE tokenizer and a small Transformer trained for a moment on legal text.

Saved as a real run folder with slmkit.checkpoint, so the tests load it the way `slmkit eval` does.
"""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from slmkit.checkpoint import save_inference_checkpoint
from slmkit.config import EvalConfig, RunConfig
from slmkit.model import Model, ModelConfig

EOS = "<|endoftext|>"
VOCAB = 384
WINDOW = 64


def legal_texts(shared_dir: Path, n: int) -> list[str]:
    texts = []
    with gzip.open(shared_dir / "corpora" / "legal" / "dc_code_sections.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            if len(texts) == n:
                break
    return texts


def train_tokenizer(texts: list[str], vocab_size: int = VOCAB) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def make_run(out_dir: Path, texts: list[str], steps: int, seed: int = 0, vocab_size: int = VOCAB) -> Path:
    tokenizer = train_tokenizer(texts, vocab_size)
    tokenizer_path = out_dir.parent / f"{out_dir.name}-tokenizer.json"
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(tokenizer_path))
    eos = tokenizer.token_to_id(EOS)
    stream = []
    for text in texts:
        stream += [eos] + tokenizer.encode(text).ids
    data = torch.tensor(stream)
    config = ModelConfig(vocab_size=tokenizer.get_vocab_size(), block_size=WINDOW, n_layer=2, n_head=4, d_model=64)
    torch.manual_seed(seed)
    model = Model(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - WINDOW - 1, (16,), generator=generator)
        batch = torch.stack([data[s : s + WINDOW + 1] for s in starts])
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    run_config = RunConfig(name="tiny-legal", model=config, eval=EvalConfig(tasks=["legal_heldout"], limit=4))
    save_inference_checkpoint(out_dir, model, run_config, tokenizer_path)
    return out_dir


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """The test machine's few cores are shared: one thread per process is faster than threads fighting for them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.cache
def _tiny_run(base: Path, shared_dir: Path) -> Path:
    # Cached per session: every test module that imports the fixture shares one trained model.
    return make_run(base / "eval-tiny" / "run-a", legal_texts(shared_dir, 300), steps=120)


@pytest.fixture(scope="session")
def tiny_run(shared_dir: Path, tmp_path_factory) -> Path:
    """A run folder (config.yaml, tokenizer.json, model.safetensors) of a 2-layer model trained 120 steps."""
    return _tiny_run(tmp_path_factory.getbasetemp(), shared_dir)


@pytest.fixture(scope="session")
def tiny_loaded(tiny_run: Path):
    from slmkit.checkpoint import load_checkpoint

    loaded = load_checkpoint(tiny_run)
    return loaded.model, loaded.tokenizer()
