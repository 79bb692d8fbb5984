"""Encoders end to end on CPU: masked-LM pretraining with falling masked-token loss and exact resume, fine-tuning for
entities and sentiment, contrastive tuning scored against BM25, `slmkit embed`, export of each; and the mistakes a user
can make on the way, each one message and exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from slmkit.checkpoint import load_checkpoint
from slmkit.cli import main
from slmkit.export import ExportArgs, run_export
from slmkit.recipe import resolve_recipe
from slmkit.training.run import train
from tests.test_finetune import FAST, eval_results, weight_names
from tests.test_training import TINY, read_metrics

# legal-encoder-tiny at test size: TINY's data and trainer, a smaller ModernBERT-style body with a window on layer 1.
ENCODER = [arg for arg in TINY if not arg.startswith("model.n_kv_heads")] + [
    "model.block_size=64", "model.ffn_hidden=128", "model.sliding_window=16", "model.global_every=2",
    "trainer.checkpoint_every=4", "optim.lr=3e-3",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def encoder_config(shared_dir: Path, out_dir: Path, *extra: str):
    return resolve_recipe("legal-encoder-tiny", [*ENCODER, f"data.root={shared_dir / 'corpora'}", f"out_dir={out_dir}", *extra])


@pytest.fixture(scope="module")
def encoder_run(shared_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("encoder") / "run"
    train(encoder_config(shared_dir, run, "trainer.max_steps=8"))
    return run


def cli(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


def test_masked_lm_pretraining_lowers_the_masked_token_loss_and_reports_its_accuracy(encoder_run):
    records = read_metrics(encoder_run)
    validations = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in validations] == [4, 8]
    assert validations[-1]["val_loss"] < validations[0]["val_loss"]
    assert all(0.0 <= r["val_masked_accuracy"] <= 1.0 for r in validations)
    loaded = load_checkpoint(encoder_run)
    assert not loaded.config.model.causal and list(loaded.model.heads) == ["masked_lm"]
    assert "heads.masked_lm.transform.dense.weight" in weight_names(encoder_run)


def test_masked_lm_resumes_with_identical_losses(encoder_run, shared_dir, tmp_path):
    resumed = tmp_path / "resumed"
    train(encoder_config(shared_dir, resumed, "trainer.max_steps=8", f"resume={encoder_run / 'checkpoints' / 'step-4.ckpt'}"))
    straight = {r["step"]: r.get("train_loss") for r in read_metrics(encoder_run) if r["step"] > 4}
    assert {r["step"]: r.get("train_loss") for r in read_metrics(resumed) if r["step"] > 4} == straight


def test_an_encoder_fine_tunes_for_entities_and_sentiment_and_exports_to_modernbert(encoder_run, tmp_path):
    for recipe, task, metric, auto in [("ncbi-disease-ner-encoder", "ncbi_disease", "entity_f1", "AutoModelForTokenClassification"),
                                       ("finance-sentiment-encoder", "fin_sentiment", "acc", "AutoModelForSequenceClassification")]:
        run = train(resolve_recipe(recipe, [f"init_from={encoder_run}", f"out_dir={tmp_path / recipe}", *FAST])).out_dir
        assert metric in eval_results(run)[task]["metrics"]
        out = run_export(ExportArgs(checkpoint=str(run), out=str(tmp_path / f"{recipe}-hf")))  # parity-checked on export
        config = json.loads((out / "config.json").read_text())
        assert config["model_type"] == "modernbert" and config["architectures"][0].startswith("ModernBertFor")
    assert config["classifier_pooling"] == "mean"


def test_contrastive_tuning_is_scored_against_bm25_and_embeds_from_the_command_line(encoder_run, tmp_path, capsys):
    run = train(resolve_recipe("pubmedqa-embedder", [f"init_from={encoder_run}", f"out_dir={tmp_path / 'embedder'}", *FAST,
                                                     "trainer.micro_batch_size=8", "eval.batch_size=64"])).out_dir
    report = eval_results(run)["pubmedqa_retrieval"]
    assert set(report["metrics"]) == {"recall@1", "recall@10", "mrr"}
    assert {"bm25 recall@10", "bm25 mrr"} <= set(report["baselines"]) and report["details"]["pool documents"] == 1000
    assert "val_in_batch_accuracy" in read_metrics(run)[-1]
    texts = tmp_path / "texts.jsonl"
    texts.write_text('{"id": "a", "text": "Do mitochondria remodel leaves?"}\n{"id": "b", "text": "The court held."}\n')
    assert cli(capsys, "embed", f"checkpoint={run}", f"input={texts}", f"out={tmp_path / 'v.npy'}", "progress_bar=false")[0] == 0
    vectors = np.load(tmp_path / "v.npy")
    assert vectors.shape == (2, 64) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert cli(capsys, "embed", f"checkpoint={run}", f"input={texts}", f"out={tmp_path / 'v.parquet'}", "progress_bar=false")[0] == 0
    table = pq.read_table(tmp_path / "v.parquet").to_pydict()
    assert table["id"] == ["a", "b"] and np.allclose(np.array(table["embedding"]), vectors, atol=1e-6)
    out = run_export(ExportArgs(checkpoint=str(run), out=str(tmp_path / "st")))
    assert {"modules.json", "sentence_bert_config.json"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"] is True


# --- mistakes ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra, message", [
    (["tokenizer.special_tokens=[<|endoftext|>]"], "needs the mask token '<|mask|>' in tokenizer.special_tokens"),
    (["objective.mask_rate=1.5"], r"objective.mask_rate is 1.5; it must be in \(0, 1\)"),
    (["objective.mask_rate=0"], r"objective.mask_rate is 0.0; it must be in \(0, 1\)"),
    (["model.causal=true"], "trains a bidirectional encoder.*set model.causal=false"),
])
def test_a_masked_lm_recipe_it_cannot_train_is_refused_before_any_data_work(extra, message, shared_dir, tmp_path, capsys):
    code, err = cli(capsys, "train", "recipe=legal-encoder-tiny", f"out_dir={tmp_path / 'run'}", f"data.root={tmp_path / 'no-data'}", *extra)
    assert code == 2 and "Traceback" not in err
    assert __import__("re").search(message, err), err


def test_a_tokenizer_file_without_a_mask_token_is_refused_naming_it(shared_dir, tmp_path, capsys):
    from export_helpers import train_tokenizer

    plain = train_tokenizer(tmp_path / "plain.json")
    code, err = cli(capsys, "train", "recipe=legal-encoder-tiny", f"tokenizer.path={plain}", f"out_dir={tmp_path / 'run'}")
    assert code == 2 and f"the tokenizer {plain} has no such special token" in err


def test_an_encoder_cannot_generate_and_embed_refuses_empty_or_undecodable_input(encoder_run, tmp_path, capsys):
    code, err = cli(capsys, "generate", f"checkpoint={encoder_run}", "prompt=The court held")
    assert code == 2 and "bidirectional encoder (model.causal=false)" in err and "Traceback" not in err
    empty, latin = tmp_path / "empty.txt", tmp_path / "latin1.txt"
    empty.write_text("")
    latin.write_bytes("Caf\xe9 au lait\n".encode("latin-1"))
    code, err = cli(capsys, "embed", f"checkpoint={encoder_run}", f"input={empty}", f"out={tmp_path / 'v.npy'}")
    assert code == 2 and "holds no records to embed" in err
    code, err = cli(capsys, "embed", f"checkpoint={encoder_run}", f"input={latin}", f"out={tmp_path / 'v.npy'}")
    assert code == 2 and "is not UTF-8 text (byte 0xe9 at offset 3)" in err
    assert not (tmp_path / "v.npy").exists()
