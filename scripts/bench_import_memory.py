"""Peak memory of importing a transformers model: a GPT-2-124M-shaped folder of random weights, imported into slmkit.

A fresh process reads its anonymous resident memory (its own allocations) after the imports, after building the slmkit
model (one copy of the weights) and, sampled every millisecond, while the folder's tensors stream in. What the import
adds over the built model is the figure: one tensor at a time, never a second copy. The memory-mapped safetensors file
shows as file-backed pages (page cache), reported apart.

    python scripts/bench_import_memory.py [--folder PATH]   (without --folder, writes a random one to a temp dir)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 2**20


def resident() -> dict[str, float]:
    """This process's resident memory (MiB) by kind: anonymous (its own allocations) and file-backed (mapped files,
    here the memory-mapped safetensors file: page cache the kernel can drop, not a copy the process holds)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("RssAnon", "RssFile"):
            fields[name] = int(value.split()[0]) / 1024
    return fields


def measure(folder: str) -> dict[str, float]:
    """Resident memory after the imports and after building the model, and its peaks while importing (sampled
    every millisecond by a thread)."""
    import threading

    import torch  # noqa: F401
    import transformers  # noqa: F401

    from slmkit.checkpoint.hf_import import describe_import, import_weights
    from slmkit.model import Model

    imported = describe_import(folder)
    after_imports = resident()
    model = Model(imported.model, [imported.head])
    after_model = resident()
    peaks = dict(after_model)
    done = threading.Event()

    def sample():
        while not done.is_set():
            for name, value in resident().items():
                peaks[name] = max(peaks[name], value)
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    import_weights(model, imported, folder)
    done.set()
    sampler.join()
    return {"imports_anon": after_imports["RssAnon"], "model_anon": after_model["RssAnon"],
            "peak_anon": peaks["RssAnon"], "peak_file": peaks["RssFile"] - after_model["RssFile"],
            "parameters_mib": sum(p.numel() * p.element_size() for p in model.parameters()) / MIB}


def write_folder(folder: Path) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config()).save_pretrained(folder)  # 124M parameters, GPT-2's own shape
    vocab = {f"t{i}": i for i in range(50256)} | {"<|endoftext|>": 50256}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>").save_pretrained(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", help="a transformers folder (default: a random GPT-2-124M one)")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.folder)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or str(Path(tmp) / "gpt2")
        if not args.folder:
            write_folder(Path(folder))
        weights = sum(p.stat().st_size for p in Path(folder).glob("*.safetensors")) / MIB
        out = subprocess.run([sys.executable, __file__, "--measure", "--folder", folder], capture_output=True, text=True,
                             check=True).stdout  # a fresh process: its peak is the import's alone
    m = json.loads(out.strip().splitlines()[-1])
    print(f"weights file {weights:.0f} MiB, model parameters {m['parameters_mib']:.0f} MiB; anonymous resident memory: "
          f"after imports {m['imports_anon']:.0f} MiB, model built {m['model_anon']:.0f} MiB "
          f"(+{m['model_anon'] - m['imports_anon']:.0f}), peak while importing {m['peak_anon']:.0f} MiB "
          f"(+{m['peak_anon'] - m['model_anon']:.0f} over the built model); the mapped weights file added up to "
          f"{m['peak_file']:.0f} MiB of page cache")

if __name__ == "__main__":
    main()
