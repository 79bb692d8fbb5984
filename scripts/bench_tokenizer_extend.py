"""Domain vocabulary benchmark (tokenizer.extend), on the CPU: a legal-tiny base extended toward the finance corpus
with 0, 256 and 1024 tokens — vocabulary size, bytes per token on held-out finance text, and bits per byte at step 0.

    SLMKIT_SHARED=../shared python scripts/bench_tokenizer_extend.py [--base RUN] [--base-steps 150]

Without --base it trains legal-tiny for --base-steps steps first (a subprocess, into runs/bench-tokenizer-extend/).
Each size goes the way `slmkit train recipe=finance-from-legal-tiny init_from=BASE tokenizer.extend=N` starts: the
data prepared with the (extended) tokenizer, the model built, init_from's weights loaded and, with new tokens, grown.
Held-out text is the finance validation split (the same documents for every size: the split is by document). Bits
per byte are the loss of that starting model on the same text, so sizes compare like for like.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from bench_common import REPO, slmkit, slmkit_env

RECIPE = "finance-from-legal-tiny"


def base_run(given: str | None, steps: int) -> Path:
    if given:
        return Path(given).resolve()
    out = REPO / "runs" / "bench-tokenizer-extend" / "legal-tiny-base"
    if not (out / "model.safetensors").is_file():
        slmkit("train", "recipe=legal-tiny", f"out_dir={out}", f"trainer.max_steps={steps}", "eval.tasks=[]",
               "trainer.progress_bar=false")
    return out


def heldout_texts(shards_dir: Path, tokenizer, eos: int, max_chars: int) -> list[str]:
    """The validation split's documents (cut between end-of-document tokens), up to max_chars characters."""
    from slmkit.data import TokenShards

    shards = TokenShards(shards_dir, "val")
    ids = np.asarray(shards.window(0, len(shards)))
    texts, size = [], 0
    for document in np.split(ids, np.flatnonzero(ids == eos)):
        text = tokenizer.decode([int(i) for i in document if i != eos])
        if text:
            texts.append(text[: max_chars - size])
            size += len(texts[-1])
        if size >= max_chars:
            break
    return texts


def measure(base: Path, added: int, texts: list[str] | None, max_chars: int) -> tuple[dict, list[str]]:
    from data_prep.tokenizer import bytes_per_token
    from slmkit.checkpoint import build_model
    from slmkit.export.measure import bits_per_byte, heldout_windows
    from slmkit.objectives import OBJECTIVES
    from slmkit.recipe import resolve_recipe
    from slmkit.tokenizer import end_of_document_id, load_tokenizer
    from slmkit.training.run import prepare_inputs, start_weights

    start = time.perf_counter()
    config = resolve_recipe(RECIPE, [f"init_from={base}", f"tokenizer.extend={added}"])
    objective_class = OBJECTIVES.get(config.objective.name)
    inputs = prepare_inputs(config, objective_class)
    config = inputs.config
    tokenizer = load_tokenizer(inputs.tokenizer_path)
    eos = end_of_document_id(tokenizer)
    torch.manual_seed(config.trainer.seed)
    model = build_model(config)
    start_weights(config, model, objective_class(config, tokenizer), None, inputs)
    model.eval()
    if texts is None:
        texts = heldout_texts(inputs.shards_dir, tokenizer, eos, max_chars)
    nll_bits = n_bytes = 0.0
    for text in texts:
        windows, size = heldout_windows(text, tokenizer, eos, config.model.block_size, max_tokens=10**9)
        nll_bits += bits_per_byte(model, windows, size) * size
        n_bytes += size
    row = {"added": added, "vocab_size": config.model.vocab_size, "bytes_per_token": bytes_per_token(tokenizer, texts),
           "bits_per_byte": nll_bits / n_bytes, "heldout_bytes": int(n_bytes), "seconds": time.perf_counter() - start}
    print(row, flush=True)
    return row, texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="a trained legal-tiny run (default: train one for --base-steps steps)")
    parser.add_argument("--base-steps", type=int, default=150, help="steps of the legal-tiny base when it is trained here")
    parser.add_argument("--sizes", default="0,256,1024", help="tokens added, comma-separated (0 = the base tokenizer)")
    parser.add_argument("--heldout-chars", type=int, default=400_000, help="held-out finance characters scored")
    args = parser.parse_args()
    os.environ.update(slmkit_env())
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    base = base_run(args.base, args.base_steps)
    rows, texts = [], None
    for added in (int(n) for n in args.sizes.split(",")):
        row, texts = measure(base, added, texts, args.heldout_chars)
        rows.append(row)
    first = rows[0]
    print(f"\nbase: {base}; held-out finance text: {len(texts)} documents, {first['heldout_bytes']:,} bytes\n")
    print("| tokens added | vocabulary | bytes/token (held-out finance) | bits/byte at step 0 |")
    print("|---:|---:|---:|---:|")
    for row in rows:
        gain = row["bytes_per_token"] / first["bytes_per_token"] - 1
        print(f"| {row['added']} | {row['vocab_size']:,} | {row['bytes_per_token']:.3f}"
              f"{f' ({gain:+.1%})' if row is not first else ''} | {row['bits_per_byte']:.4f} |")


if __name__ == "__main__":
    main()
