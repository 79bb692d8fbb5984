"""Fine-tuned heads export onto transformers' task classes with exact parity, label names and all; or are refused."""

from __future__ import annotations

import json

import pytest
import torch

from slmkit.errors import SlmkitError
from slmkit.export import ExportArgs, run_export
from slmkit.model import HeadSpec

from export_helpers import tiny_model, train_tokenizer, write_run

transformers = pytest.importorskip("transformers")

FAMILIES = {
    "llama": dict(),
    "mistral": dict(sliding_window=6),
    "qwen3": dict(qk_norm=True),
    "smollm3": dict(positions="none", bias=True),
    "stablelm": dict(norm="layernorm"),
    "starcoder2": dict(ffn="gelu", norm="layernorm", bias=True),
    "gpt2": dict(positions="learned", ffn="gelu", norm="layernorm", bias=True, n_kv_heads=4),
    "mpt": dict(positions="alibi", ffn="gelu", norm="layernorm", n_kv_heads=4),
}
HEADS = {
    "sequence_classification": (HeadSpec("sequence_classification", ("bearish", "bullish", "neutral")), "AutoModelForSequenceClassification"),
    "token_classification": (HeadSpec("token_classification", ("O", "B-Disease", "I-Disease")), "AutoModelForTokenClassification"),
    "span": (HeadSpec("span"), "AutoModelForQuestionAnswering"),
}
NO_QA = {"stablelm", "starcoder2"}  # transformers has no question-answering class for them
CASES = [(family, head) for family in FAMILIES for head in HEADS if not (head == "span" and family in NO_QA)]
QUICK = {("llama", h) for h in HEADS} | {("gpt2", h) for h in HEADS}


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


def outputs(hf, ids, mask=None):
    out = hf(ids, attention_mask=mask)
    return torch.stack([out.start_logits, out.end_logits], -1) if hasattr(out, "start_logits") else out.logits


@pytest.mark.parametrize("family,head", [pytest.param(f, h, marks=[] if (f, h) in QUICK else [pytest.mark.slow]) for f, h in CASES])
def test_a_fine_tuned_head_exports_to_its_stock_class_with_parity(family, head, tokenizer_path, tmp_path):
    spec, auto = HEADS[head]
    model = tiny_model(head=spec, **{"n_kv_heads": 2, **FAMILIES[family]})
    run = write_run(tmp_path / "run", tokenizer_path, model)
    out = run_export(ExportArgs(checkpoint=str(run), out=str(tmp_path / "hf")))
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == family
    if spec.labels:
        assert config["id2label"] == {str(i): name for i, name in enumerate(spec.labels)}
    hf = getattr(transformers, auto).from_pretrained(out, local_files_only=True).eval()
    # A right-padded batch: slmkit's padding mask and transformers' attention mask must agree on every real token.
    ids = torch.randint(1, 320, (2, 12), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 8:] = False
    ids[1, 8:] = 0  # the pad token (EOS)
    with torch.no_grad():
        ours, theirs = model(ids, padding_mask=mask), outputs(hf, ids, mask.long())
    if head == "sequence_classification":
        assert (ours - theirs).abs().max() < 1e-4
    else:
        assert (ours[mask] - theirs[mask]).abs().max() < 1e-4


def test_a_classifier_that_pools_what_no_stock_class_computes_is_refused(tokenizer_path, tmp_path):
    model = tiny_model(head=HeadSpec("sequence_classification", ("no", "yes"), pooling="mean"))
    run = write_run(tmp_path / "run", tokenizer_path, model)
    with pytest.raises(SlmkitError, match="pools last and this classifier pools 'mean'.*objective.pooling=last"):
        run_export(ExportArgs(checkpoint=str(run), out=str(tmp_path / "hf")))
    assert not (tmp_path / "hf").exists()


def test_a_span_head_of_a_family_without_a_qa_class_is_refused_naming_the_alternatives(tokenizer_path, tmp_path):
    model = tiny_model(head=HeadSpec("span"), norm="layernorm")  # StableLM-shaped: no StableLmForQuestionAnswering
    run = write_run(tmp_path / "run", tokenizer_path, model)
    with pytest.raises(SlmkitError, match="norm=layernorm.*LlamaForQuestionAnswering supports norm in: rmsnorm"):
        run_export(ExportArgs(checkpoint=str(run), out=str(tmp_path / "hf")))


def test_gguf_and_heldout_refuse_a_model_without_a_language_model_head(tokenizer_path, tmp_path):
    model = tiny_model(head=HeadSpec("sequence_classification", ("no", "yes")))
    run = write_run(tmp_path / "run", tokenizer_path, model)
    with pytest.raises(SlmkitError, match="GGUF holds language models"):
        run_export(ExportArgs(checkpoint=str(run), out=str(tmp_path / "gguf"), format="gguf"))
    with pytest.raises(SlmkitError, match="heldout= measures the bits per byte of a language model"):
        run_export(ExportArgs(checkpoint=str(run), out=str(tmp_path / "hf"), heldout=str(tokenizer_path)))
