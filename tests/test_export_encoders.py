"""Encoders export onto stock transformers classes with exact parity — ModernBERT (pre-norm, RoPE with a local base,
GeGLU / SwiGLU, alternating local and global attention) and BERT (post-norm, learned positions) — every head, on a
right-padded batch; an embedding model also loads in sentence-transformers offline. What no stock class computes is
refused by name."""

from __future__ import annotations

import json

import pytest
import torch

from slmkit.checkpoint import save_inference_checkpoint
from slmkit.config import ObjectiveConfig, RunConfig
from slmkit.errors import SlmkitError
from slmkit.eval.embedding import embed_rows, text_rows
from slmkit.export import ExportArgs, run_export
from slmkit.model import HeadSpec

from export_helpers import tiny_model, train_tokenizer

transformers = pytest.importorskip("transformers")

MODERNBERT = dict(causal=False, embedding_norm=True, norm="layernorm", ffn="geglu", n_layer=4, sliding_window=3,
                  global_every=3, rope_theta=1000.0, local_rope_theta=100.0)
FAMILIES = {
    "modernbert": MODERNBERT,
    "modernbert-swiglu-bias-untied": {**MODERNBERT, "ffn": "swiglu", "bias": True, "tie_embeddings": False, "global_every": 0},
    "bert": dict(causal=False, embedding_norm=True, norm="layernorm", ffn="gelu", block="postnorm", positions="learned", bias=True),
    "bert-nobias-sinusoidal": dict(causal=False, embedding_norm=True, norm="layernorm", ffn="gelu", block="postnorm",
                                   positions="sinusoidal", tie_embeddings=False),
}
# The head each family's classes take: ModernBERT's pass their prediction head, BERT's classifier its pooler.
HEADS = {
    ("modernbert", "masked_lm"): HeadSpec("masked_lm"),
    ("modernbert", "first"): HeadSpec("sequence_classification", ("neg", "pos", "neutral"), "first", "prediction"),
    ("modernbert", "mean"): HeadSpec("sequence_classification", ("neg", "pos"), "mean", "prediction"),
    ("modernbert", "tokens"): HeadSpec("token_classification", ("O", "B-Disease", "I-Disease"), transform="prediction"),
    ("modernbert", "span"): HeadSpec("span", transform="prediction"),
    ("bert", "masked_lm"): HeadSpec("masked_lm"),
    ("bert", "first"): HeadSpec("sequence_classification", ("neg", "pos"), "first", "pooler"),
    ("bert", "tokens"): HeadSpec("token_classification", ("O", "B-Disease", "I-Disease")),
    ("bert", "span"): HeadSpec("span"),
}
OBJECTIVE_OF_HEAD = {"masked_lm": "masked_lm", "embedding": "contrastive", "sequence_classification": "classification",
                     "token_classification": "token_classification", "span": "span_qa"}
CASES = [(family, head) for family in FAMILIES for (kind, head) in HEADS if family.startswith(kind)]
QUICK = {("modernbert", "masked_lm"), ("modernbert", "mean"), ("modernbert", "tokens"), ("bert", "masked_lm"), ("bert", "first")}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


def write_run(folder, tokenizer_path, model):
    head = model.head_specs[0]
    config = RunConfig(name="encoder-test")
    config.model = model.config
    config.objective = ObjectiveConfig(name=OBJECTIVE_OF_HEAD[head.kind], labels=list(head.labels), pooling=head.pooling,
                                       head_transform=head.transform)
    save_inference_checkpoint(folder, model, config, tokenizer_path)
    return folder


def encoder(head: HeadSpec, **overrides):
    return tiny_model(head=head, **{"n_kv_heads": None, **overrides})


def outputs(hf, ids, mask):
    out = hf(ids, attention_mask=mask)
    return torch.stack([out.start_logits, out.end_logits], -1) if hasattr(out, "start_logits") else out.logits


@pytest.mark.parametrize("family,head", [pytest.param(f, h, marks=[] if (f, h) in QUICK else [pytest.mark.slow]) for f, h in CASES])
def test_an_encoder_head_exports_to_its_stock_class_with_parity(family, head, tokenizer_path, tmp_path):
    spec = HEADS[(family.split("-")[0], head)]
    model = encoder(spec, **FAMILIES[family])
    out = run_export(ExportArgs(checkpoint=str(write_run(tmp_path / "run", tokenizer_path, model)), out=str(tmp_path / "hf")))
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == family.split("-")[0]
    auto = {"masked_lm": "AutoModelForMaskedLM", "sequence_classification": "AutoModelForSequenceClassification",
            "token_classification": "AutoModelForTokenClassification", "span": "AutoModelForQuestionAnswering"}[spec.kind]
    hf = getattr(transformers, auto).from_pretrained(out, local_files_only=True).eval()
    # Right-padded: slmkit's padding mask and transformers' attention mask agree on every real token, across the
    # sliding-window layers too (12 tokens, a window of 3).
    ids = torch.randint(2, 320, (2, 12), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 8:] = False
    ids[1, 8:] = 0
    with torch.no_grad():
        ours, theirs = model(ids, padding_mask=mask), outputs(hf, ids, mask.long())
    if spec.kind == "sequence_classification":
        assert (ours - theirs).abs().max() < 1e-4
    else:
        assert (ours[mask] - theirs[mask]).abs().max() < 1e-4


def test_an_embedding_model_loads_in_sentence_transformers_offline_with_the_same_vectors(tokenizer_path, tmp_path, monkeypatch):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = encoder(HeadSpec("embedding", pooling="mean"), **MODERNBERT)
    out = run_export(ExportArgs(checkpoint=str(write_run(tmp_path / "run", tokenizer_path, model)), out=str(tmp_path / "st")))
    assert json.loads((out / "config.json").read_text())["architectures"] == ["ModernBertModel"]
    st = sentence_transformers.SentenceTransformer(str(out), local_files_only=True, device="cpu")
    texts = ["The court held that the statute applies.", "A party may appeal the judgment within thirty days."]
    theirs = st.encode(texts, convert_to_tensor=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    rows = text_rows(tokenizer.backend_tokenizer, texts, model.config.block_size, 0)
    assert tokenizer(texts[0])["input_ids"] == rows[0]  # the exported tokenizer puts the document token first, as slmkit
    torch.testing.assert_close(theirs, embed_rows(model, rows, 0, batch_size=2, pooling="mean"), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("overrides,head,message", [
    (dict(norm="rmsnorm"), HeadSpec("masked_lm"),
     r"norm=rmsnorm \(ModernBertForMaskedLM supports norm in: layernorm\).*Exportable: ModernBertForMaskedLM"),
    (dict(n_kv_heads=2), HeadSpec("masked_lm"), r"n_kv_heads=2 \(ModernBertForMaskedLM has multi-head attention only"),
    (dict(embedding_norm=False), HeadSpec("masked_lm"), r"embedding_norm=False \(ModernBertForMaskedLM always normalizes the embeddings\)"),
    (dict(), HeadSpec("token_classification", ("O", "B-X", "I-X")),
     r"ModernBertForTokenClassification reads the hidden states through a prediction head .* and this token_classification "
     r"head through nothing.*objective.head_transform=prediction"),
    (dict(block="postnorm", positions="learned", ffn="gelu"), HeadSpec("embedding", pooling="mean"),
     r"ModernBertModel: block=postnorm"),
])
def test_what_no_stock_encoder_represents_is_refused_by_name(overrides, head, message, tokenizer_path, tmp_path):
    model = encoder(head, **{**MODERNBERT, **overrides})
    run = write_run(tmp_path / "run", tokenizer_path, model)
    with pytest.raises(SlmkitError, match=message):
        run_export(ExportArgs(checkpoint=str(run), out=str(tmp_path / "hf")))
    assert not (tmp_path / "hf").exists()
