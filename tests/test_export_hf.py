"""transformers export: every exportable architecture matches slmkit in logits and greedy text; the rest is refused."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest
import torch

from slmkit.errors import SlmkitError
from slmkit.export import ExportArgs, run_export, targets
from slmkit.export.hf import hf_config, hf_state_dict
from slmkit.export.targets import select_target
from slmkit.decoding import Sampling, generate_ids
from slmkit.model import ModelConfig

from export_helpers import EOS, TEXT, tiny_model, train_tokenizer, write_run

transformers = pytest.importorskip("transformers")

EXTRAS = list(itertools.product([False, True], [4, 2], [None, 3], [False, True]))  # bias, kv heads, window, qk_norm


def _all_combinations():
    """(attention, positions, ffn, norm, tie, bias, n_kv_heads, window, qk_norm) for every combination, exportable or not."""
    for attention, positions, ffn, norm, tie in itertools.product(
        ["sdpa", "eager"], ["learned", "sinusoidal", "rope", "alibi", "none"], ["gelu", "swiglu", "relu2"], ["layernorm", "rmsnorm"], [True, False]
    ):
        for bias, kv, window, qk_norm in EXTRAS:
            yield dict(
                attention_kernel=attention, positions=positions, ffn=ffn, norm=norm, tie_embeddings=tie,
                bias=bias, n_kv_heads=kv, sliding_window=window, qk_norm=qk_norm,
            )


def _exportable(settings) -> bool:
    try:
        select_target(ModelConfig(vocab_size=320, block_size=32, n_layer=2, n_head=4, d_model=32, **settings))
        return True
    except SlmkitError:
        return False


EXPORTABLE = [s for s in _all_combinations() if _exportable(s)]
REFUSED = [s for s in _all_combinations() if not _exportable(s)]


def _target(s: dict) -> str:
    return select_target(ModelConfig(vocab_size=320, block_size=32, n_layer=2, n_head=4, d_model=32, **s)).name


# The default suite checks the first sdpa case of every (target class, positions, ffn, norm, tying) pattern;
# the full sweep over every exportable combination runs with `make test-slow`.
QUICK = list({(_target(s), s["positions"], s["ffn"], s["norm"], s["tie_embeddings"]): s
              for s in EXPORTABLE if s["attention_kernel"] == "sdpa"}.values())


def _id(s: dict) -> str:
    return "-".join(
        [s["attention_kernel"], s["positions"], s["ffn"], s["norm"], "tied" if s["tie_embeddings"] else "untied",
         "bias" if s["bias"] else "nobias", f"kv{s['n_kv_heads']}", f"win{s['sliding_window']}", "qk" if s["qk_norm"] else "noqk"]
    )


def test_every_position_ffn_norm_and_tying_choice_has_an_exportable_form():
    covered = {(s["positions"], s["ffn"], s["norm"], s["tie_embeddings"], s["attention_kernel"]) for s in EXPORTABLE}
    assert len(covered) == 48  # 12 (positions, ffn, norm) triples x tied/untied x sdpa/eager
    assert ("alibi", "swiglu", "rmsnorm", True, "sdpa") not in covered


def _transformers_twin(model, target):
    """The target's transformers class holding `model`'s exported tensors."""
    config = hf_config(model.config, target, {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0})
    hf = transformers.AutoModelForCausalLM.from_config(config).eval()
    hf.load_state_dict(hf_state_dict(model, target, config), strict=not model.config.tie_embeddings)
    return hf


@pytest.mark.parametrize(
    "settings", [pytest.param(s, marks=[] if s in QUICK else [pytest.mark.slow]) for s in EXPORTABLE], ids=_id
)
def test_transformers_model_matches_slmkit_logits_and_greedy_text(settings):
    model = tiny_model(**settings)
    hf = _transformers_twin(model, select_target(model.config))
    ids = torch.randint(1, 320, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() < 1e-4
        prompt = ids[:1, :5]
        ours = list(generate_ids(model, prompt[0].tolist(), 12, Sampling(temperature=0.0), eos_id=0))
        theirs = hf.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=0, pad_token_id=0)[0, 5:].tolist()
    assert ours == theirs


@pytest.mark.parametrize("settings", REFUSED[:: max(1, len(REFUSED) // 40)], ids=_id)
def test_unrepresentable_models_are_refused_naming_the_part(settings):
    config = ModelConfig(vocab_size=320, block_size=32, n_layer=2, n_head=4, d_model=32, **settings)
    with pytest.raises(SlmkitError, match="no stock transformers class represents this model exactly") as err:
        select_target(config)
    assert "=" in str(err.value).split("—", 1)[1]  # names at least one field=value it cannot represent


def test_refusal_names_alibi_for_a_llama_shaped_alibi_model():
    with pytest.raises(SlmkitError, match=r"positions=alibi \(LlamaForCausalLM supports positions in: rope\)"):
        select_target(ModelConfig(positions="alibi", ffn="swiglu", norm="rmsnorm"))


def test_mpt_export_matches_for_a_head_count_that_is_not_a_power_of_two():
    model = tiny_model(positions="alibi", ffn="gelu", norm="layernorm", n_head=6, d_model=48)
    hf = _transformers_twin(model, select_target(model.config))
    ids = torch.randint(0, 320, (1, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() < 1e-4


def test_a_target_row_added_in_a_test_is_selected_refused_and_exported_with_no_other_edit(monkeypatch):
    llama = targets.TARGETS["llama"]
    mha_llama = dataclasses.replace(llama, name="llama-mha", accepts=dataclasses.replace(llama.accepts, grouped_query=(False,)))
    rows = list(targets.TARGETS.values())
    monkeypatch.setattr(targets, "TARGETS", {})
    for row in [mha_llama, *rows]:  # first in the table, so tried first
        targets.register(row)

    model = tiny_model()
    assert select_target(model.config) is mha_llama
    gqa = ModelConfig(vocab_size=320, block_size=32, n_layer=2, n_head=4, d_model=32, n_kv_heads=2)
    assert targets.target_mismatches(gqa, mha_llama) == [
        "n_kv_heads=2 (LlamaForCausalLM has multi-head attention only: n_kv_heads must equal n_head=4)"
    ]
    assert select_target(gqa) is llama
    with pytest.raises(SlmkitError, match=r"LlamaForCausalLM: positions=alibi .* Exportable: LlamaForCausalLM \(rope, swiglu, "
                       r"rmsnorm, multi-head attention only, no sliding window, no qk-norm\); LlamaForCausalLM \(rope, swiglu"):
        select_target(ModelConfig(positions="alibi"))

    hf = _transformers_twin(model, mha_llama)
    ids = torch.randint(0, 320, (1, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() < 1e-4


def test_causal_false_is_refused():
    with pytest.raises(SlmkitError, match="causal=False"):
        select_target(ModelConfig(causal=False))


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.mark.parametrize(
    "settings",
    [
        dict(),  # Llama
        dict(positions="learned", ffn="gelu", norm="layernorm", bias=True),  # GPT-2
        dict(positions="alibi", ffn="gelu", norm="layernorm", tie_embeddings=False),  # MPT
        dict(ffn="relu2", norm="layernorm", sliding_window=4, n_kv_heads=2),  # Starcoder2
    ],
    ids=["llama", "gpt2", "mpt", "starcoder2"],
)
def test_exported_folder_loads_offline_with_auto_classes(tmp_path, tokenizer_path, settings):
    run = write_run(tmp_path / "run", tokenizer_path, tiny_model(**settings))
    (run / "eval").mkdir()
    (run / "eval" / "legalbench.json").write_text(json.dumps({"tasks": {"hearsay": {"accuracy": 0.625}}}))
    out = run_export(ExportArgs(checkpoint=str(run), out=str(tmp_path / "export")))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json", "README.md"} <= {
        p.name for p in out.iterdir()
    }
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    from tokenizers import Tokenizer

    text = TEXT[:120]
    assert tok(text)["input_ids"] == Tokenizer.from_file(str(tokenizer_path)).encode(text).ids
    assert tok.eos_token == EOS and hf.generation_config.eos_token_id == tok.eos_token_id
    card = (out / "README.md").read_text()
    assert "tiny-test" in card and "hearsay.accuracy | 0.625" in card and hf.config.architectures[0] in card


def test_export_refuses_a_non_empty_folder_unless_told_and_leaves_no_partial_folder(tmp_path, tokenizer_path):
    run = write_run(tmp_path / "run", tokenizer_path, tiny_model())
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SlmkitError, match="overwrite=true"):
        run_export(ExportArgs(checkpoint=str(run), out=str(out)))
    assert (out / "keep.txt").read_text() == "mine"

    refused = write_run(tmp_path / "run-alibi", tokenizer_path, tiny_model(positions="alibi"))
    with pytest.raises(SlmkitError, match="no stock transformers class"):
        run_export(ExportArgs(checkpoint=str(refused), out=str(tmp_path / "never")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "run", "run-alibi"]  # no half-written folder

    run_export(ExportArgs(checkpoint=str(run), out=str(out), overwrite=True))
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


# μP: an input multiplier, a readout multiplier and the 1/head_dim attention, with and without qk-norm; the readout is
# perturbed away from its zero init, so a missing fold would change the logits.
MUP = dict(parametrization="mup", mup_base_width=16, tie_embeddings=False, mup_input_multiplier=2.5,
           mup_output_multiplier=3.0)


@pytest.mark.parametrize("settings", [dict(MUP), dict(MUP, qk_norm=True, n_kv_heads=2),
                                      dict(MUP, positions="learned", ffn="gelu", norm="layernorm", bias=True)],
                         ids=["llama", "llama-qknorm-gqa", "gpt2"])
def test_a_mup_model_exports_with_every_multiplier_folded_into_the_weights(tmp_path, tokenizer_path, settings):
    model = tiny_model(**settings)
    with torch.no_grad():
        model.heads["lm"].proj.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    assert model.config.width_multiplier == 2
    run = write_run(tmp_path / "run", tokenizer_path, model)
    out = run_export(ExportArgs(checkpoint=str(run), out=str(tmp_path / "export")))  # verifies logits on the way
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True, dtype=torch.float32).eval()
    ids = torch.randint(1, 320, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() < 1e-4
