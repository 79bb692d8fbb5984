"""Runs that start from a transformers model (init_from=FOLDER): continued pretraining with the model's own tokenizer,
fine-tuning a new head, LoRA, generation, export back to transformers and to int8 / GGUF; and every bad input
refused with one message before anything is written."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slmkit.checkpoint import load_checkpoint
from slmkit.errors import SlmkitError
from slmkit.export import ExportArgs, run_export
from slmkit.generate import GenerateArgs, run_generate
from slmkit.recipe import resolve_recipe
from slmkit.training.run import train

from export_helpers import train_tokenizer, write_run
from test_import_hf import write_transformers_folder

transformers = pytest.importorskip("transformers")

FAST = ["trainer.max_steps=4", "trainer.micro_batch_size=2", "trainer.log_every=1", "trainer.val_every=2",
        "trainer.val_batches=1", "trainer.checkpoint_every=2", "trainer.progress_bar=false", "optim.warmup_steps=1",
        "eval.tasks=[]", "eval.limit=8"]
CORPUS = "data.sources=[{name: federal_rules, path: legal/federal_rules.jsonl.gz, max_documents: 60}]"


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gpt2")
    tokenizer = train_tokenizer(folder.parent / "gpt2-tokenizer.json")
    return write_transformers_folder(folder / "model", "gpt2", "lm", tokenizer)


@pytest.fixture(scope="module")
def continued(gpt2_folder, shared_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("continued") / "run"
    config = resolve_recipe("finance-from-legal-tiny", [f"init_from={gpt2_folder}", f"out_dir={out}", CORPUS,
                                                        f"data.root={shared_dir / 'corpora'}", *FAST])
    train(config)
    return out


def test_continued_pretraining_keeps_the_model_and_its_tokenizer(gpt2_folder, continued):
    loaded = load_checkpoint(continued)
    assert loaded.tokenizer_path.read_bytes() == (gpt2_folder / "tokenizer.json").read_bytes()
    m = loaded.config.model
    assert (m.positions, m.ffn, m.norm, m.bias, m.d_model, m.vocab_size) == ("learned", "gelu_tanh", "layernorm", True, 32, 320)
    manifest = json.loads((continued / "data_manifest.json").read_text())
    assert manifest["vocab_size"] >= 300  # the corpus was encoded with the model's tokenizer, not a trained one


def test_an_imported_run_starts_from_the_imported_weights(gpt2_folder, shared_dir, tmp_path):
    from slmkit.checkpoint import build_model
    from slmkit.checkpoint.hf_import import init_from_source

    config = resolve_recipe("finance-from-legal-tiny", [f"init_from={gpt2_folder}", f"data.root={shared_dir / 'corpora'}"])
    model = build_model(config).eval()
    init_from_source(model, config)
    hf = transformers.GPT2LMHeadModel.from_pretrained(gpt2_folder).eval()
    ids = torch.randint(1, 300, (1, 16))
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max() < 1e-4


def test_an_imported_run_generates_and_exports_to_transformers_int8_and_gguf(continued, tmp_path):
    text = run_generate(GenerateArgs(checkpoint=str(continued), prompt="The court", max_new_tokens=5, temperature=0.0))
    assert len(text) == 1 and isinstance(text[0], str)
    out = run_export(ExportArgs(checkpoint=str(continued), out=str(tmp_path / "hf")))
    assert json.loads((out / "config.json").read_text())["activation_function"] == "gelu_new"
    run_export(ExportArgs(checkpoint=str(continued), out=str(tmp_path / "int8"), format="int8"))


def test_an_imported_llama_exports_to_gguf(gpt2_folder, tmp_path):
    from slmkit.checkpoint.hf_import import load_transformers_model

    folder = write_transformers_folder(tmp_path / "llama", "llama", "lm", gpt2_folder / "tokenizer.json",
                                       attention_bias=False, mlp_bias=False)
    model, _ = load_transformers_model(str(folder))
    run = write_run(tmp_path / "run", folder / "tokenizer.json", model)
    out = run_export(ExportArgs(checkpoint=str(run), out=str(tmp_path / "gguf"), format="gguf"))
    assert list(out.glob("*.gguf"))


def test_a_classifier_fine_tunes_from_an_imported_model(gpt2_folder, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="slmkit")  # the init_from report is information (shown with -v)
    config = resolve_recipe("finance-sentiment", [f"init_from={gpt2_folder}", f"out_dir={tmp_path / 'run'}", *FAST])
    result = train(config)
    assert "heads the checkpoint lacks, initialized fresh: sequence_classification" in caplog.text
    assert load_checkpoint(result.out_dir).config.objective.labels == ["negative", "positive", "neutral"]


def test_lora_fine_tunes_an_imported_model(gpt2_folder, tmp_path):
    config = resolve_recipe("finance-sentiment", [f"init_from={gpt2_folder}", f"out_dir={tmp_path / 'run'}", *FAST,
                                                  "lora.rank=2"])
    assert train(config).steps == 4


def test_an_imported_model_distills_as_student_from_an_imported_teacher(gpt2_folder, shared_dir, tmp_path):
    config = resolve_recipe("finance-from-legal-tiny", [
        f"init_from={gpt2_folder}", f"distill.teacher={gpt2_folder}", "objective.name=distill_lm", "distill.alpha=0.5",
        f"out_dir={tmp_path / 'run'}", CORPUS, f"data.root={shared_dir / 'corpora'}", *FAST])
    assert train(config).steps == 4


# --- bad input: one message, no traceback, non-zero exit, nothing written ---------------------------------------

def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slmkit.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})


def refused(tmp_path: Path, *overrides: str, recipe: str = "finance-from-legal-tiny") -> str:
    out = tmp_path / "run"
    done = cli("train", f"recipe={recipe}", f"out_dir={out}", *overrides, cwd=tmp_path)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert not out.exists()
    return done.stderr


def test_a_folder_that_is_not_a_model_is_refused(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "config.json").write_text('{"hello": 1}')
    assert "a family slmkit does not import" in refused(tmp_path, f"init_from={tmp_path / 'notes'}")


def test_an_unsupported_family_is_refused_naming_it_and_what_would_be_needed(tmp_path):
    folder = tmp_path / "gemma"
    transformers.AutoConfig.for_model("gemma", vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, head_dim=8).save_pretrained(folder)
    message = refused(tmp_path, f"init_from={folder}")
    assert "gemma" in message and "its own row in slmkit/export/targets.py" in message


def test_a_feature_slmkit_cannot_represent_is_refused_naming_the_key(tmp_path, gpt2_folder):
    folder = tmp_path / "scaled"
    tokenizer = gpt2_folder / "tokenizer.json"
    write_transformers_folder(folder, "llama", "lm", tokenizer,
                              rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})
    assert "rope_parameters" in refused(tmp_path, f"init_from={folder}")


def test_pickle_only_weights_are_refused_with_the_reason_unless_allowed(tmp_path, gpt2_folder):
    folder = tmp_path / "pickled"
    model = transformers.GPT2LMHeadModel.from_pretrained(gpt2_folder)
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((gpt2_folder / name).read_bytes())
    assert "can run code" in refused(tmp_path, f"init_from={folder}")
    from slmkit.checkpoint.hf_import import load_transformers_model

    imported, _ = load_transformers_model(str(folder), allow_pickle=True)
    ids = torch.randint(1, 300, (1, 8))
    with torch.no_grad():
        assert (imported(ids) - model.eval()(ids).logits).abs().max() < 1e-4


def test_a_missing_tokenizer_is_refused(tmp_path, gpt2_folder):
    folder = tmp_path / "no-tokenizer"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((gpt2_folder / name).read_bytes())
    assert "has no tokenizer.json" in refused(tmp_path, f"init_from={folder}")


def test_another_tokenizer_is_refused(tmp_path, gpt2_folder):
    other = train_tokenizer(tmp_path / "other.json", vocab_size=280)
    assert "is not the tokenizer of init_from" in refused(tmp_path, f"init_from={gpt2_folder}", f"tokenizer.path={other}")


def test_a_model_override_that_changes_an_imported_shape_is_refused(tmp_path, gpt2_folder):
    message = refused(tmp_path, f"init_from={gpt2_folder}", "model.d_model=64")
    assert "model.d_model=64" in message and "change the shape of imported weights" in message


def test_hf_offline_and_not_cached_says_so(tmp_path):
    message = refused(tmp_path, "init_from=hf:slmkit-test/not-a-cached-model")
    assert "offline" in message and "not in the Hugging Face cache" in message
