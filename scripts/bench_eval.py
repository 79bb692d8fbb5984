"""Examples per second of slmkit's eval harness and of lm-evaluation-harness, on the same model and task, in one run.

Three timings per task: slmkit's harness; lm-eval driving the slmkit model through SlmkitLM (lm-eval's request
handling around slmkit's scorer); lm-eval's own HFLM on the same weights exported with `slmkit export format=hf`.
lm-eval gets the exact contexts, choices and gold answers slmkit built, so both score the same requests.

    SLMKIT_SHARED=../shared python scripts/bench_eval.py [--checkpoint RUN] [--tasks T ...] [--limit N] [--batch-size B]

Without --checkpoint a model is built for the purpose: a byte-level BPE tokenizer trained on D.C. Code sections and
a randomly initialised Transformer (speed does not depend on the weights; its accuracies mean nothing).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from slmkit.checkpoint import load_checkpoint, save_inference_checkpoint  # noqa: E402
from slmkit.config import RunConfig  # noqa: E402
from slmkit.eval import resolve_task, run_tasks  # noqa: E402
from slmkit.eval.task import TASK_TYPES, RunSettings  # noqa: E402
from slmkit.model import Model, ModelConfig  # noqa: E402


def build_model(folder: Path, shared: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = []
    with gzip.open(shared / "corpora/legal/dc_code_sections.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            if len(texts) == 2000:
                break
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=4096, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer.save(str(folder / "bench-tokenizer.json"))
    config = ModelConfig(vocab_size=4096, block_size=512, n_layer=4, n_head=4, d_model=256)
    torch.manual_seed(0)
    save_inference_checkpoint(folder / "run", Model(config), RunConfig(name="bench-eval", model=config), folder / "bench-tokenizer.json")
    return folder / "run"


def lm_eval_task(name: str, examples, folder: Path) -> dict:
    data = folder / f"{name.replace('/', '_')}.jsonl"
    data.write_text("".join(json.dumps({"context": e.context, "choices": e.choices, "gold": e.gold}) + "\n" for e in examples))
    return {
        "task": f"bench_{name.replace('/', '_')}", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{context}}", "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{gold}}", "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }


def time_lm_eval(lm, task: dict) -> tuple[float, float]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    started = time.perf_counter()
    results = simple_evaluate(model=lm, tasks=[task], bootstrap_iters=0, task_manager=TaskManager(include_defaults=False))
    return time.perf_counter() - started, results["results"][task["task"]]["acc,none"]


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True).stdout.strip()
        return out + ("+uncommitted changes" if dirty else "")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "no commit yet"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="slmkit run folder; default: build a small random model")
    parser.add_argument("--tasks", nargs="+", default=["legalbench_2023/hearsay", "medmcqa"])
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shared = Path(os.environ.get("SLMKIT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    os.environ["SLMKIT_SHARED"] = str(shared)

    from lm_eval.models.huggingface import HFLM

    from slmkit.eval.lm_eval_adapter import SlmkitLM
    from slmkit.export import ExportArgs, run_export

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        run = Path(args.checkpoint) if args.checkpoint else build_model(folder, shared)
        loaded = load_checkpoint(run, map_location=args.device)
        model, tokenizer = loaded.model, loaded.tokenizer()
        run_export(ExportArgs(checkpoint=str(run), out=str(folder / "hf"), format="hf"))
        hf = HFLM(pretrained=str(folder / "hf"), batch_size=args.batch_size, device=args.device, dtype="float32", add_bos_token=True)
        adapter = SlmkitLM(model=model, tokenizer=tokenizer, batch_size=args.batch_size)
        c = model.config
        gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "none"
        print(f"date {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')} | commit {commit()}")
        print(f"machine {platform.node()} | {platform.processor() or platform.machine()} | {os.cpu_count()} cores, "
              f"torch threads {torch.get_num_threads()} | GPU {gpu} | torch {torch.__version__}")
        print(f"model {model.num_parameters() / 1e6:.1f}M params, {c.n_layer} layers, d_model {c.d_model}, window {c.block_size}, "
              f"vocab {c.vocab_size} | device {args.device} | batch size {args.batch_size} | limit {args.limit}\n")
        print("| task | n | slmkit ex/s | lm-eval + SlmkitLM ex/s | lm-eval HFLM ex/s | acc slmkit / SlmkitLM / HFLM |")
        print("|---|---:|---:|---:|---:|---|")
        settings = RunSettings(limit=args.limit)
        # Warm-up: lm-eval's first call imports and initialises its dataset machinery; keep that out of the timings.
        warm_spec = resolve_task(args.tasks[0])
        warm = lm_eval_task("warmup", TASK_TYPES.get(warm_spec.type).examples(warm_spec, RunSettings(limit=2)), folder)
        for lm in (adapter, hf):
            time_lm_eval(lm, warm)
        run_tasks(model, tokenizer, [args.tasks[0]], RunSettings(limit=2), batch_size=args.batch_size)
        for name in args.tasks:
            spec = resolve_task(name)
            task_type = TASK_TYPES.get(spec.type)
            if not hasattr(task_type, "examples"):
                raise SystemExit(f"{name} is a {spec.type} task; the benchmark compares choice tasks (multiple_choice, classification)")
            task = lm_eval_task(name, task_type.examples(spec, settings), folder)
            started = time.perf_counter()
            result = run_tasks(model, tokenizer, [name], settings, batch_size=args.batch_size)[0]
            ours = time.perf_counter() - started
            adapter_s, adapter_acc = time_lm_eval(adapter, task)
            hf_s, hf_acc = time_lm_eval(hf, task)
            n = result.n
            print(f"| {name} | {n} | {n / ours:.1f} | {n / adapter_s:.1f} | {n / hf_s:.1f} | "
                  f"{result.metrics['acc'].value:.3f} / {adapter_acc:.3f} / {hf_acc:.3f} |", flush=True)


if __name__ == "__main__":
    main()
