"""The seed's GPT-2 fine-tuning side by side: recipe legal-from-gpt2 in slmkit vs the transformers Trainer, on the same
GPT-2 folder, the same windows in the same order, batch, steps, AdamW groups, learning-rate schedule, clipping and seed.

The Trainer reads exactly the windows slmkit's sampler draws (offsets seeded by (seed, step) over the same token
shards), with the same next-token loss over every position, so the two loss curves start from the same number and
differ only by the order of floating-point work. Throughput is tokens per second of whole optimizer steps (data
included), median over the steps after the first five.

    SLMKIT_SHARED=../shared python scripts/bench_gpt2_side_by_side.py [--folder path/to/gpt2] [--steps 60]

Without --folder it writes a GPT-2-shaped folder of random weights (4 layers x 256, 128 positions, a 4,096-token BPE
of the legal corpus); with a real GPT-2 folder it runs the same comparison on it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import REPO, SHARED  # noqa: E402

CORPUS = "legal/federal_rules.jsonl.gz"
WARMUP_STEPS = 5  # steps left out of the throughput medians (first-call allocation, thread start)


def write_random_gpt2(folder: Path, documents: int = 2000) -> None:
    """A GPT-2-shaped folder as transformers writes it, with a byte-level BPE of the legal corpus as its tokenizer."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    with gzip.open(SHARED / "corpora" / CORPUS, "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in islice(f, documents)]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=4096, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=tokenizer.get_vocab_size(), n_positions=128, n_embd=256, n_layer=4, n_head=4,
                        bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>").save_pretrained(folder)


def run_slmkit(folder: Path, out: Path, args) -> tuple:
    from slmkit.data import data_preparer
    from slmkit.recipe import resolve_recipe
    from slmkit.training.run import train

    config = resolve_recipe("legal-from-gpt2", [
        f"init_from={folder}", f"out_dir={out}", f"data.root={SHARED / 'corpora'}",
        f"data.sources=[{{name: federal_rules, path: {CORPUS}, max_documents: {args.documents}}}]",
        f"trainer.max_steps={args.steps}", f"trainer.micro_batch_size={args.batch}", "trainer.log_every=1",
        f"trainer.val_every={args.steps}", "trainer.val_batches=1", f"trainer.checkpoint_every={args.steps}",
        "trainer.progress_bar=false", f"trainer.seed={args.seed}", "eval.tasks=[]", "model.dropout=0.0",
        f"optim.warmup_steps={max(1, args.steps // 10)}",
    ])
    train(config)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "train_loss" in r]
    shards = data_preparer().prepare(config.data, config.tokenizer).shards_dir
    return config, shards, [r["train_loss"] for r in steps], [r["tokens_per_s"] for r in steps]


def run_trainer(folder: Path, config, shards: Path, args) -> tuple:
    """The transformers Trainer on slmkit's windows, optimizer groups and schedule."""
    import torch
    import torch.nn.functional as F
    from transformers import GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments, set_seed

    from slmkit.data import TokenShards
    from slmkit.training.datamodule import StepSeededOffsets, TokenWindows
    from slmkit.training.optimizers import decay_groups
    from slmkit.training.schedule import learning_rate

    block = config.model.block_size
    windows = TokenWindows(TokenShards(shards, "train"), block)
    offsets = list(islice(iter(StepSeededOffsets(len(windows), args.batch, 0, 1, args.seed)), args.steps * args.batch))
    examples = [windows[o] for o in offsets]  # {input_ids, targets}, in slmkit's order

    class Windows(torch.utils.data.Dataset):
        def __len__(self):
            return len(examples)

        def __getitem__(self, i):
            return examples[i]

    class NextTokenTrainer(Trainer):
        def _get_train_sampler(self, *unused):
            return torch.utils.data.SequentialSampler(self.train_dataset)  # slmkit's order, not a reshuffle

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            logits = model(input_ids=inputs["input_ids"]).logits
            loss = F.cross_entropy(logits.float().flatten(0, 1), inputs["targets"].flatten())
            return (loss, logits) if return_outputs else loss

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times = [time.perf_counter()]

        def on_step_end(self, *unused, **kwargs):
            self.times.append(time.perf_counter())

    set_seed(args.seed)
    model = GPT2LMHeadModel.from_pretrained(folder, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    optim = config.optim
    optimizer = torch.optim.AdamW(decay_groups(list(model.parameters()), optim.weight_decay), lr=optim.lr,
                                  betas=(optim.beta1, optim.beta2), eps=optim.eps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate(step, optim, args.steps) / optim.lr)
    times = StepTimes()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = NextTokenTrainer(
            model=model,
            args=TrainingArguments(output_dir=tmp, max_steps=args.steps, per_device_train_batch_size=args.batch,
                                   logging_steps=1, seed=args.seed, max_grad_norm=config.trainer.grad_clip,
                                   report_to=[], save_strategy="no", use_cpu=True, dataloader_num_workers=0,
                                   disable_tqdm=True, remove_unused_columns=False),
            train_dataset=Windows(), optimizers=(optimizer, schedule), callbacks=[times])
        times.times = [time.perf_counter()]
        trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    tokens = args.batch * block
    rates = [tokens / (b - a) for a, b in zip(times.times, times.times[1:])]
    return losses, rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", help="a GPT-2 transformers folder (default: a random GPT-2-shaped one)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--documents", type=int, default=400, help="legal documents to prepare")
    parser.add_argument("--out", default=str(REPO / "runs" / "bench-gpt2-side-by-side"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folder = Path(args.folder) if args.folder else out / "gpt2-random"
    if not args.folder and not (folder / "config.json").is_file():
        write_random_gpt2(folder)
    run = out / f"slmkit-{time.strftime('%Y%m%d-%H%M%S')}"
    config, shards, ours, our_rates = run_slmkit(folder, run, args)
    theirs, their_rates = run_trainer(folder, config, shards, args)
    diffs = [abs(a - b) for a, b in zip(ours, theirs)]
    ours_speed = statistics.median(our_rates[WARMUP_STEPS:])
    their_speed = statistics.median(their_rates[WARMUP_STEPS:])
    summary = {
        "steps": args.steps, "batch": args.batch, "block": config.model.block_size, "seed": args.seed,
        "first_loss": [ours[0], theirs[0]], "last10_mean_loss": [statistics.mean(ours[-10:]), statistics.mean(theirs[-10:])],
        "max_abs_loss_diff": max(diffs), "mean_abs_loss_diff": statistics.mean(diffs),
        "tokens_per_s": [ours_speed, their_speed], "ratio": ours_speed / their_speed,
        "losses": {"slmkit": ours, "trainer": theirs},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"loss step 1: slmkit {ours[0]:.4f}, Trainer {theirs[0]:.4f}; last 10 steps: slmkit "
          f"{summary['last10_mean_loss'][0]:.4f}, Trainer {summary['last10_mean_loss'][1]:.4f}; |diff| max "
          f"{max(diffs):.4f} mean {summary['mean_abs_loss_diff']:.4f}")
    print(f"tokens/s (median of steps {WARMUP_STEPS + 1}-{args.steps}): slmkit {ours_speed:.0f}, Trainer {their_speed:.0f}, "
          f"ratio {summary['ratio']:.2f}x")


if __name__ == "__main__":
    main()
