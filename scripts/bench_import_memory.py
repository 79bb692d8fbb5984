"""Peak memory of importing a transformers model: a GPT-2-124M-shaped folder of random weights, imported into slmkit.

Each stage runs in a fresh process and reports its peak resident memory (ru_maxrss): Python with torch and
transformers imported; plus the slmkit model built (one copy of the weights); plus the folder's tensors streamed in.
What the import adds over the built model is the figure: one tensor at a time, never a second copy of the weights.

    python scripts/bench_import_memory.py [--folder PATH]   (without --folder, writes a random one to a temp dir)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

MIB = 2**20


def measure(folder: str) -> dict[str, float]:
    """Resident memory (MiB) after the imports and after building the model, and the peak while importing."""
    import psutil
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from slmkit.checkpoint.hf_import import describe_import, import_weights
    from slmkit.model import Model

    process = psutil.Process()
    imported = describe_import(folder)
    after_imports = process.memory_info().rss / MIB
    model = Model(imported.model, [imported.head])
    after_model = process.memory_info().rss / MIB
    before_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    import_weights(model, imported, folder)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if peak <= before_peak:
        raise SystemExit("the process peaked before the import: its figure cannot be read from ru_maxrss")
    return {"imports": after_imports, "model": after_model, "peak": peak,
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
    print(f"weights file {weights:.0f} MiB, model parameters {m['parameters_mib']:.0f} MiB; resident: after imports "
          f"{m['imports']:.0f} MiB, model built {m['model']:.0f} MiB (+{m['model'] - m['imports']:.0f}), peak while "
          f"importing {m['peak']:.0f} MiB (+{m['peak'] - m['model']:.0f} over the built model)")


if __name__ == "__main__":
    main()
