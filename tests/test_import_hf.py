"""Starting from a transformers model: every family and head of the export table imports from folders transformers
writes (small random configs), computes the same outputs within 1e-4 in fp32, and exports back to the same tensors;
what slmkit cannot represent exactly is refused by the config key or tensor that holds it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from slmkit.checkpoint.hf_import import describe_import, load_transformers_model
from slmkit.errors import SlmkitError
from slmkit.export import ExportArgs, run_export
from slmkit.model import HeadSpec

from export_helpers import tiny_model, train_tokenizer, write_run

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False, pad_token_id=0,
             bos_token_id=0, eos_token_id=0)
# Each family as its own config class writes it, at its own defaults except for size (and what a default slmkit cannot
# compute would otherwise refuse: StableLM's partial rotary factor, MPT without ALiBi).
FAMILIES = {
    "llama": ("Llama", dict(SMALL, attention_bias=True, mlp_bias=True)),
    "qwen2": ("Qwen2", SMALL),
    "qwen3": ("Qwen3", dict(SMALL, head_dim=8)),
    "mistral": ("Mistral", dict(SMALL, sliding_window=5)),
    "smollm3": ("SmolLM3", dict(SMALL, tie_word_embeddings=True)),
    "stablelm": ("StableLm", dict(SMALL, partial_rotary_factor=1.0, qk_layernorm=True)),
    "starcoder2": ("Starcoder2", dict(SMALL, sliding_window=6)),
    "gpt2": ("GPT2", dict(vocab_size=320, n_embd=32, n_layer=2, n_head=4, n_positions=64, pad_token_id=0)),
    "mpt": ("Mpt", dict(vocab_size=320, d_model=32, n_heads=4, n_layers=2, max_seq_len=64, attn_config={"alibi": True},
                        pad_token_id=0)),
    "modernbert": ("ModernBert", dict(vocab_size=320, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                                      num_attention_heads=4, max_position_embeddings=64, local_attention=6,
                                      global_attn_every_n_layers=3, pad_token_id=0)),
    "bert": ("Bert", dict(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          max_position_embeddings=64, type_vocab_size=2, pad_token_id=0)),
}
ENCODERS = {"modernbert", "bert"}
LM_CLASS = {"gpt2": "GPT2LMHeadModel"}
NO_QA = {"stablelm", "starcoder2"}  # transformers has no question-answering class for them
LABELS = {"id2label": {0: "neg", 1: "pos", 2: "neutral"}, "label2id": {"neg": 0, "pos": 1, "neutral": 2}}
HEADS = ["lm", "sequence_classification", "token_classification", "span"]
CASES = [(f, h) for f in FAMILIES for h in HEADS if not (h == "span" and f in NO_QA)]
QUICK = {(f, "lm") for f in FAMILIES} | {("llama", h) for h in HEADS} | {("bert", h) for h in HEADS} | {("gpt2", "span")}


def class_name(family: str, head: str) -> str:
    prefix = FAMILIES[family][0]
    if head == "lm":
        return "ModernBertForMaskedLM" if family == "modernbert" else "BertForMaskedLM" if family == "bert" \
            else LM_CLASS.get(family, f"{prefix}ForCausalLM")
    return prefix + {"sequence_classification": "ForSequenceClassification", "token_classification": "ForTokenClassification",
                     "span": "ForQuestionAnswering"}[head]


def write_transformers_folder(folder: Path, family: str, head: str, tokenizer_path: Path, **changes) -> Path:
    """A random model of the family's class, saved by transformers with a tokenizer; norms and the biases slmkit has
    perturbed so that a mis-mapped one shows."""
    config = transformers.AutoConfig.for_model(family, **{**FAMILIES[family][1], **changes},
                                               **(LABELS if head.endswith("classification") else {}))
    torch.manual_seed(0)
    model = getattr(transformers, class_name(family, head))(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            representable_bias = name.endswith("bias") and family != "stablelm" and not name.startswith(("classifier", "score"))
            shared_norm = ".norms." in name  # StableLM's per-head qk-norms: slmkit has one for all heads
            if ("norm" in name.lower() and name.endswith("weight") and not shared_norm) or representable_bias:
                p.add_(torch.randn_like(p) * 0.2)
    model.save_pretrained(folder)
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_path), eos_token="<|endoftext|>")
    tokenizer.save_pretrained(folder)
    return folder


def outputs(hf, ids):
    out = hf(ids)
    return torch.stack([out.start_logits, out.end_logits], -1) if hasattr(out, "start_logits") else out.logits


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.mark.parametrize("family,head", [pytest.param(f, h, marks=[] if (f, h) in QUICK else [pytest.mark.slow]) for f, h in CASES])
def test_an_imported_model_computes_what_transformers_computes(family, head, tokenizer_path, tmp_path):
    folder = write_transformers_folder(tmp_path / "hf", family, head, tokenizer_path)
    model, imported = load_transformers_model(str(folder))
    assert imported.model_class == class_name(family, head)
    hf = getattr(transformers, class_name(family, head)).from_pretrained(folder, local_files_only=True).eval()
    ids = torch.randint(1, 320, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (model(ids) - outputs(hf, ids)).abs().max().item()
    assert diff < 1e-4
    if head.endswith("classification"):
        assert model.head_specs[0].labels == ("neg", "pos", "neutral")


# HF -> slmkit -> HF: every tensor comes back unchanged, except where the family's row documents another form that
# computes the same (Qwen2 exports as Llama with zero biases; BERT's segment-0 row is folded into its positions).
SAME_TENSORS = [f for f in FAMILIES if f not in ("qwen2", "bert")]


@pytest.mark.parametrize("family", SAME_TENSORS)
def test_a_transformers_folder_exports_back_to_the_same_tensors(family, tokenizer_path, tmp_path):
    folder = write_transformers_folder(tmp_path / "hf", family, "lm", tokenizer_path)
    model, _ = load_transformers_model(str(folder))
    run = write_run(tmp_path / "run", folder / "tokenizer.json", model)
    out = run_export(ExportArgs(checkpoint=str(run), out=str(tmp_path / "back")))
    original, back = load_file(str(folder / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(original) <= set(back)
    for name, tensor in original.items():
        assert torch.equal(tensor, back[name]), name
    for name in set(back) - set(original):  # what transformers did not save: biases it adds (zero), tied copies
        assert not back[name].any() or any(torch.equal(back[name], t) for t in original.values()), name
    # A Llama-shaped SmolLM3 (RoPE on every layer, no window) ships as Llama: the most widely supported class.
    assert json.loads((out / "config.json").read_text())["model_type"] == {"smollm3": "llama"}.get(family, family)


@pytest.mark.parametrize("family", ["qwen2", "bert"])
def test_a_folder_exported_in_another_form_computes_the_same(family, tokenizer_path, tmp_path):
    folder = write_transformers_folder(tmp_path / "hf", family, "lm", tokenizer_path)
    model, _ = load_transformers_model(str(folder))
    out = run_export(ExportArgs(checkpoint=str(write_run(tmp_path / "run", folder / "tokenizer.json", model)),
                                out=str(tmp_path / "back")))
    auto = transformers.AutoModelForMaskedLM if family == "bert" else transformers.AutoModelForCausalLM
    ids = torch.randint(1, 320, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        original = outputs(getattr(transformers, class_name(family, "lm")).from_pretrained(folder).eval(), ids)
        back = outputs(auto.from_pretrained(out, local_files_only=True).eval(), ids)
    assert (original - back).abs().max() < 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_an_slmkit_export_imports_back_to_the_same_model(family, tokenizer_path, tmp_path):
    folder = write_transformers_folder(tmp_path / "hf", family, "lm", tokenizer_path)
    first, _ = load_transformers_model(str(folder))
    out = run_export(ExportArgs(checkpoint=str(write_run(tmp_path / "run", folder / "tokenizer.json", first)),
                                out=str(tmp_path / "export")))
    second, _ = load_transformers_model(str(out))
    assert second.config == first.config
    ours, again = first.state_dict(), second.state_dict()
    assert all(torch.equal(ours[k], again[k]) for k in ours)


def test_a_token_classifier_keeps_its_tag_decoding_through_export_and_import(tokenizer_path, tmp_path):
    """objective.decoding travels in config.json (slmkit_tag_decoding): the re-imported head decodes as the exported
    one did; a folder from elsewhere (no key) reads argmax; a decoding slmkit lacks is refused by name."""
    spec = HeadSpec("token_classification", ("O", "B-Disease", "I-Disease"), decoding="bio")
    run = write_run(tmp_path / "run", tokenizer_path, tiny_model(head=spec, n_kv_heads=2))
    out = run_export(ExportArgs(checkpoint=str(run), out=str(tmp_path / "hf")))
    config = json.loads((out / "config.json").read_text())
    assert config["slmkit_tag_decoding"] == "bio"
    model, _ = load_transformers_model(str(out))
    assert model.head_specs[0].decoding == "bio"
    config.pop("slmkit_tag_decoding")
    (out / "config.json").write_text(json.dumps(config))
    assert load_transformers_model(str(out))[0].head_specs[0].decoding == "argmax"
    (out / "config.json").write_text(json.dumps({**config, "slmkit_tag_decoding": "semi-markov"}))
    with pytest.raises(SlmkitError, match="names slmkit_tag_decoding='semi-markov', which slmkit cannot use .*delete that key"):
        load_transformers_model(str(out))


def test_a_crf_token_classifier_keeps_its_learned_transitions_through_export_and_import(tokenizer_path, tmp_path):
    """The crf decoding's transitions travel in config.json (slmkit_tag_transitions) beside the class's weights, which
    hold the per-token scores: the re-imported head has them bit for bit; a folder whose entry is damaged is refused."""
    spec = HeadSpec("token_classification", ("O", "B-Disease", "I-Disease"), decoding="crf")
    model = tiny_model(head=spec, n_kv_heads=2)
    crf = model.heads["token_classification"].crf
    with torch.no_grad():
        for weight in (crf.start, crf.transitions, crf.end):
            weight.copy_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(weight.numel())))
    out = run_export(ExportArgs(checkpoint=str(write_run(tmp_path / "run", tokenizer_path, model)), out=str(tmp_path / "hf")))
    config = json.loads((out / "config.json").read_text())
    assert config["slmkit_tag_decoding"] == "crf" and set(config["slmkit_tag_transitions"]) == {"start", "transitions", "end"}
    back, _ = load_transformers_model(str(out))
    assert back.head_specs[0].decoding == "crf"
    for name in ("start", "transitions", "end"):
        assert torch.equal(getattr(back.heads["token_classification"].crf, name), getattr(crf, name)), name
    config["slmkit_tag_transitions"]["transitions"] = [[0.0, 1.0]]
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(SlmkitError, match="names the crf decoding, but its slmkit_tag_transitions is not the CRF of a 3-label head"):
        load_transformers_model(str(out))
