"""Training end to end on CPU: metrics and checkpoints land in the run folder, resume is exact, and user mistakes
get one message and a non-zero exit instead of a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slmkit.checkpoint import load_checkpoint
from slmkit.data import RUN_MANIFEST
from slmkit.errors import SlmkitError
from slmkit.export.model_card import model_card
from slmkit.recipe import resolve_recipe
from slmkit.training.run import train

TINY = [
    "model.n_layer=2", "model.d_model=64", "model.n_head=2", "model.n_kv_heads=1", "model.block_size=32",
    "model.vocab_size=512", "model.dropout=0.1", "tokenizer.vocab_size=512", "tokenizer.train_chars=300000",
    "data.sources=[{name: federal_rules, path: legal/federal_rules.jsonl.gz, max_documents: 120}]",
    "trainer.micro_batch_size=4", "trainer.log_every=1", "trainer.val_every=4", "trainer.val_batches=2",
    "trainer.progress_bar=false", "eval.tasks=[]", "optim.warmup_steps=2",
    # The tiny runs test the trainer, checkpoints and strategies (DeepSpeed, LoRA refuse Muon); Muon has its own tests.
    "optim.name=adamw",
]


def tiny_config(shared_dir: Path, out_dir: Path, *extra: str):
    return resolve_recipe("legal-tiny", [*TINY, f"data.root={shared_dir / 'corpora'}", f"out_dir={out_dir}", *extra])


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_training_writes_run_folder_and_loss_falls(shared_dir, tmp_path):
    run = tmp_path / "run"
    result = train(tiny_config(shared_dir, run, "trainer.max_steps=12", "trainer.checkpoint_every=4", "trainer.keep_checkpoints=2"))
    assert result.steps == 12
    for name in ["config.yaml", "tokenizer.json", "model.safetensors", "metrics.jsonl", RUN_MANIFEST]:
        assert (run / name).is_file(), name
    assert any((run / "tb").iterdir())
    records = read_metrics(run)
    assert [r["step"] for r in records] == list(range(1, 13))
    for key in ["tokens", "train_loss", "lr", "tokens_per_s", "grad_norm", "peak_mem_gb"]:
        assert all(r[key] is not None for r in records), key
    assert records[-1]["tokens"] == 12 * 4 * 32
    val = [r["val_loss"] for r in records if "val_loss" in r]
    assert len(val) == 3 and val[-1] < val[0]
    # The two newest periodic checkpoints are kept (the final step is one of them).
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step-12.ckpt", "step-12.ckpt.sha256", "step-8.ckpt", "step-8.ckpt.sha256"]
    loaded = load_checkpoint(run)
    assert loaded.model.config.n_layer == 2
    manifest = json.loads((run / RUN_MANIFEST).read_text())
    card = model_card(loaded.config, run, {"format": "safetensors"})  # the card reports what the run trained on
    assert f"| train | {manifest['splits']['train']['documents']} | {manifest['splits']['train']['tokens']} |" in card


def test_resume_continues_with_identical_losses(shared_dir, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    # The first half is a run told to stop at step 4, so the lr decay is pinned to 8 steps in all runs; dropout is
    # on, so the RNG state must be restored too.
    schedule = "optim.decay_steps=8"
    train(tiny_config(shared_dir, straight, "trainer.max_steps=8", "trainer.checkpoint_every=4", schedule))
    train(tiny_config(shared_dir, resumed, "trainer.max_steps=4", "trainer.checkpoint_every=4", schedule))
    ckpt = resumed / "checkpoints" / "step-4.ckpt"
    train(tiny_config(shared_dir, resumed, "trainer.max_steps=8", "trainer.checkpoint_every=4", schedule, f"resume={ckpt}"))
    a = [(r["step"], r["train_loss"]) for r in read_metrics(straight)]
    b = [(r["step"], r["train_loss"]) for r in read_metrics(resumed)]
    assert a == b
    assert [r["step"] for r in read_metrics(resumed)] == list(range(1, 9))  # one record per step


def test_resume_true_refuses_a_different_architecture(shared_dir, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(shared_dir, run, "trainer.max_steps=2", "trainer.checkpoint_every=2"))
    with pytest.raises(SlmkitError, match="different architecture"):
        train(tiny_config(shared_dir, run, "trainer.max_steps=4", "resume=true", "model.n_layer=3"))


def test_tokenizer_larger_than_the_model_vocabulary_is_refused(shared_dir, tmp_path):
    with pytest.raises(SlmkitError, match="model.vocab_size"):
        train(tiny_config(shared_dir, tmp_path / "run", "trainer.max_steps=1", "model.vocab_size=100"))


def _slmkit(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slmkit.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "recipe=legal-tinyy"], "did you mean 'legal-tiny'"),
        (["train", "recipe=legal-tiny", "model.n_layr=2"], "did you mean 'model.n_layer'"),
        (["train", "recipe=legal-tiny", "data.root=/nonexistent/corpora"], "/nonexistent/corpora"),
        (["eval", "checkpoint=/nonexistent/run"], "checkpoint not found"),
    ],
)
def test_cli_reports_mistakes_without_traceback(args, message):
    result = _slmkit(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_data_report_prints_figures_without_corpus_text(shared_dir, tmp_path):
    out = tmp_path / "report.md"
    small = [arg for arg in TINY if arg.startswith(("data.", "tokenizer."))]
    data = [f"data.root={shared_dir / 'corpora'}", f"data.prepared_dir={tmp_path / 'prepared'}", *small]
    result = _slmkit("data", "report", "--figures-only", "--out", str(out), "recipe=legal-tiny", *data)
    assert result.returncode == 0, result.stderr
    figures_only = out.read_text()
    full = (tmp_path / "prepared" / "report" / "report.md").read_text()
    report = json.loads((tmp_path / "prepared" / "report" / "report.json").read_text())
    reasons = report["corpus"]["filter"]["dropped_documents"]
    assert "## Quality filters" in figures_only and reasons and all(f"| {reason} |" in figures_only for reason in reasons)
    quotes = [line for line in full.splitlines() if line.startswith("  - `")]
    assert quotes and not any(line in figures_only for line in quotes)


def test_dry_run_prints_size_flops_and_data_status(shared_dir):
    result = _slmkit("train", "recipe=legal-125m", "--dry-run", env={"SLMKIT_DATA": str(shared_dir / "corpora")})
    assert result.returncode == 0, result.stderr
    assert "parameters: 124," in result.stdout
    assert "training FLOPs per token" in result.stdout
    assert "zero_optimization" in result.stdout


def test_gpu_recipe_falls_back_to_a_cpu_smoke_test(shared_dir, tmp_path):
    from slmkit.training.trainer import apply_cpu_fallback

    config = resolve_recipe("legal-125m")
    fallen, changes = apply_cpu_fallback(config)
    if torch.cuda.is_available():
        assert changes == []
    else:
        assert fallen.trainer.strategy == "auto" and fallen.trainer.precision == "fp32" and fallen.trainer.grad_accum == 1
        assert any("strategy" in c for c in changes)
        # A step of one 256-token sequence takes seconds on a CPU, where 16 x 1024 took minutes.
        assert fallen.trainer.micro_batch_size == 1 and fallen.model.block_size == 256
        assert "model.block_size: 1024 -> 256" in changes


def test_periodic_evaluation_runs_once_per_step_with_gradient_accumulation(shared_dir, tmp_path, monkeypatch):
    import slmkit.eval

    steps = []
    evaluate = slmkit.eval.evaluate

    def counted(model, *args, **kwargs):
        steps.append(model.training)  # periodic calls come from inside the training loop; the final one does not
        return evaluate(model, *args, **kwargs)

    monkeypatch.setattr(slmkit.eval, "evaluate", counted)
    monkeypatch.setenv("SLMKIT_SHARED", str(shared_dir))
    run = tmp_path / "run"
    train(tiny_config(shared_dir, run, "trainer.max_steps=8", "trainer.grad_accum=2", "eval.tasks=[legal_heldout]",
                      "eval.every=4", "eval.limit=2", "trainer.val_every=100"))
    scored = [r["step"] for r in read_metrics(run) if any(key.startswith("eval/legal_heldout/") for key in r)]
    assert scored == [4, 8]
    assert len(steps) >= 2 and steps[:2] == [True, True] and steps[2:].count(True) == 0
