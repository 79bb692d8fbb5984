"""Task files and names: YAML parsing, path resolution, built-in tasks, LegalBench in both layouts, few-shot draws."""

from __future__ import annotations

from pathlib import Path

import pytest

from slmkit.errors import SlmkitError
from slmkit.eval import builtin_names, load_task_file, resolve_task
from slmkit.eval.classification import verbalizations
from slmkit.eval.legalbench import legalbench_members
from slmkit.eval.prompting import ContextBuilder
from slmkit.eval.records import read_records, subset
from slmkit.eval.task import RunSettings
from slmkit.eval.templates import render


@pytest.fixture(autouse=True)
def shared_env(shared_dir, monkeypatch):
    monkeypatch.setenv("SLMKIT_SHARED", str(shared_dir))


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_every_builtin_task_resolves_to_its_type():
    kinds = {n: resolve_task(n).type for n in builtin_names() if "/" not in n}
    assert kinds == {
        "fin_sentiment": "classification", "legal_heldout": "perplexity", "medmcqa": "multiple_choice",
        "pubmedqa": "classification", "wikitext2": "perplexity", "ncbi_disease": "token_classification",
        "pubmedqa_answer": "generation", "tatqa_text_spans": "span_qa",
        "pubmedqa_retrieval": "retrieval", "tatqa_retrieval": "retrieval",
    }
    assert verbalizations(resolve_task("pubmedqa")) == {"yes": "yes", "no": "no", "maybe": "maybe"}


def test_wikitext_splits_into_articles():
    spec = resolve_task("wikitext2")
    articles = read_records(spec.options.data, spec.name, split_documents=spec.options.split_documents)
    assert len(articles) == 62 and articles[0]["text"].lstrip().startswith("= Robert")


def test_unknown_task_suggests_the_closest_name():
    with pytest.raises(SlmkitError, match="did you mean 'wikitext2'"):
        resolve_task("wikitext")


def test_builtin_task_without_slmkit_shared_names_the_variable(monkeypatch):
    monkeypatch.delenv("SLMKIT_SHARED")
    with pytest.raises(SlmkitError, match=r"\$SLMKIT_SHARED is not set"):
        resolve_task("pubmedqa")


def test_user_task_file_resolves_data_relative_to_itself(tmp_path):
    write(tmp_path / "rows.jsonl", '{"q": "Is a tort a wrong?", "a": "Yes"}\n')
    spec = load_task_file(write(tmp_path / "mine.yaml", 'type: classification\ndata: rows.jsonl\nprompt: "Q: {{q}}\\nA:"\nlabel: "{{a}}"\nlabels: ["Yes", "No"]\n'))
    assert spec.name == "mine" and Path(spec.options.data) == tmp_path / "rows.jsonl"
    assert render(spec.options.prompt, read_records(spec.options.data, spec.name)[0], spec.name) == "Q: Is a tort a wrong?\nA:"


@pytest.mark.parametrize(
    "text, message",
    [
        ("type: classification\n  data: [unclosed", "not valid YAML"),
        ("- just\n- a list\n", "must be a YAML mapping"),
        ("data: rows.jsonl\n", "has no `type:`"),
        ("type: multiple_choise\ndata: rows.jsonl\n", "did you mean 'multiple_choice'"),
        ('type: generation\ndata: rows.jsonl\nprompt: "x"\ntarget: "y"\nmax_new_token: 5\n', "unknown key max_new_token"),
        ('type: generation\ndata: rows.jsonl\ntarget: "{{a}}"\n', "`prompt` is required"),
        ('type: perplexity\ndata: ${NO_SUCH_SLMKIT_VAR}/x.txt\n', r"\$NO_SUCH_SLMKIT_VAR is not set"),
    ],
)
def test_malformed_task_files_give_one_clear_message(tmp_path, text, message):
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(SlmkitError, match=message):
        resolve_task(str(path))


def test_legalbench_mini_tasks_carry_prompt_and_label_set():
    abercrombie = resolve_task("legalbench/abercrombie")
    assert abercrombie.type == "classification" and abercrombie.options.prompt.endswith("What is the type of mark?\nA:")
    assert sorted(verbalizations(abercrombie)) == ["arbitrary", "descriptive", "fanciful", "generic", "suggestive"]
    # MAUD lists ten options in its prompt though its ten test rows use only some of them.
    assert list(verbalizations(resolve_task("legalbench/maud_cor_standard_(superior_offer)"))) == list("ABCDEFGHIJ")
    assert list(verbalizations(resolve_task("legalbench/scalr"))) == ["0", "1", "2", "3", "4"]
    assert resolve_task("legalbench/sara_numeric").type == "generation"
    assert resolve_task("legalbench/ssla_plaintiff").type == "generation"


def test_legalbench_2023_layout_reads_label_field_and_ignores_case():
    spec = resolve_task("legalbench_2023/cuad_anti-assignment")
    assert spec.type == "classification" and spec.options.label == "{{label}}"
    assert sorted(verbalizations(spec)) == ["No", "Yes"]
    assert Path(spec.options.data).parent.name == "CUAD_Anti-Assignment"
    assert resolve_task("legalbench_2023/unfair_tos").options.data.endswith("data.jsonl")


def test_unknown_legalbench_task_suggests_a_folder():
    with pytest.raises(SlmkitError, match="did you mean 'abercrombie'"):
        resolve_task("legalbench/abercrombi")
    with pytest.raises(SlmkitError, match="family of tasks"):
        resolve_task("legalbench")


def test_every_legalbench_task_renders_every_test_row(shared_dir):
    for family, layout in [("legalbench", "legalbench_mini"), ("legalbench_2023", "legalbench_2023")]:
        members = legalbench_members(shared_dir / "eval" / "legal" / layout / "tasks")
        assert len(members) == {"legalbench": 129, "legalbench_2023": 55}[family]
        for member in members:
            spec = resolve_task(f"{family}/{member}")
            labels = verbalizations(spec) if spec.type == "classification" else None
            for record in subset(read_records(spec.options.data, spec.name), 50, seed=0):
                assert render(spec.options.prompt, record, spec.name)
                if labels is not None:
                    assert render(spec.options.label, record, spec.name).strip() in labels, spec.name


def test_fewshot_draws_are_seeded_per_example():
    spec = resolve_task("fin_sentiment")
    record = {"text": "$XYZ beats estimates", "label": 1}

    def context(seed: int, index: int) -> str:
        builder = ContextBuilder(spec, RunSettings(num_fewshot=3, seed=seed), answer=lambda r: str(r["label"]))
        return builder.context(record, index)

    assert context(1, 0) == context(1, 0)
    assert context(1, 0) != context(2, 0) and context(1, 0) != context(1, 1)
    assert context(1, 0).count("Headline:") == 4 and context(1, 0).endswith("Headline: $XYZ beats estimates\nSentiment:")


def test_fewshot_without_demonstration_data_is_refused(tmp_path):
    write(tmp_path / "rows.jsonl", '{"q": "x", "a": "Yes"}\n')
    spec = load_task_file(write(tmp_path / "t.yaml", 'type: classification\ndata: rows.jsonl\nprompt: "{{q}}"\nlabel: "{{a}}"\nlabels: ["Yes", "No"]\n'))
    with pytest.raises(SlmkitError, match="no fewshot_data"):
        ContextBuilder(spec, RunSettings(num_fewshot=2), answer=lambda r: r["a"])


def test_unquoted_yes_no_labels_are_caught(tmp_path):
    spec = load_task_file(write(tmp_path / "t.yaml", 'type: classification\ndata: x.jsonl\nprompt: "{{q}}"\nlabel: "{{a}}"\nlabels: [yes, no]\n'))
    with pytest.raises(SlmkitError, match="quote them"):
        verbalizations(spec)


def test_limit_keeps_a_seeded_subset_in_file_order():
    rows = list(range(100))
    picked = subset(rows, 10, seed=3)
    assert picked == sorted(picked) and len(picked) == 10
    assert picked == subset(rows, 10, seed=3) and picked != subset(rows, 10, seed=4)
    assert subset(rows, None, seed=3) == rows
