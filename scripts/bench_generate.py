"""Benchmark: slmkit generate vs transformers generate on the exported model, fp32 vs int8, same prompt and machine.

Also prints size on disk and held-out bits per byte of fp32 / int8 / GGUF exports. Not a test: figures go to
docs/benchmarks.md. Usage: python scripts/bench_generate.py [--checkpoint RUN | --shape tiny|125m] [--new-tokens 128]
[--repeats 3] [--heldout-task legal_heldout]
Without --checkpoint it benchmarks a randomly initialised model: legal-tiny's shape (4 layers, d_model 256) or
legal-125m's (12 layers, d_model 768, GQA 12/4, vocab 32000, untied; speed does not depend on the weights).
Held-out bits per byte are measured on a perplexity task's text (the model's own domain: legal_heldout for a legal
run, the default when the run's recipe evaluates on it), else on the last 20,000 characters of tiny Shakespeare.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from slmkit.checkpoint import load_checkpoint, save_inference_checkpoint
from slmkit.config import RunConfig
from slmkit.export import ExportArgs, run_export
from slmkit.export.measure import bits_per_byte, heldout_windows, size_on_disk
from slmkit.export.int8 import load_int8
from slmkit.decoding import Sampling, generate_ids
from slmkit.model import Model, ModelConfig

REPO = Path(__file__).resolve().parents[1]
PROMPT = "The court held that the statute"


def shared_dir() -> Path:
    return Path(os.environ.get("SLMKIT_SHARED", REPO.parent / "shared"))


SHAPES = {
    "tiny": dict(vocab_size=4096, block_size=512, n_layer=4, n_head=4, d_model=256),
    "125m": dict(vocab_size=32000, block_size=1024, n_layer=12, n_head=12, n_kv_heads=4, d_model=768, tie_embeddings=False),
}


def random_run(folder: Path, text: str, shape: str) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator([text], trainers.BpeTrainer(
        vocab_size=SHAPES[shape]["vocab_size"], special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    ))
    tokenizer.save(str(folder / "tokenizer.json"))
    config = RunConfig(name=f"{shape}-shape-random")
    config.model = ModelConfig(**SHAPES[shape])
    torch.manual_seed(0)
    save_inference_checkpoint(folder / "run", Model(config.model), config, folder / "tokenizer.json")
    return folder / "run"


def heldout_text(run: Path, task: str | None, shakespeare: str) -> tuple[str, str]:
    """(name, text) of held-out text in the model's domain: a perplexity task's documents, up to 60,000 characters."""
    from slmkit.checkpoint import CONFIG_FILE
    from slmkit.config import load_run_config
    from slmkit.eval import resolve_task
    from slmkit.eval.records import read_records

    if task is None and (run / CONFIG_FILE).is_file():
        task = next((t for t in load_run_config(run / CONFIG_FILE).eval.tasks if resolve_task(t).type == "perplexity"), None)
    if task is None:
        return "last 20,000 chars of tinyshakespeare", shakespeare[-20000:]
    spec = resolve_task(task)
    if spec.type != "perplexity":
        raise SystemExit(f"--heldout-task {task} is a {spec.type} task; give a perplexity task (e.g. legal_heldout)")
    records = read_records(spec.options.data, task, spec.options.text_field)
    return f"task {task}", "\n\n".join(r[spec.options.text_field] for r in records)[:60000]


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def slmkit_runner(model, prompt_ids, n):
    return lambda: list(generate_ids(model, prompt_ids, n, Sampling(temperature=0.0)))


def hf_runner(model, prompt_ids, n):
    ids = torch.tensor([prompt_ids])
    return lambda: model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny", help="shape of the random model without --checkpoint")
    parser.add_argument("--heldout-task", help="a perplexity task whose text measures bits per byte (default: the run's, if any)")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    text = (shared_dir() / "corpora/general/tinyshakespeare.txt").read_text(encoding="utf-8")

    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = Path(args.checkpoint) if args.checkpoint else random_run(tmp, text[:300000], args.shape)
        heldout_name, heldout = heldout_text(run, args.heldout_task, text)
        hf_dir = run_export(ExportArgs(checkpoint=str(run), out=str(tmp / "hf")))
        int8_dir = run_export(ExportArgs(checkpoint=str(run), out=str(tmp / "int8"), format="int8"))
        gguf_dirs = {}
        for dtype in ("fp32", "q8_0"):
            try:
                gguf_dirs[dtype] = run_export(ExportArgs(checkpoint=str(run), out=str(tmp / f"gguf-{dtype}"), format="gguf", dtype=dtype))
            except Exception as err:  # a model without an exact GGUF form: say so and go on
                print(f"gguf {dtype}: not written ({err})")

        fp32 = load_checkpoint(run)
        int8 = load_int8(int8_dir)
        hf32 = AutoModelForCausalLM.from_pretrained(hf_dir, local_files_only=True).eval()
        hf8 = torch.ao.quantization.quantize_dynamic(
            AutoModelForCausalLM.from_pretrained(hf_dir, local_files_only=True).eval(), {torch.nn.Linear}, dtype=torch.qint8
        )
        prompt_ids = fp32.tokenizer().encode(PROMPT).ids
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        print(f"date {datetime.datetime.now().isoformat(timespec='seconds')}  commit {commit or 'uncommitted'}")
        print(f"machine {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} torch threads={args.threads} torch {torch.__version__}")
        c = fp32.config.model
        print(f"model {fp32.config.name}: {fp32.model.num_parameters() / 1e6:.2f}M params, {c.n_layer} layers, d_model {c.d_model}, vocab {c.vocab_size}")
        print(f"prompt {len(prompt_ids)} tokens, {args.new_tokens} new tokens, greedy, best of {args.repeats}\n")
        print(f"{'runtime':<28}{'first token ms':>16}{'tokens/s':>12}")
        with torch.no_grad():
            for label, runner in [
                ("slmkit generate fp32", lambda n: slmkit_runner(fp32.model, prompt_ids, n)),
                ("slmkit generate int8", lambda n: slmkit_runner(int8.model, prompt_ids, n)),
                ("transformers generate fp32", lambda n: hf_runner(hf32, prompt_ids, n)),
                ("transformers generate int8", lambda n: hf_runner(hf8, prompt_ids, n)),
            ]:
                runner(4)()  # warm-up
                first = timed(runner(1), args.repeats)
                total = timed(runner(args.new_tokens), args.repeats)
                print(f"{label:<28}{first * 1000:>16.1f}{args.new_tokens / total:>12.1f}")

        windows, n_bytes = heldout_windows(heldout, fp32.tokenizer(), 0, c.block_size, 8192)
        print(f"\nheld-out: {heldout_name} ({n_bytes} bytes)")
        print(f"{'format':<22}{'size on disk MiB':>18}{'bits/byte':>12}")
        base = bits_per_byte(fp32.model, windows, n_bytes)
        rows = [("fp32 safetensors (hf)", size_on_disk(hf_dir / "model.safetensors"), base),
                ("int8 slmkit", size_on_disk(int8_dir / "model.int8.safetensors"), bits_per_byte(int8.model, windows, n_bytes))]
        from slmkit.export.gguf import gguf_logits
        from slmkit.export.targets import select_target
        from slmkit.export.tokenizer_files import special_tokens

        specials = special_tokens(fp32.tokenizer_path, fp32.config.tokenizer.special_tokens)
        for dtype, folder in gguf_dirs.items():
            logits = gguf_logits(folder / "model.gguf", c, select_target(c), specials)
            rows.append((f"gguf {dtype}", size_on_disk(folder / "model.gguf"), bits_per_byte(logits, windows, n_bytes)))
        for label, size, bpb in rows:
            print(f"{label:<22}{size / 2**20:>18.2f}{bpb:>12.4f} ({bpb - base:+.4f})")


if __name__ == "__main__":
    main()
