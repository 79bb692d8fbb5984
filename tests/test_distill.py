"""Distillation: a student learns from a frozen teacher — the loss against a hand computation, the teacher kept out of
the optimizer and the checkpoint, the top-k cache against the teacher on the fly, a Hugging Face folder as teacher,
every k-th layer init, a distilled classifier, the pretrain -> distill -> int8 chain, and the mistakes a user can make."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch.utils.data import default_collate

from slmkit.checkpoint import build_model, load_checkpoint, save_inference_checkpoint
from slmkit.cli import main
from slmkit.data import data_preparer
from slmkit.distill.cache import FOLDER, MANIFEST
from slmkit.distill.losses import blend, kl_at_temperature
from slmkit.distill.teacher import TRANSFORMERS, describe_teacher
from slmkit.errors import SlmkitError
from slmkit.export import ExportArgs, run_export
from slmkit.objectives import OBJECTIVES
from slmkit.recipe import resolve_recipe
from slmkit.tokenizer import load_tokenizer
from slmkit.training.module import TrainingTask
from slmkit.training.run import train
from tests.test_training import TINY, read_metrics, tiny_config

STUDENT = ["objective.name=distill_lm", "trainer.max_steps=4", "trainer.checkpoint_every=0", "model.dropout=0.0"]


@pytest.fixture(scope="module")
def teacher(shared_dir, tmp_path_factory) -> Path:
    """A tiny trained LM of 4 blocks that sees 64 tokens: the teacher of every student here (context 32)."""
    run = tmp_path_factory.mktemp("teacher") / "run"
    train(tiny_config(shared_dir, run, "trainer.max_steps=8", "model.n_layer=4", "model.dropout=0.0", "model.block_size=64"))
    return run


@pytest.fixture(scope="module")
def hf_teacher(teacher, tmp_path_factory) -> Path:
    """The teacher exported as a transformers folder (LlamaForCausalLM + tokenizer files)."""
    return run_export(ExportArgs(checkpoint=str(teacher), out=str(tmp_path_factory.mktemp("export") / "hf")))


def student_config(shared_dir, teacher: Path, out: Path, *extra: str):
    return resolve_recipe("legal-tiny", [*TINY, f"data.root={shared_dir / 'corpora'}", f"out_dir={out}", *STUDENT,
                                         f"distill.teacher={teacher}", *extra])


@pytest.fixture(scope="module")
def student(shared_dir, teacher, tmp_path_factory):
    """A student's config, resolved once; tests change its distill section with `distilling`."""
    return student_config(shared_dir, teacher, tmp_path_factory.mktemp("student") / "run")


def distilling(config, **settings):
    return dataclasses.replace(config, distill=dataclasses.replace(config.distill, **settings))


def objective_and_model(config):
    tokenizer = load_tokenizer(config.tokenizer.path)
    from slmkit.training.run import fit_vocabulary

    config = fit_vocabulary(config, Path(config.tokenizer.path))
    torch.manual_seed(0)
    return OBJECTIVES.get(config.objective.name)(config, tokenizer), build_model(config).eval(), config


def windows_batch(config, count: int = 4) -> dict[str, torch.Tensor]:
    from slmkit.data import TokenShards
    from slmkit.training.datamodule import TokenWindows

    shards = data_preparer().prepare(config.data, config.tokenizer).shards_dir
    windows = TokenWindows(TokenShards(shards, "train"), config.model.block_size)
    return default_collate([windows[i * 997] for i in range(count)])


# --- the loss ------------------------------------------------------------------------------------------------


def test_kl_terms_match_a_hand_computation():
    student, teacher, t = [1.0, 2.0, 0.5, -1.0], [0.2, 1.5, 1.0, 0.0], 2.0

    def softmax(xs):
        e = [math.exp(x / t) for x in xs]
        return [v / sum(e) for v in e]

    p, q = softmax(teacher), softmax(student)
    forward = sum(a * math.log(a / b) for a, b in zip(p, q))
    reverse = sum(b * math.log(b / a) for a, b in zip(p, q))
    s, te = torch.tensor([student]), torch.tensor([teacher])
    assert kl_at_temperature(s, te, t, "forward").item() == pytest.approx(forward, rel=1e-6)
    assert kl_at_temperature(s, te, t, "reverse").item() == pytest.approx(reverse, rel=1e-6)
    assert forward != pytest.approx(reverse)
    # The teacher's top 2 (ids 1 and 2) and "every other token" (ids 0 and 3 together), for both models.
    p3, q3 = [p[1], p[2], p[0] + p[3]], [q[1], q[2], q[0] + q[3]]
    ids, top = torch.tensor([[1, 2]]), te[:, [1, 2]]
    tail = torch.logsumexp(te[:, [0, 3]] / t, dim=-1)
    top_forward = kl_at_temperature(s, top, t, "forward", ids, tail).item()
    assert top_forward == pytest.approx(sum(a * math.log(a / b) for a, b in zip(p3, q3)), rel=1e-5)
    assert kl_at_temperature(s, top, t, "reverse", ids, tail).item() == pytest.approx(
        sum(b * math.log(b / a) for a, b in zip(p3, q3)), rel=1e-5)
    assert top_forward < forward  # merging the tail into one category can only lower the KL
    ce, kl = torch.tensor(3.0), torch.tensor(0.25)
    assert blend(ce, kl, 0.0, t).item() == 3.0
    assert blend(ce, kl, 1.0, t).item() == pytest.approx(4 * 0.25)  # T^2 = 4
    assert blend(ce, kl, 0.3, t).item() == pytest.approx(0.7 * 3.0 + 0.3 * 4 * 0.25)


def test_a_cached_kl_stays_finite_when_the_student_puts_all_its_mass_on_the_top_k():
    # The student's tail is log(1 - its top-k mass); here that mass rounds to 1 in fp32 (the other logits are 60 lower).
    student = torch.tensor([[30.0, 29.0, -30.0, -31.0], [5.0, 4.0, 3.0, 2.0]], requires_grad=True)
    teacher_top, ids = torch.tensor([[2.0, 1.0], [2.0, 1.0]]), torch.tensor([[0, 1], [0, 1]])
    teacher_tail = torch.tensor([0.5, 0.5])
    for direction in ("forward", "reverse"):
        kl = kl_at_temperature(student, teacher_top, 1.0, direction, ids, teacher_tail)
        (gradient,) = torch.autograd.grad(kl.sum(), student)
        assert torch.isfinite(kl).all() and torch.isfinite(gradient).all()
        assert kl[0] > kl[1] > 0  # the confident student is further from a teacher that keeps mass in its tail


def test_student_loss_is_data_cross_entropy_plus_t_squared_kl_to_the_teacher(student, teacher):
    batch = windows_batch(student)
    with torch.no_grad():
        teacher_logits = load_checkpoint(teacher).model(batch["input_ids"], head="lm")
    # The last student pads its vocabulary to 576 rows: the KL covers the tokenizer's real tokens only.
    cases = [(0.0, 1.0, "forward", 512), (1.0, 2.0, "forward", 512), (0.4, 3.0, "reverse", 512), (0.5, 2.0, "forward", 576)]
    for alpha, temperature, direction, rows in cases:
        config = distilling(student, alpha=alpha, temperature=temperature, kl=direction)
        objective, model, config = objective_and_model(dataclasses.replace(config, model=dataclasses.replace(config.model, vocab_size=rows)))
        assert model.heads["lm"].proj.out_features == rows and objective.vocabulary <= 512
        with torch.no_grad():
            loss = objective.loss(model, batch).item()
            logits = model(batch["input_ids"], head="lm")
            ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch["targets"].reshape(-1)).item()
        vocabulary = objective.vocabulary
        log_p = F.log_softmax(teacher_logits[..., :vocabulary] / temperature, -1)
        log_q = F.log_softmax(logits[..., :vocabulary] / temperature, -1)
        kl = ((log_p.exp() * (log_p - log_q)) if direction == "forward" else (log_q.exp() * (log_q - log_p))).sum(-1).mean().item()
        assert loss == pytest.approx((1 - alpha) * ce + alpha * temperature**2 * kl, rel=1e-5), (alpha, temperature, direction, rows)


# --- the teacher ---------------------------------------------------------------------------------------------


def test_the_teacher_stays_out_of_the_optimizer_the_checkpoint_and_training_mode(student):
    narrow = dataclasses.replace(student.model, d_model=32, n_head=2)
    objective, model, config = objective_and_model(dataclasses.replace(distilling(student, hidden_weight=1.0), model=narrow))
    task = TrainingTask(config, model, objective)
    frozen = objective.distiller.teacher.module
    teacher_ids = {id(p) for p in frozen.parameters()}
    assert not teacher_ids & {id(p) for p in task.parameters()}
    optimizer = task.configure_optimizers()["optimizer"]
    assert not teacher_ids & {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not [k for k in task.state_dict() if "teacher" in k]
    # The projection from the student's width (32) to the teacher's (64) is the objective's own: it trains and is saved.
    assert "objective.distiller.projection.weight" in task.state_dict()
    assert id(objective.distiller.projection.weight) in {id(p) for group in optimizer.param_groups for p in group["params"]}
    task.train()
    objective.loss(model, windows_batch(config, 2)).backward()
    assert not frozen.training and all(p.grad is None and not p.requires_grad for p in frozen.parameters())


def test_an_exported_hugging_face_folder_teaches_as_the_slmkit_run_does(shared_dir, teacher, hf_teacher, tmp_path):
    folder = hf_teacher
    assert describe_teacher(folder).format == TRANSFORMERS
    extra = ["distill.hidden_weight=0.5", "distill.alpha=0.7"]
    from_run = student_config(shared_dir, teacher, tmp_path / "a", *extra)
    from_folder = student_config(shared_dir, folder, tmp_path / "b", *extra)
    assert Path(from_folder.tokenizer.path) == folder / "tokenizer.json"
    (a, model, config), (b, _, _) = objective_and_model(from_run), objective_and_model(from_folder)
    batch = windows_batch(config)
    with torch.no_grad():
        assert b.loss(model, batch).item() == pytest.approx(a.loss(model, batch).item(), abs=1e-4)


# --- the top-k cache -----------------------------------------------------------------------------------------


def cached_objective(student, **settings):
    config = distilling(student, cache="topk", cache_windows=8, **settings)
    objective, model, config = objective_and_model(config)
    shards = data_preparer().prepare(config.data, config.tokenizer).shards_dir
    return objective, model, config, shards


def test_a_topk_cache_of_the_whole_vocabulary_gives_the_on_the_fly_loss(student, teacher):
    vocabulary = load_tokenizer(teacher / "tokenizer.json").get_vocab_size(with_added_tokens=True)
    for direction in ("forward", "reverse"):
        cached, model, config, shards = cached_objective(student, kl=direction, cache_k=vocabulary)
        assert cached.distiller.teacher is None  # never loaded while the student trains
        windows = cached.train_windows(shards)
        batch = default_collate([windows[i] for i in range(4)])
        assert batch["teacher_ids"].shape == (4, 32, vocabulary)
        on_the_fly = distilling(student, kl=direction)
        plain = {k: batch[k] for k in ("input_ids", "targets")}
        with torch.no_grad():
            expected = objective_and_model(on_the_fly)[0].loss(model, plain).item()
        loss = cached.loss(model, batch)
        assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
        loss.backward()  # the empty tail adds no NaN to the gradients
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        model.zero_grad()
    smaller, model, _, shards = cached_objective(student, cache_k=8)
    windows = smaller.train_windows(shards)
    manifest = json.loads((windows.cache.folder / MANIFEST).read_text())
    assert 0 < manifest["top_k_mass"] < 1 and manifest["built_from"]["k"] == 8
    with torch.no_grad():
        assert math.isfinite(smaller.loss(model, default_collate([windows[i] for i in range(4)])).item())


def test_a_cache_of_another_teacher_or_other_data_is_never_read(student, teacher, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="slmkit")  # reusing a cache is information (shown with -v)
    explicit = tmp_path / "cache"
    first, _, _, shards = cached_objective(student, cache_dir=str(explicit))
    first.train_windows(shards)
    again, _, _, _ = cached_objective(student, cache_dir=str(explicit))
    again.train_windows(shards)
    assert "reusing" in caplog.text
    # Another teacher: the same run with other weights.
    other = tmp_path / "other-teacher"
    loaded = load_checkpoint(teacher)
    with torch.no_grad():
        for p in loaded.model.parameters():
            p.add_(0.01)
    save_inference_checkpoint(other, loaded.model, loaded.config, loaded.tokenizer_path)
    refused, _, _, _ = cached_objective(student, teacher=str(other), cache_dir=str(explicit))
    with pytest.raises(SlmkitError, match="another teacher"):
        refused.train_windows(shards)
    # Other data: the cache records the shards it was computed on.
    manifest = json.loads((explicit / MANIFEST).read_text())
    manifest["built_from"]["shards_inputs_sha256"] = "0" * 64
    (explicit / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SlmkitError, match="other data"):
        again.train_windows(shards)
    # In the default folder, keyed by teacher and data, another teacher gets a cache of its own; a damaged one is rebuilt.
    folders = []
    for objective in (first, refused):
        objective.config = distilling(objective.config, cache_dir=None)
        folders.append(objective.train_windows(shards).cache.folder)
    assert folders[0] != folders[1] and all(f.parent == shards / FOLDER for f in folders)
    (folders[0] / "logits.npy").unlink()
    first.train_windows(shards)
    assert "incomplete; rebuilding" in caplog.text and (folders[0] / "logits.npy").is_file()


# --- the student ---------------------------------------------------------------------------------------------


def test_a_student_starts_from_every_other_teacher_block(shared_dir, teacher, tmp_path):
    config = student_config(shared_dir, teacher, tmp_path / "run", "distill.init_from_teacher=true", "model.n_layer=2")
    objective, model, config = objective_and_model(config)
    lines = objective.init_weights(model)
    assert "teacher blocks [0, 2]" in lines[0]
    source = load_checkpoint(teacher).model.state_dict()
    state = model.state_dict()
    for mine, theirs in [("body.blocks.0.attn.q_proj.weight", "body.blocks.0.attn.q_proj.weight"),
                         ("body.blocks.1.ffn.down_proj.weight", "body.blocks.2.ffn.down_proj.weight"),
                         ("body.tok_embeddings.weight", "body.tok_embeddings.weight"), ("body.final_norm.weight", "body.final_norm.weight")]:
        assert torch.equal(state[mine], source[theirs]), mine
    with pytest.raises(SlmkitError, match="model.d_model is 64 in the teacher and 32 here"):
        train(student_config(shared_dir, teacher, tmp_path / "wide", "distill.init_from_teacher=true", "model.d_model=32"))


def test_pretrain_distill_int8_is_one_chain(shared_dir, hf_teacher, tmp_path):
    out = tmp_path / "student"  # taught by the exported folder, through the top-k cache
    result = train(student_config(shared_dir, hf_teacher, out, "distill.cache=topk", "distill.cache_k=32",
                                  "eval.tasks=[legal_heldout]", "eval.limit=2"))
    assert result.steps == 4 and result.final_val_loss is not None
    assert "bits_per_byte" in json.loads((out / "eval" / "results.json").read_text())["results"]["legal_heldout"]["metrics"]
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert not [k for k in f.keys() if not k.startswith(("body.", "heads."))]
    ckpt = torch.load(out / "checkpoints" / "step-4.ckpt", weights_only=True)
    assert not [k for k in ckpt["state_dict"] if not k.startswith("model.")]  # no teacher, nothing of the objective
    int8 = run_export(ExportArgs(checkpoint=str(out), out=str(tmp_path / "int8"), format="int8"))
    assert (int8 / "README.md").is_file()
    assert any("tokens_per_s" in r for r in read_metrics(out))


def small_sentiment_task(shared_dir: Path, folder: Path) -> Path:
    """fin_sentiment with 200 training and 40 test headlines: the same records and prompt, fewer of them."""
    source = shared_dir / "eval" / "finance" / "twitter_sentiment"
    for split, count in (("train", 200), ("valid", 40)):
        lines = (source / f"{split}.jsonl").read_text().splitlines()
        (folder / f"{split}.jsonl").write_text("\n".join(lines[:: len(lines) // count][:count]) + "\n")
    task = folder / "sentiment.yaml"
    task.write_text(f"type: classification\ndata: {folder / 'valid.jsonl'}\ntrain: {folder / 'train.jsonl'}\n"
                    'prompt: "Headline: {{text}}\\nSentiment:"\nlabel: "{{label}}"\n'
                    'labels: {"0": negative, "1": positive, "2": neutral}\n')
    return task


def test_a_classifier_learns_from_a_classifier_teacher_and_unlabeled_text(shared_dir, teacher, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="slmkit")  # the student's start from its teacher is information (-v)
    fast = ["trainer.max_steps=3", "trainer.micro_batch_size=4", "trainer.log_every=1", "trainer.val_every=3",
            "trainer.val_batches=1", "trainer.checkpoint_every=0", "trainer.progress_bar=false", "optim.warmup_steps=1",
            f"objective.task={small_sentiment_task(shared_dir, tmp_path)}"]
    classifier = train(resolve_recipe("finance-sentiment", [f"init_from={teacher}", f"out_dir={tmp_path / 'teacher'}", *fast])).out_dir
    unlabeled = tmp_path / "unlabeled.txt"
    unlabeled.write_text("Rates held steady. Markets rallied on the news.\nEarnings fell short of forecasts.\n\n")
    config = resolve_recipe("finance-sentiment-distilled", [
        f"distill.teacher={classifier}", f"out_dir={tmp_path / 'student'}", f"distill.unlabeled={unlabeled}",
        "distill.unlabeled_split=(?<=[.])\\s+", "distill.unlabeled_limit=2", *fast])
    assert config.model.n_layer == 2 and config.model.d_model == 64  # the teacher's architecture, half its depth
    objective = OBJECTIVES.get(config.objective.name)(config, load_tokenizer(config.tokenizer.path))
    examples = objective.examples("train")
    assert sum(e["label"] == -100 for e in examples) == 2
    result = train(config)
    assert "teacher blocks [0, 2]" in caplog.text
    [report] = json.loads((result.out_dir / "eval" / "results.json").read_text())["results"].values()
    assert 0.0 <= report["metrics"]["acc"]["value"] <= 1.0


# --- mistakes ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_tokenizer(teacher, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    text = json.loads((teacher / "tokenizer.json").read_text())
    vocab = text["model"]["vocab"]
    first, second = sorted(vocab, key=vocab.get)[300:302]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    path.write_text(json.dumps(text))
    return path


@pytest.mark.parametrize("extra, message", [
    (["teacher=/nonexistent/teacher"], "distill.teacher=/nonexistent/teacher: nothing there"),
    (["teacher={junk}"], "is not a model"),
    (["teacher={junk_hf}"], "config.json is not a transformers model config"),
    (["teacher={teacher}", "tokenizer.path={other_tokenizer}"], r"another tokenizer .*2 token ids stand for other tokens \(first: id 300"),
    (["teacher={teacher}", "model.block_size=128"], "sees at most 64 tokens and the student's model.block_size is 128"),
    (["teacher={teacher}", "distill.alpha=1.5"], "distill.alpha is 1.5; it must be between 0 and 1"),
    (["teacher={teacher}", "distill.temperature=0"], "distill.temperature is 0.0; it must be greater than 0"),
    (["teacher={teacher}", "distill.temperature=-2"], "distill.temperature is -2.0; it must be greater than 0"),
    (["teacher={teacher}", "distill.cache=topk", "distill.hidden_weight=1"], "hidden states, which the top-k cache does not hold"),
    ([], "recipe legal-tiny names no teacher"),
])
def test_distill_mistakes_exit_2_with_one_message(extra, message, shared_dir, teacher, other_tokenizer, tmp_path, capsys):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("not a model")
    junk_hf = tmp_path / "junk-hf"
    junk_hf.mkdir()
    (junk_hf / "config.json").write_text('{"hidden": 3}')
    args = [a.format(teacher=teacher, junk=junk, junk_hf=junk_hf, other_tokenizer=other_tokenizer) for a in extra]
    code = main(["distill", "recipe=legal-tiny", *TINY, f"data.root={shared_dir / 'corpora'}", f"out_dir={tmp_path / 'run'}", *args])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert len(re.findall(message, err)) == 1, err
    assert not (tmp_path / "run").exists()  # refused before any work


def test_the_distill_command_refuses_a_missing_teacher_from_the_shell(tmp_path):
    result = subprocess.run([sys.executable, "-m", "slmkit.cli", "distill", "teacher=/nonexistent", "recipe=legal-tiny"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2 and "nothing there" in result.stderr and "Traceback" not in result.stderr


def test_a_distill_objective_without_a_teacher_says_what_to_set(shared_dir, tmp_path):
    config = resolve_recipe("legal-tiny", [*TINY, f"out_dir={tmp_path / 'run'}", "objective.name=distill_lm"])
    with pytest.raises(SlmkitError, match="set distill.teacher=PATH"):
        train(config)
