"""Recipes compose from groups, overrides use the YAML's dotted keys, and mistakes get one clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from slmkit.errors import SlmkitError
from slmkit.recipe import count_parameters, expand_sweep, list_recipes, recipe_names, resolve_recipe

SHIPPED = ["legal-125m", "legal-tiny", "shakespeare-char", "shakespeare-modern", "gpt2-124m"]


def test_shipped_recipes_resolve():
    assert set(SHIPPED) <= set(recipe_names())
    for name in SHIPPED:
        assert resolve_recipe(name).name == name


def test_every_shipped_recipe_resolves_with_its_data_group():
    # Without reading the run a fine-tuning recipe starts from (init_from), which a checkout does not have.
    for name in recipe_names():
        assert resolve_recipe(name, follow_init_from=False).name == name


def test_the_finance_tweets_corpus_is_the_sentiment_train_texts_and_never_the_scored_split(shared_dir):
    from data_prep.sources import resolve_source_files

    config = resolve_recipe("finance-tweets-encoder")
    [source] = config.data.sources
    [(path, _)] = resolve_source_files(source, shared_dir / "corpora")
    assert path.resolve() == (shared_dir / "eval" / "finance" / "twitter_sentiment" / "train.jsonl").resolve()
    assert source.text_field == "text"  # the tweet only, not its label
    scored = shared_dir / "eval" / "finance" / "twitter_sentiment" / "valid.jsonl"  # what fin_sentiment scores
    assert [(shared_dir / "corpora" / f).resolve() for f in config.data.decontaminate.eval_files] == [scored.resolve()]
    sentiment = resolve_recipe("finance-sentiment-tweets-encoder", follow_init_from=False)
    assert sentiment.init_from == "runs/finance-tweets-encoder/latest" and sentiment.objective.task == "fin_sentiment"
    assert resolve_recipe("biomedical-encoder-tiny-long").trainer.max_steps == 3 * resolve_recipe("biomedical-encoder-tiny").trainer.max_steps


def test_group_choice_and_dotted_override_compose():
    config = resolve_recipe("legal-tiny", ["trainer=deepspeed-z3", "trainer.max_steps=7", "model.n_layer=2"])
    assert config.trainer.strategy == "deepspeed" and config.trainer.zero_stage == 3
    # The recipe's own keys still apply on top of the chosen group, and the override on top of both.
    assert config.trainer.max_steps == 7
    assert config.trainer.micro_batch_size == resolve_recipe("legal-tiny").trainer.micro_batch_size
    assert config.model.n_layer == 2


def test_flagship_is_about_125m_parameters():
    params, exact = count_parameters(resolve_recipe("legal-125m"))
    assert exact and 115e6 < params < 135e6


def test_gpt2_recipe_has_gpt2_small_size():
    params, _ = count_parameters(resolve_recipe("gpt2-124m"))
    # GPT-2 small is 124.4M with its 50257 vocabulary; ours pads the vocabulary to 50304.
    assert params == 124_439_808 + (50304 - 50257) * 768


def test_shakespeare_char_matches_nanogpt_cpu_configuration():
    c = resolve_recipe("shakespeare-char")
    assert (c.model.n_layer, c.model.n_head, c.model.d_model, c.model.block_size) == (4, 4, 128, 64)
    assert (c.trainer.micro_batch_size, c.trainer.max_steps, c.model.dropout) == (12, 2000, 0.0)
    assert (c.optim.lr, c.optim.min_lr, c.optim.decay_steps) == (1e-3, 1e-4, 2000)
    assert (c.data.split, c.data.val_fraction) == ("tail", 0.1)


def test_shakespeare_modern_spends_the_replicas_budget():
    """Same data, split, tokens per step and steps as the replica: only the model's parts and the optimizer differ."""
    replica, modern = resolve_recipe("shakespeare-char"), resolve_recipe("shakespeare-modern")
    assert modern.data == replica.data and modern.tokenizer == replica.tokenizer
    assert (modern.trainer.micro_batch_size, modern.trainer.max_steps, modern.model.block_size) == (12, 2000, 64)
    assert (modern.model.n_layer, modern.model.d_model) == (replica.model.n_layer, replica.model.d_model)
    assert modern.optim.name == "muon" and modern.model.positions == "rope"


@pytest.mark.parametrize(
    "args, expected",
    [
        (["legal-tinyy"], "did you mean 'legal-tiny'"),
        (["legal-tiny", "model.n_layr=3"], "did you mean 'model.n_layer'"),
        (["legal-tiny", "model.n_layer=abc"], "model.n_layer"),
        (["legal-tiny", "model.ffn=swigl"], "did you mean 'swiglu'"),
        (["legal-tiny", "trainer=deepspeed-z4"], "choose one of: cpu, ddp"),
        (["legal-tiny", "trainer.precision=fp8"], "choose one of: fp32, bf16"),
        (["legal-tiny", "model.n_head=5"], "divisible"),
        (["legal-tiny", "trainer.max_steps"], "key=value"),
    ],
)
def test_mistakes_are_explained(args, expected):
    with pytest.raises(SlmkitError, match=expected.replace("(", r"\(")):
        resolve_recipe(args[0], args[1:])


def test_sweep_expands_comma_lists_into_every_combination():
    runs = list(expand_sweep(["optim.lr=1e-3,3e-4", "model.n_layer=2,4", "trainer.max_steps=5"]))
    assert len(runs) == 4
    assert ["optim.lr=0.001", "model.n_layer=2", "trainer.max_steps=5"] in runs


def test_recipe_listing_shows_parameter_counts_and_key_docs():
    text = list_recipes(show_keys=True)
    assert "legal-125m" in text and "124.7M" in text
    assert "trainer.zero_stage" in text and "ZeRO stage" in text


def test_text_values_are_taken_literally_not_as_yaml():
    from slmkit.config import build_config
    from slmkit.generate import GenerateArgs

    args = build_config(GenerateArgs, overrides=["checkpoint=runs/x", "prompt=ROMEO: [act 1]", "max_new_tokens=5"])
    assert args.prompt == "ROMEO: [act 1]" and args.max_new_tokens == 5


def test_key_listing_documents_list_items_and_takes_choices_from_registries():
    text = list_recipes(show_keys=True)
    assert "data.sources[].path (Optional[str], default None)" in text
    assert "optim.schedule (str, default 'cosine'): Learning-rate schedule by name; wsd is warmup-stable-decay. One of: constant, cosine, linear, wsd." in text


def test_the_committed_recipe_guide_is_generated_from_the_current_config():
    from slmkit.recipe import recipe_guide

    committed = (Path(__file__).resolve().parents[1] / "docs" / "recipe-guide.md").read_text(encoding="utf-8")
    assert committed == recipe_guide(), "docs/recipe-guide.md is stale: run `slmkit recipes --guide > docs/recipe-guide.md`"
