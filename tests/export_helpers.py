"""Builders shared by the export and generation tests: tiny random models, a tiny BPE tokenizer, a run folder."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from slmkit.checkpoint import save_inference_checkpoint
from slmkit.config import ObjectiveConfig, RunConfig
from slmkit.model import LM_HEAD, HeadSpec, Model, ModelConfig

EOS = "<|endoftext|>"
TEXT = (
    "The court held that the statute applies to every contract signed after the effective date. "
    "A party may appeal the judgment within thirty days. The plaintiff moved for summary judgment, "
    "and the motion was denied because material facts remain in dispute. "
) * 20


def train_tokenizer(path: Path, vocab_size: int = 300, pre_tokenizer=None, ignore_merges: bool = False) -> Path:
    """Byte-level BPE as slmkit trains it, or with another pre-tokenizer (ending in ByteLevel) in its place."""
    tokenizer = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    tokenizer.pre_tokenizer = pre_tokenizer or pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator([TEXT], trainer)
    tokenizer.save(str(path))
    return path


# The objective that gives a model each head, so a run folder written here rebuilds the same model.
OBJECTIVE_OF_HEAD = {"lm": "causal_lm", "masked_lm": "masked_lm", "sequence_classification": "classification",
                     "token_classification": "token_classification", "span": "span_qa"}


def tiny_model(seed: int = 0, head: HeadSpec = HeadSpec(LM_HEAD), **overrides) -> Model:
    """A random model whose norms and biases are perturbed too, so a mis-mapped norm or bias changes the outputs."""
    settings = dict(vocab_size=320, block_size=32, n_layer=2, n_head=4, d_model=32, init_std=0.2)
    settings.update(overrides)
    torch.manual_seed(seed)
    model = Model(ModelConfig(**settings), [head]).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.2)
    return model


def write_run(folder: Path, tokenizer_path: Path, model: Model, name: str = "tiny-test") -> Path:
    head = model.head_specs[0]
    config = RunConfig(name=name)
    config.model = model.config
    config.objective = ObjectiveConfig(name=OBJECTIVE_OF_HEAD[head.kind], labels=list(head.labels), pooling=head.pooling,
                                       head_transform=head.transform)
    save_inference_checkpoint(folder, model, config, tokenizer_path)
    return folder


CHAT_TEMPLATE = "<|{{role}}|>\n{{content}}\n"


def write_chat_task(folder: Path) -> Path:
    """A generation task of chats (messages_field) as sft learns them, with slmkit's default one-message template."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    chat = {"messages": [{"role": "user", "content": "Who decides the appeal?"}, {"role": "assistant", "content": "The court."}]}
    (folder / "chats.jsonl").write_text(json.dumps(chat) + "\n", encoding="utf-8")
    task = folder / "chat_task.yaml"
    task.write_text(
        "type: generation\n"
        f"data: {folder / 'chats.jsonl'}\n"
        f"train: {folder / 'chats.jsonl'}\n"
        "prompt: '{{messages}}'\n"
        "target: '{{messages}}'\n"
        "messages_field: messages\n"
        f"chat_template: {json.dumps(CHAT_TEMPLATE)}\n",
        encoding="utf-8",
    )
    return task


def write_chat_run(folder: Path, tokenizer_path: Path, model: Model, task: Path) -> Path:
    """A run folder of a model fine-tuned (objective sft) on the chats of `task`."""
    config = RunConfig(name="tiny-chat")
    config.model = model.config
    config.objective = ObjectiveConfig(name="sft", task=str(task))
    save_inference_checkpoint(folder, model, config, tokenizer_path)
    return folder
