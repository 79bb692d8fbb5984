"""Fine-tuning from a pretrained run: init_from, each objective and its head end to end on the shared task data,
LoRA, exact resume, and the mistakes a user can make on the way."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from slmkit.checkpoint import build_model, init_from_checkpoint, load_checkpoint
from slmkit.errors import SlmkitError
from slmkit.eval.catalog import resolve_task
from slmkit.eval.loglikelihood import Scorer
from slmkit.eval.prompting import task_records
from slmkit.eval.token_classification import predict_tags, sentences, word_spans
from slmkit.model import TOKEN_HEAD
from slmkit.predict import WORD, PredictArgs, run_predict
from slmkit.recipe import resolve_recipe
from slmkit.training.run import train
from tests.test_tag_decoding import is_valid_bio
from tests.test_training import TINY, read_metrics, tiny_config

FAST = ["trainer.max_steps=6", "trainer.micro_batch_size=4", "trainer.log_every=1", "trainer.val_every=3",
        "trainer.val_batches=1", "trainer.checkpoint_every=3", "trainer.progress_bar=false", "eval.limit=24",
        "optim.warmup_steps=2"]


@pytest.fixture(scope="session")
def pretrained(shared_dir, tmp_path_factory) -> Path:
    """A tiny causal LM with a BPE tokenizer: the run every fine-tune here starts from."""
    run = tmp_path_factory.mktemp("pretrained") / "run"
    train(tiny_config(shared_dir, run, "trainer.max_steps=4", "model.dropout=0.0", "model.block_size=64"))
    return run


def finetune(recipe: str, pretrained: Path, out: Path, *extra: str):
    config = resolve_recipe(recipe, [f"init_from={pretrained}", f"out_dir={out}", *FAST, *extra])
    return train(config), config


@pytest.fixture(scope="module")
def ner_run(pretrained, tmp_path_factory) -> Path:
    return finetune("ncbi-disease-ner", pretrained, tmp_path_factory.mktemp("ner") / "run")[0].out_dir


@pytest.fixture(scope="module")
def span_run(pretrained, tmp_path_factory) -> Path:
    return finetune("tatqa-spans", pretrained, tmp_path_factory.mktemp("span") / "run")[0].out_dir


def weight_names(run: Path) -> set[str]:
    with safe_open(str(run / "model.safetensors"), framework="pt") as f:
        return set(f.keys())


def eval_results(run: Path) -> dict:
    return json.loads((run / "eval" / "results.json").read_text())["results"]


def test_classification_finetune_keeps_the_body_adds_a_head_and_reports_the_task(pretrained, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="slmkit")  # the init_from report is information (shown with -v)
    result, _ = finetune("finance-sentiment", pretrained, tmp_path / "run")
    run = result.out_dir
    config = load_checkpoint(run).config
    assert config.objective.labels == ["negative", "positive", "neutral"] and config.objective.pooling == "last"
    names = weight_names(run)
    assert "heads.sequence_classification.score.weight" in names and not any(n.startswith("heads.lm") for n in names)
    assert "heads the checkpoint lacks, initialized fresh: sequence_classification" in caplog.text
    assert "checkpoint heads this run does not use: lm" in caplog.text
    report = eval_results(run)["fin_sentiment"]
    assert set(report["metrics"]) == {"acc", "macro_f1"} and "majority" in report["baselines"]
    assert report["details"]["confusion (rows gold, columns predicted)"]["labels"] == ["negative", "positive", "neutral"]
    assert "per class" in (run / "eval" / "results.md").read_text()
    records = read_metrics(run)
    assert all("examples_per_s" in r for r in records if "train_loss" in r)
    headlines = tmp_path / "headlines.csv"
    headlines.write_text('id,text\n1,"Shares of $XYZ soar after record earnings"\n2,Fed holds rates steady\n')
    predictions = run_predict(PredictArgs(checkpoint=str(run), input=str(headlines)))
    assert [p["id"] for p in predictions] == ["1", "2"]
    for p in predictions:
        assert set(p["prediction"]["probabilities"]) == {"negative", "positive", "neutral"}
        assert abs(sum(p["prediction"]["probabilities"].values()) - 1) < 1e-5


def test_init_from_loads_the_pretrained_body_exactly(pretrained):
    config = resolve_recipe("finance-sentiment", [f"init_from={pretrained}", "objective.labels=[a,b,c]", "objective.pooling=last"])
    model = build_model(config)
    report = init_from_checkpoint(model, pretrained)
    assert (report.loaded_heads, report.new_heads, report.unused_heads) == ([], ["sequence_classification"], ["lm"])
    before = load_checkpoint(pretrained).model
    for name, tensor in before.body.state_dict().items():
        assert torch.equal(tensor, model.body.state_dict()[name]), name


def test_token_classification_finetune_scores_entities(ner_run):
    config = load_checkpoint(ner_run).config
    assert config.objective.labels == ["O", "B-Disease", "I-Disease"]
    report = eval_results(ner_run)["ncbi_disease"]
    assert {"entity_f1", "entity_precision", "entity_recall"} <= set(report["metrics"])
    assert report["baselines"]["gazetteer entity_f1"]["value"] > 0.3
    assert report["details"]["decoding"] == "argmax"  # the recipe's default, as its head records it


def test_bio_decoding_reads_a_trained_head_into_valid_bio_agreeing_with_valid_argmax(ner_run):
    loaded = load_checkpoint(ner_run)
    scorer = Scorer(loaded.model.eval(), loaded.tokenizer())
    spec = resolve_task("ncbi_disease")
    inputs = [word_spans(s.words) for s in sentences(spec, task_records(spec, "data"))[:40]]
    names = list(loaded.config.objective.labels)
    argmax = predict_tags(scorer, inputs, names)
    head = loaded.model.heads[TOKEN_HEAD]
    head.spec = dataclasses.replace(head.spec, decoding="bio")  # as objective.decoding=bio records it
    bio = predict_tags(scorer, inputs, names)
    for argmax_tags, bio_tags in zip(argmax, bio):
        assert len(bio_tags) == len(argmax_tags) and is_valid_bio(bio_tags)
        if is_valid_bio(argmax_tags):
            assert bio_tags == argmax_tags


def test_a_crf_head_trains_its_transitions_by_the_sentence_likelihood_and_decodes_valid_bio(pretrained, tmp_path):
    result, _ = finetune("ncbi-disease-ner", pretrained, tmp_path / "run", "objective.decoding=crf")
    run = result.out_dir
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in read_metrics(run) if "train_loss" in r)
    assert eval_results(run)["ncbi_disease"]["details"]["decoding"] == "crf"
    loaded = load_checkpoint(run)
    head = loaded.model.heads[TOKEN_HEAD]
    assert head.spec.decoding == "crf" and head.crf.transitions.abs().sum() > 0  # learned from their zero start
    scorer = Scorer(loaded.model.eval(), loaded.tokenizer())
    spec = resolve_task("ncbi_disease")
    inputs = [word_spans(s.words) for s in sentences(spec, task_records(spec, "data"))[:20]]
    assert all(is_valid_bio(tags) for tags in predict_tags(scorer, inputs, list(head.spec.labels)))


def test_span_qa_finetune_scores_exact_match_and_f1(span_run):
    report = eval_results(span_run)["tatqa_text_spans"]
    assert set(report["metrics"]) == {"exact_match", "f1"}
    assert "heads.span.qa_outputs.weight" in weight_names(span_run)


def test_predict_writes_labels_entities_and_answers_with_offsets(ner_run, span_run, pretrained, tmp_path):
    texts = tmp_path / "sentences.txt"
    texts.write_text("Mutations cause breast cancer in families.\n\nAtaxia-telangiectasia is rare.\n")
    out = tmp_path / "ner.jsonl"
    run_predict(PredictArgs(checkpoint=str(ner_run), input=str(texts), out=str(out)))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in lines] == ["Mutations cause breast cancer in families.", "Ataxia-telangiectasia is rare."]
    for record in lines:
        assert len(record["prediction"]["tags"]) == len(WORD.findall(record["text"]))
        for entity in record["prediction"]["entities"]:
            assert record["text"][entity["start"]:entity["end"]] == entity["text"] and entity["label"] == "Disease"
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"question": "What rose?", "paragraphs": ["Revenue rose 5% in 2019.", "Costs fell."]}) + "\n")
    [answer] = run_predict(PredictArgs(checkpoint=str(span_run), input=str(questions)))
    context = "Revenue rose 5% in 2019.\nCosts fell."
    assert context[answer["prediction"]["start"]:answer["prediction"]["end"]] == answer["prediction"]["answer"]
    with pytest.raises(SlmkitError, match="needs checkpoint=PATH"):
        run_predict(PredictArgs(input=str(texts)))


def test_sft_finetune_learns_completions_and_scores_generations(pretrained, tmp_path):
    result, _ = finetune("pubmedqa-sft", pretrained, tmp_path / "run", "eval.limit=4")
    report = eval_results(result.out_dir)["pubmedqa_answer"]
    assert {"exact_match", "contains"} <= set(report["metrics"])
    assert "heads.lm.proj.weight" in weight_names(result.out_dir) or "body.tok_embeddings.weight" in weight_names(result.out_dir)


def test_continued_pretraining_reuses_the_tokenizer_and_weights(pretrained, tmp_path, shared_dir):
    config = resolve_recipe("finance-from-legal-tiny", [
        f"init_from={pretrained}", f"out_dir={tmp_path / 'run'}", f"data.root={shared_dir / 'corpora'}", *FAST,
        "data.sources=[{name: fomc, path: finance/fomc_statements.jsonl.gz, max_documents: 40}]", "eval.tasks=[]",
    ])
    assert Path(config.tokenizer.path) == pretrained / "tokenizer.json"
    assert config.model == load_checkpoint(pretrained).config.model
    result = train(config)
    assert (result.out_dir / "tokenizer.json").read_bytes() == (pretrained / "tokenizer.json").read_bytes()


def test_lora_trains_adapters_and_the_head_then_merges_into_plain_weights(pretrained, tmp_path):
    result, _ = finetune("finance-sentiment", pretrained, tmp_path / "run", "lora.rank=4", "lora.targets=[q_proj,v_proj]")
    names = weight_names(result.out_dir)
    assert not any("lora" in n or "base_layer" in n for n in names)
    before, after = load_checkpoint(pretrained).model.body, load_checkpoint(result.out_dir).model.body
    # Only the adapted projections moved (by their merged update); every other body weight stayed frozen.
    for name, tensor in before.state_dict().items():
        moved = not torch.equal(tensor, after.state_dict()[name])
        assert moved == name.endswith(("q_proj.weight", "v_proj.weight")), name
    # A training checkpoint of the LoRA run loads too: adapters folded in on the way.
    ckpt = load_checkpoint(result.out_dir / "checkpoints" / "step-6.ckpt").model
    for name, tensor in ckpt.state_dict().items():
        torch.testing.assert_close(tensor, load_checkpoint(result.out_dir).model.state_dict()[name])


def test_a_finetune_resumes_with_identical_losses(pretrained, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    finetune("ncbi-disease-ner", pretrained, straight, "optim.decay_steps=6", "model.dropout=0.1", "eval.limit=2")
    finetune("ncbi-disease-ner", pretrained, resumed, "optim.decay_steps=6", "model.dropout=0.1", "eval.limit=2", "trainer.max_steps=3")
    finetune("ncbi-disease-ner", pretrained, resumed, "optim.decay_steps=6", "model.dropout=0.1", "eval.limit=2",
             f"resume={resumed / 'checkpoints' / 'step-3.ckpt'}")
    a = [(r["step"], r["train_loss"]) for r in read_metrics(straight) if "train_loss" in r]
    b = [(r["step"], r["train_loss"]) for r in read_metrics(resumed) if "train_loss" in r]
    assert a == b
    steps = [r["step"] for r in read_metrics(resumed)]
    assert steps == sorted(set(steps))  # one record per step


# --- mistakes ------------------------------------------------------------------------------------------------


def test_init_from_nothing_says_what_to_pass(tmp_path):
    with pytest.raises(SlmkitError, match="init_from=.*nothing there"):
        resolve_recipe("finance-sentiment", [f"init_from={tmp_path / 'missing'}"])


def test_init_from_refuses_weights_that_do_not_fit_naming_them(pretrained, tmp_path):
    with pytest.raises(SlmkitError, match=r"body.tok_embeddings.weight is \(512, 64\) in the checkpoint but \(600, 64\)"):
        finetune("finance-sentiment", pretrained, tmp_path / "run", "model.vocab_size=600")


def test_init_from_refuses_another_tokenizer(pretrained, tmp_path):
    other = tmp_path / "other.json"
    other.write_text((pretrained / "tokenizer.json").read_text().replace('"<|endoftext|>"', '"<|end|>"'))
    with pytest.raises(SlmkitError, match="not the tokenizer of init_from"):
        resolve_recipe("finance-sentiment", [f"init_from={pretrained}", f"tokenizer.path={other}"])


def test_a_finetune_without_a_tokenizer_is_refused(tmp_path):
    config = resolve_recipe("finance-sentiment", ["init_from=null", *TINY, f"out_dir={tmp_path / 'run'}"])
    with pytest.raises(SlmkitError, match="init_from=RUN"):
        train(config)


def test_lora_on_a_layer_that_does_not_exist_names_the_real_ones(pretrained, tmp_path):
    with pytest.raises(SlmkitError, match="qproj.*q_proj"):
        finetune("finance-sentiment", pretrained, tmp_path / "run", "lora.rank=4", "lora.targets=[qproj]")


def test_a_task_of_the_wrong_type_for_the_objective_is_refused(pretrained, tmp_path):
    with pytest.raises(SlmkitError, match="learns token_classification tasks, and fin_sentiment is a classification task"):
        finetune("ncbi-disease-ner", pretrained, tmp_path / "run", "objective.task=fin_sentiment")
