"""A domain vocabulary (tokenizer.extend): new BPE tokens chosen by the tokens they save on the domain corpus, the
model's rows of each new token the mean of its old segmentation's, a run that resumes with its own extended
tokenizer, an export transformers reads with the same ids; and a tokenizer that cannot be extended refused."""

from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from data_prep.tokenizer import bytes_per_token, train_bpe, train_char
from data_prep.vocabulary import extend_tokenizer
from slmkit.checkpoint import load_checkpoint
from slmkit.checkpoint.vocabulary import grow_vocabulary
from slmkit.data import data_preparer
from slmkit.data_config import TokenizerConfig
from slmkit.errors import SlmkitError
from slmkit.export import ExportArgs, run_export
from slmkit.model import Model
from slmkit.recipe import resolve_recipe
from slmkit.tokenizer import load_tokenizer, new_token_segmentations
from slmkit.training.resume import recorded_config
from slmkit.training.run import train

from export_helpers import TEXT, tiny_model, train_tokenizer, write_run

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["trainer.max_steps=4", "trainer.micro_batch_size=2", "trainer.log_every=1", "trainer.val_every=2",
        "trainer.val_batches=1", "trainer.checkpoint_every=2", "trainer.progress_bar=false", "optim.warmup_steps=1",
        "eval.tasks=[]"]
CORPUS = "data.sources=[{name: fomc_statements, path: finance/fomc_statements.jsonl.gz, max_documents: 60}]"
ADDED = 40  # more than the tiny model's padding rows (300 tokens, 320 rows), so the vocabulary grows


def finance_texts(shared_dir: Path, documents: int) -> list[str]:
    with gzip.open(shared_dir / "corpora" / "finance" / "fomc_statements.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for _, line in zip(range(documents), f)]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny slmkit run of a byte-level BPE trained on legal text."""
    folder = tmp_path_factory.mktemp("base")
    return write_run(folder / "run", train_tokenizer(folder / "tokenizer.json"), tiny_model())


@pytest.fixture(scope="module")
def extended(base, shared_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("extended") / "run"
    with pytest.MonkeyPatch.context() as patch:  # a module fixture starts before conftest's per-test cache is set
        patch.setenv("SLMKIT_CACHE", str(tmp_path_factory.getbasetemp() / "slmkit-cache"))
        train(resolve_recipe("finance-from-legal-tiny", [*extending(base, shared_dir), f"out_dir={out}", *FAST]))
    return out


def extending(base: Path, shared_dir: Path) -> list[str]:
    return [f"init_from={base}", f"tokenizer.extend={ADDED}", CORPUS, f"data.root={shared_dir / 'corpora'}"]


def test_the_tokens_chosen_save_tokens_on_held_out_domain_text(base, shared_dir, tmp_path):
    texts = finance_texts(shared_dir, 60)
    config = TokenizerConfig(path=str(base / "tokenizer.json"), extend=ADDED)
    report = extend_tokenizer(config, iter(texts[:50]), tmp_path / "tokenizer.json", texts[50:])
    assert report["added_tokens"] == ADDED and report["vocab_size"] == report["base_vocab_size"] + ADDED
    assert report["bytes_per_token"] > report["bytes_per_token_before"] * 1.05
    extended = load_tokenizer(tmp_path / "tokenizer.json")
    old = load_tokenizer(base / "tokenizer.json")
    for text in texts[50:]:  # every old id keeps its meaning, and text decodes back exactly
        assert extended.decode(extended.encode(text).ids) == old.decode(old.encode(text).ids)
    assert bytes_per_token(extended, texts[50:]) == report["bytes_per_token"]
    # the new tokens are used in encoding, not only listed
    assert any(i >= report["base_vocab_size"] for text in texts[50:] for i in extended.encode(text).ids)


def test_extend_from_takes_only_the_domain_tokenizers_tokens(base, shared_dir, tmp_path):
    texts = finance_texts(shared_dir, 60)
    train_bpe(TokenizerConfig(vocab_size=400), iter(texts)).save(str(tmp_path / "domain.json"))
    config = TokenizerConfig(path=str(base / "tokenizer.json"), extend_from=str(tmp_path / "domain.json"))
    report = extend_tokenizer(config, iter(texts[:50]), tmp_path / "tokenizer.json", texts[50:])
    added = set(load_tokenizer(tmp_path / "tokenizer.json").get_vocab()) - set(load_tokenizer(base / "tokenizer.json").get_vocab())
    assert report["added_tokens"] == len(added) > 0
    assert added <= set(load_tokenizer(tmp_path / "domain.json").get_vocab())
    assert report["bytes_per_token"] > report["bytes_per_token_before"]


def test_each_new_row_is_the_mean_of_the_rows_of_its_old_segmentation(extended, base):
    segmentations = new_token_segmentations(base / "tokenizer.json", extended / "tokenizer.json")
    assert len(segmentations) == ADDED and all(len(parts) >= 2 for parts in segmentations.values())
    source = tiny_model()
    grown = Model(type(source.config)(**{**source.config.__dict__, "vocab_size": 340}), source.head_specs)
    grow_vocabulary(grown, source, segmentations)
    old_rows = source.body.tok_embeddings.weight
    new_rows = grown.body.tok_embeddings.weight
    assert torch.equal(new_rows[:300], old_rows[:300])  # the old tokens; ids 300.. are the new ones
    for token, parts in segmentations.items():
        assert torch.allclose(new_rows[token], old_rows[parts].mean(0))
    grown_state, source_state = grown.state_dict(), source.state_dict()
    assert all(torch.equal(grown_state[name], source_state[name]) for name in source_state if "tok_embeddings" not in name
               and "heads." not in name)  # the body is the source's


def test_an_extended_run_grows_its_vocabulary_and_trains_on_the_extended_tokenizer(extended, base, shared_dir):
    loaded = load_checkpoint(extended)
    size = load_tokenizer(extended / "tokenizer.json").get_vocab_size(with_added_tokens=True)
    assert size == 300 + ADDED and loaded.config.model.vocab_size == size  # 340 tokens outgrow the 320 rows
    manifest = json.loads((extended / "data_manifest.json").read_text())
    assert manifest["vocab_size"] == size
    config = resolve_recipe("finance-from-legal-tiny", extending(base, shared_dir))
    prepared = data_preparer().prepare(config.data, config.tokenizer)  # the run's own, reused
    assert prepared.reused and f"before {ADDED} domain tokens were added" in prepared.report_path.read_text()


def _loss_per_byte(model: Model, tokenizer, texts: list[str]) -> float:
    nats = tokens = 0.0
    for text in texts:
        ids = torch.tensor([tokenizer.encode(text).ids[:33]])
        with torch.no_grad():
            logits = model(ids[:, :-1])
        nats += F.cross_entropy(logits[0], ids[0, 1:], reduction="sum").item()
        tokens += len(tokenizer.decode(ids[0].tolist()).encode("utf-8")) * (ids.shape[1] - 1) / ids.shape[1]
    return nats / tokens


def test_the_loss_at_step_0_does_not_rise(base, shared_dir, tmp_path):
    """A model that has learned some of its text reads domain text no worse per byte once extended."""
    old = load_tokenizer(base / "tokenizer.json")
    torch.manual_seed(0)
    source = tiny_model(init_std=0.02)
    optimizer = torch.optim.AdamW(source.parameters(), lr=3e-3)
    stream = torch.tensor(old.encode(TEXT + " ".join(finance_texts(shared_dir, 40))).ids)
    source.train()
    for step in range(120):
        starts = torch.randint(0, len(stream) - 33, (8,))
        batch = torch.stack([stream[s:s + 33] for s in starts])
        loss = F.cross_entropy(source(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    source.eval()
    texts = finance_texts(shared_dir, 60)
    config = TokenizerConfig(path=str(base / "tokenizer.json"), extend=ADDED)
    extend_tokenizer(config, iter(texts[:50]), tmp_path / "tokenizer.json", texts[50:])
    segmentations = new_token_segmentations(base / "tokenizer.json", tmp_path / "tokenizer.json")
    grown = Model(type(source.config)(**{**source.config.__dict__, "vocab_size": 340}), source.head_specs).eval()
    grow_vocabulary(grown, source, segmentations)
    before = _loss_per_byte(source, old, texts[50:])
    after = _loss_per_byte(grown, load_tokenizer(tmp_path / "tokenizer.json"), texts[50:])
    assert math.isfinite(after) and after < before * 1.1


def test_an_extended_run_resumes_with_its_own_tokenizer_and_vocabulary(base, shared_dir, tmp_path):
    out = tmp_path / "run"
    overrides = [f"init_from={base}", f"tokenizer.extend={ADDED}", f"out_dir={out}", CORPUS,
                 f"data.root={shared_dir / 'corpora'}", *FAST]
    assert train(resolve_recipe("finance-from-legal-tiny", [*overrides, "trainer.max_steps=2"])).steps == 2
    tokenizer = (out / "tokenizer.json").read_bytes()
    vocab_size = load_checkpoint(out).config.model.vocab_size
    config = recorded_config("finance-from-legal-tiny", ["resume=true", f"out_dir={out}", "trainer.max_steps=4"])
    assert not config.tokenizer.extends and Path(config.tokenizer.path) == out / "tokenizer.json"
    result = train(config)
    assert result.steps == 4
    assert (out / "tokenizer.json").read_bytes() == tokenizer
    assert load_checkpoint(out).config.model.vocab_size == vocab_size == 300 + ADDED


def test_the_export_gives_transformers_the_same_ids(extended, shared_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    out = run_export(ExportArgs(checkpoint=str(extended), out=str(tmp_path / "hf")))
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    ours = load_tokenizer(extended / "tokenizer.json")
    texts = finance_texts(shared_dir, 60)[50:]
    for text in texts:
        assert theirs(text, add_special_tokens=False)["input_ids"] == ours.encode(text, add_special_tokens=False).ids
    assert any(i >= 300 for text in texts for i in ours.encode(text).ids)  # the new tokens are in what is compared


def test_a_tokenizer_without_a_bpe_model_is_refused_before_anything_is_written(shared_dir, tmp_path):
    char = train_char(TokenizerConfig(kind="char", vocab_size=200), iter([TEXT]))
    char.save(str(tmp_path / "char.json"))
    run = write_run(tmp_path / "char-run", tmp_path / "char.json", tiny_model(vocab_size=64))
    out, cache = tmp_path / "run", tmp_path / "cache"
    done = subprocess.run(
        [sys.executable, "-m", "slmkit.cli", "train", "recipe=finance-from-legal-tiny", f"init_from={run}",
         "tokenizer.extend=8", f"out_dir={out}", CORPUS, f"data.root={shared_dir / 'corpora'}"],
        cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "SLMKIT_CACHE": str(cache)})
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert f"tokenizer.path={run / 'tokenizer.json'} is a WordLevel tokenizer: extend a (byte-level) BPE" in done.stderr
    assert not out.exists() and not cache.exists()


def test_a_run_that_trains_its_own_tokenizer_is_refused_an_extension(shared_dir):
    with pytest.raises(SlmkitError, match="this run trains its own tokenizer on the corpus"):
        resolve_recipe("legal-tiny", ["tokenizer.extend=8"])
