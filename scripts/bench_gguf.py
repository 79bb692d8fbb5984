"""Benchmark: the deployment path. llama.cpp on slmkit's GGUF (fp32, q8_0, q4_0, q4_1) against slmkit generate (fp32,
int8) and transformers (fp32), in one run on the same threads: first-token latency, tokens/s, file size, and held-out
bits per byte of each format as the runtime that loads it computes them.

Not a test: figures go to docs/benchmarks.md. Needs the llamacpp extra (`make test-llamacpp` builds it).
Usage: python scripts/bench_gguf.py [--checkpoint RUN | --shape tiny|125m] [--new-tokens 128] [--repeats 3]
[--threads 2] [--heldout-task legal_heldout] [--heldout-tokens 8192]
Without --checkpoint the model is random at legal-tiny's or legal-125m's shape (bench_generate.SHAPES): speed does not
depend on the weights, bits per byte do, so they are measured on a trained run only.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import torch

from bench_generate import PROMPT, REPO, SHAPES, hf_runner, heldout_text, random_run, shared_dir, slmkit_runner, timed
from slmkit.checkpoint import load_checkpoint
from slmkit.export import ExportArgs, run_export
from slmkit.export.int8 import load_int8
from slmkit.export.measure import bits_per_byte, heldout_windows, size_on_disk
from slmkit.tokenizer import end_of_document_id

GGUF_FORMATS = ("fp32", "q8_0", "q4_0", "q4_1")


def llama_runner(llm, prompt_ids: list[int], n: int):
    """Greedy decoding of n tokens after the prompt, from an empty KV cache each time (no prompt reuse)."""
    def run():
        llm.reset()
        for count, _ in enumerate(llm.generate(prompt_ids, top_k=1, temp=0.0, reset=True), start=1):
            if count == n:
                break
    return run


def llama_logits(llm):
    """input_ids [1, T] -> logits [1, T, V] as llama.cpp computes them (its default f16 KV cache)."""
    def logits(ids: torch.Tensor) -> torch.Tensor:
        llm.reset()
        llm.eval(ids[0].tolist())
        return torch.from_numpy(llm.scores[: ids.shape[1]].copy())[None]
    return logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny", help="shape of the random model without --checkpoint")
    parser.add_argument("--heldout-task", help="a perplexity task whose text measures bits per byte (default: the run's)")
    parser.add_argument("--heldout-tokens", type=int, default=8192)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import llama_cpp
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shakespeare = (shared_dir() / "corpora/general/tinyshakespeare.txt").read_text(encoding="utf-8")
        run = Path(args.checkpoint) if args.checkpoint else random_run(tmp, shakespeare[:300000], args.shape)
        hf_dir = run_export(ExportArgs(checkpoint=str(run), out=str(tmp / "hf"), verify=False))
        int8_dir = run_export(ExportArgs(checkpoint=str(run), out=str(tmp / "int8"), format="int8"))
        gguf_files = {
            dtype: run_export(ExportArgs(checkpoint=str(run), out=str(tmp / f"gguf-{dtype}"), format="gguf", dtype=dtype)) / "model.gguf"
            for dtype in GGUF_FORMATS
        }
        fp32 = load_checkpoint(run)
        fp32.model.float().eval()
        int8 = load_int8(int8_dir)
        hf32 = AutoModelForCausalLM.from_pretrained(hf_dir, local_files_only=True).eval()
        c = fp32.config.model
        llms = {
            dtype: llama_cpp.Llama(str(path), n_ctx=c.block_size, n_batch=c.block_size, n_threads=args.threads,
                                   n_threads_batch=args.threads, logits_all=True, verbose=False)
            for dtype, path in gguf_files.items()
        }
        prompt_ids = fp32.tokenizer().encode(PROMPT, add_special_tokens=False).ids
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        print(f"date {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}  commit {commit or 'uncommitted'}")
        print(f"machine {platform.machine()} cpus={os.cpu_count()} threads={args.threads} torch {torch.__version__} "
              f"llama-cpp-python {llama_cpp.__version__}")
        print(f"model {fp32.config.name}: {fp32.model.num_parameters() / 1e6:.2f}M params, {c.n_layer} layers, "
              f"d_model {c.d_model}, vocab {c.vocab_size}")
        print(f"prompt {len(prompt_ids)} tokens, {args.new_tokens} new tokens, greedy, best of {args.repeats}\n")

        runners = [(f"llama.cpp gguf {dtype}", lambda n, llm=llm: llama_runner(llm, prompt_ids, n)) for dtype, llm in llms.items()]
        runners += [
            ("slmkit generate fp32", lambda n: slmkit_runner(fp32.model, prompt_ids, n)),
            ("slmkit generate int8", lambda n: slmkit_runner(int8.model, prompt_ids, n)),
            ("transformers fp32", lambda n: hf_runner(hf32, prompt_ids, n)),
        ]
        print(f"{'runtime':<26}{'first token ms':>16}{'tokens/s':>12}")
        with torch.no_grad():
            for label, runner in runners:
                runner(4)()  # warm-up
                first = timed(runner(1), args.repeats)
                total = timed(runner(args.new_tokens), args.repeats)
                print(f"{label:<26}{first * 1000:>16.1f}{args.new_tokens / total:>12.1f}", flush=True)

        sizes = [("fp32 safetensors (hf)", hf_dir / "model.safetensors"), ("int8 slmkit", int8_dir / "model.int8.safetensors")]
        sizes += [(f"gguf {dtype}", path) for dtype, path in gguf_files.items()]
        fp32_gguf = size_on_disk(gguf_files["fp32"])
        print(f"\n{'file':<24}{'MiB':>10}{'of gguf fp32':>14}")
        for label, path in sizes:
            print(f"{label:<24}{size_on_disk(path) / 2**20:>10.2f}{size_on_disk(path) / fp32_gguf:>14.1%}")

        if not args.checkpoint:
            return
        name, text = heldout_text(run, args.heldout_task, shakespeare)
        tokenizer = fp32.tokenizer()
        windows, n_bytes = heldout_windows(text, tokenizer, end_of_document_id(tokenizer), c.block_size, args.heldout_tokens)
        print(f"\nheld-out bits per byte: {name}, {n_bytes} bytes")
        base = bits_per_byte(fp32.model, windows, n_bytes)
        rows = [("slmkit fp32", base), ("slmkit int8", bits_per_byte(int8.model, windows, n_bytes))]
        rows += [(f"llama.cpp gguf {dtype}", bits_per_byte(llama_logits(llm), windows, n_bytes)) for dtype, llm in llms.items()]
        for label, bpb in rows:
            print(f"{label:<26}{bpb:>10.4f} ({bpb - base:+.4f})")


if __name__ == "__main__":
    main()
