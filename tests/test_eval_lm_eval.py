"""lm-evaluation-harness on slmkit checkpoints: the adapter's three methods, and the same accuracy as slmkit's harness.

The lm-eval tasks are built from local JSONL files in a temporary folder: no Hub access.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from slmkit.eval import evaluate  # noqa: E402
from slmkit.eval.decode import greedy_until  # noqa: E402
from slmkit.eval.lm_eval_adapter import SlmkitLM  # noqa: E402
from slmkit.eval.loglikelihood import Scorer  # noqa: E402
from slmkit.eval.records import read_records  # noqa: E402
from test_eval_fixtures import one_torch_thread, tiny_loaded, tiny_run  # noqa: E402,F401


@pytest.fixture(autouse=True)
def offline_datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))


def sample_rows(path: Path, every: int, count: int) -> list[dict]:
    return read_records(str(path), "sample")[::every][:count]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def lm_eval_scores(model, tokenizer, task: dict) -> dict[str, float]:
    results = simple_evaluate(
        model=SlmkitLM(model=model, tokenizer=tokenizer, batch_size=8), tasks=[task], bootstrap_iters=0,
        task_manager=TaskManager(include_defaults=False),  # indexing lm-eval's thousands of built-in tasks takes long
    )["results"][task["task"]]
    return {"acc": results["acc,none"], "acc_norm": results["acc_norm,none"]}


def test_same_accuracy_as_lm_eval_on_a_classification_task(tiny_loaded, shared_dir, tmp_path):
    model, tokenizer = tiny_loaded
    data = write_jsonl(tmp_path / "sentiment.jsonl", sample_rows(shared_dir / "eval/finance/twitter_sentiment/valid.jsonl", 37, 48))
    (tmp_path / "sentiment.yaml").write_text(
        f'type: classification\ndata: {data}\nprompt: "Headline: {{{{text}}}}\\nSentiment:"\nlabel: "{{{{label}}}}"\n'
        'labels: {"0": negative, "1": positive, "2": neutral}\n'
    )
    ours = evaluate(model, tokenizer, [str(tmp_path / "sentiment.yaml")], batch_size=8)["sentiment"]
    theirs = lm_eval_scores(model, tokenizer, {
        "task": "slmkit_sentiment", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "Headline: {{text}}\nSentiment:",
        "doc_to_choice": ["negative", "positive", "neutral"], "doc_to_target": "{{label}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
    })
    assert ours == pytest.approx(theirs, abs=1e-12)


def test_same_accuracy_as_lm_eval_on_multiple_choice_with_long_choices(tiny_loaded, shared_dir, tmp_path):
    model, tokenizer = tiny_loaded
    rows = sample_rows(shared_dir / "eval/biomedical/medmcqa/medmcqa_dev_singleanswer.jsonl", 20, 200)
    # The test model's window is 64 tokens, and continuations are never cut: keep questions whose options fit.
    rows = [r for r in rows if max(len(o) for o in r["options"].values()) <= 60][:40]
    data = write_jsonl(tmp_path / "medmcqa.jsonl", rows)
    (tmp_path / "medmcqa.yaml").write_text(
        f'type: multiple_choice\ndata: {data}\nprompt: "Question: {{{{question}}}}\\nAnswer:"\n'
        'choices_field: options\nchoice_labels: [A, B, C, D]\nanswer: "{{answer_idx}}"\n'
    )
    ours = evaluate(model, tokenizer, [str(tmp_path / "medmcqa.yaml")], batch_size=8)["medmcqa"]
    theirs = lm_eval_scores(model, tokenizer, {
        "task": "slmkit_medmcqa", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_choice": "{{[options.A, options.B, options.C, options.D]}}",
        "doc_to_target": "{{['A', 'B', 'C', 'D'].index(answer_idx)}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
    })
    assert ours == pytest.approx(theirs, abs=1e-12)


def test_adapter_rolling_and_generation_match_slmkit(tiny_loaded):
    model, tokenizer = tiny_loaded
    lm = SlmkitLM(model=model, tokenizer=tokenizer, batch_size="auto")
    text = "The Council shall hold a public hearing on the proposed budget before it is adopted. " * 6
    rolling = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    scorer = Scorer(model, tokenizer)
    assert rolling[0] == pytest.approx(scorer.rolling([text], stride=scorer.window)[0].logprob, abs=1e-6)
    generated = lm.generate_until([Instance("generate_until", {}, ("The Mayor shall", {"until": ["."], "max_gen_toks": 12}), 0)])
    assert generated == [greedy_until(model, tokenizer, "The Mayor shall", ["."], 12)]
    (logprob, greedy), = lm.loglikelihood([Instance("loglikelihood", {}, ("The Mayor", " shall"), 0)])
    assert logprob < 0 and isinstance(greedy, bool)


def test_adapter_loads_a_checkpoint_by_path(tiny_run):
    lm = SlmkitLM.create_from_arg_string(f"checkpoint={tiny_run}", {"batch_size": 4, "device": "cpu"})
    assert lm.scorer.batch_size == 4 and lm.scorer.window == 64
