"""The harness end to end on a small trained checkpoint: reports, baselines, compare, generation, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmkit.errors import SlmkitError
from slmkit.eval import EvalArgs, compare_runs, evaluate, run_eval
from slmkit.decoding import cut_at_stop
from slmkit.eval.decode import greedy_until
from test_eval_fixtures import legal_texts, one_torch_thread, tiny_loaded, tiny_run, train_tokenizer  # noqa: F401


@pytest.fixture(autouse=True)
def shared_env(shared_dir, monkeypatch):
    monkeypatch.setenv("SLMKIT_SHARED", str(shared_dir))


def test_run_eval_writes_json_and_markdown_with_baselines(tiny_run, tmp_path):
    out = tmp_path / "report"
    payload = run_eval(EvalArgs(checkpoint=str(tiny_run), tasks=["legal_heldout", "legalbench/abercrombie"], limit=6, out=str(out)))
    saved = json.loads((out / "results.json").read_text())
    assert saved["results"] == payload["results"]
    heldout, abercrombie = saved["results"]["legal_heldout"], saved["results"]["legalbench/abercrombie"]
    assert heldout["n"] == 6 and abercrombie["n"] == 6
    assert set(heldout["metrics"]) == {"bits_per_byte", "loss", "perplexity"}
    assert heldout["metrics"]["bits_per_byte"]["stderr"] > 0
    assert abercrombie["baselines"]["chance"]["value"] == pytest.approx(0.2)
    table = (out / "results.md").read_text()
    assert "| legalbench/abercrombie | acc |" in table and "| legalbench/abercrombie | baseline: majority |" in table


def test_a_trained_model_beats_guessing_on_held_out_legal_text(tiny_run, tmp_path):
    # 120 steps on D.C. Code sections, scored on the Federal Rules it never saw.
    result = run_eval(EvalArgs(checkpoint=str(tiny_run), tasks=["legal_heldout"], limit=8, out=str(tmp_path)))["results"]["legal_heldout"]
    assert result["metrics"]["bits_per_byte"]["value"] < 0.8 * result["baselines"]["uniform"]["value"]
    assert result["metrics"]["perplexity"]["value"] == pytest.approx(2.718281828 ** result["metrics"]["loss"]["value"], rel=1e-9)


def test_without_tasks_the_recipe_eval_tasks_run(tiny_run, tmp_path):
    payload = run_eval(EvalArgs(checkpoint=str(tiny_run), out=str(tmp_path)))  # the recipe names legal_heldout
    assert list(payload["results"]) == ["legal_heldout"]
    assert (Path(tiny_run) / "eval").exists() is False  # out= was honoured


def test_compare_puts_runs_side_by_side(tiny_run, tmp_path):
    for seed in (1, 2):
        run_eval(EvalArgs(checkpoint=str(tiny_run), tasks=["legal_heldout", "fin_sentiment"], limit=5, seed=seed, out=str(tmp_path / f"s{seed}")))
    table = compare_runs([str(tmp_path / "s1"), str(tmp_path / "s2")])
    header, _, *rows = table.strip().splitlines()
    assert header == f"| task | metric | {tmp_path / 's1'} | {tmp_path / 's2'} |"
    assert any(r.startswith("| fin_sentiment | acc |") and " ± " in r for r in rows)
    with pytest.raises(SlmkitError, match="at least two runs"):
        compare_runs([str(tmp_path / "s1")])


def test_generation_scores_exact_match_and_containment(tiny_loaded, tmp_path):
    model, tokenizer = tiny_loaded
    prompts = ["The Council shall", "Section 2 of this act", "The Mayor may", "No person shall"]
    produced = [greedy_until(model, tokenizer, p, ["\n"], 8) for p in prompts]
    # Two gold answers are what the model says, two are not: exact match must come out at exactly one half.
    rows = [{"p": p, "gold": g if i % 2 == 0 else "zzz unlikely"} for i, (p, g) in enumerate(zip(prompts, produced))]
    (tmp_path / "gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "gen.yaml").write_text('type: generation\ndata: gen.jsonl\nprompt: "{{p}}"\ntarget: "{{gold}}"\nmax_new_tokens: 8\ntarget_delimiter: ""\n')
    scores = evaluate(model, tokenizer, [str(tmp_path / "gen.yaml")])
    assert scores["gen"]["exact_match"] == 0.5
    assert scores["gen"]["contains"] == sum(bool(g.strip()) for g in produced[::2]) / 4


def test_greedy_decoding_stops_at_the_stop_sequence(tiny_loaded):
    model, tokenizer = tiny_loaded
    free = greedy_until(model, tokenizer, "The Council shall", [], 24)
    assert len(free) > 0
    stop = free.strip().split()[0]
    cut = greedy_until(model, tokenizer, "The Council shall", [stop], 24)
    assert stop not in cut and free.startswith(cut)
    assert cut_at_stop("a.b\nc", ["\n", "."]) == ("a", True)


def test_evaluate_returns_metric_values_and_restores_training_mode(tiny_loaded):
    model, tokenizer = tiny_loaded
    model.train()
    try:
        scores = evaluate(model, tokenizer, ["legalbench/hearsay", "legal_heldout"], limit=4, batch_size=4)
    finally:
        model.eval()
    assert set(scores["legalbench/hearsay"]) == {"acc", "acc_norm"} and 0 <= scores["legalbench/hearsay"]["acc"] <= 1
    assert scores["legal_heldout"]["bits_per_byte"] > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (dict(checkpoint="/nonexistent/run"), "checkpoint not found"),
        (dict(checkpoint=None), "pass checkpoint=PATH"),
        (dict(tasks=["legalbench/no_such_task"]), "unknown task legalbench/no_such_task"),
        (dict(tasks=["wikitext"]), "did you mean 'wikitext2'"),
        (dict(tokenizer="/nonexistent/tokenizer.json"), "does not exist"),
    ],
)
def test_bad_input_gives_one_clear_message(tiny_run, args, message):
    with pytest.raises(SlmkitError, match=message):
        run_eval(EvalArgs(**{"checkpoint": str(tiny_run), "tasks": ["legal_heldout"], **args}))


def test_a_tokenizer_that_does_not_match_the_checkpoint_is_refused(tiny_run, shared_dir, tmp_path):
    other = train_tokenizer(legal_texts(shared_dir, 200), vocab_size=1000)
    other.save(str(tmp_path / "other.json"))
    with pytest.raises(SlmkitError, match="does not belong to the checkpoint"):
        run_eval(EvalArgs(checkpoint=str(tiny_run), tasks=["legal_heldout"], tokenizer=str(tmp_path / "other.json")))
