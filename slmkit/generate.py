"""`slmkit generate`: sampling from a checkpoint with a KV cache — temperature, top-k, top-p, repetition penalty,
stop strings, streaming to the terminal, and a batch mode over a prompts file (one prompt per line).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from slmkit.atomic import atomic_write_text, check_writable
from slmkit.checkpoint import LoadedCheckpoint, load_checkpoint
from slmkit.decoding import Sampling, check_language_model, cut_at_stop, generate_ids
from slmkit.errors import SlmkitError
from slmkit.options import SEED, above, at_least, between, option
from slmkit.tokenizer import end_of_document_id


@dataclass
class GenerateArgs:
    checkpoint: str = option("", "Run folder, checkpoint, or int8 export folder to sample from.")
    prompt: Optional[str] = option(None, "Text to continue.")
    prompts_file: Optional[str] = option(None, "Batch mode: a text file with one prompt per line (\\n inside a line is a newline).")
    out: Optional[str] = option(None, "Batch mode: write {prompt, completion} JSON lines here instead of printing.")
    max_new_tokens: int = option(128, "Most tokens to generate per prompt (fewer if the model's context fills up).", bounds=at_least(1))
    temperature: float = option(0.8, "Softmax temperature; 0 = greedy (always the most likely token).", bounds=at_least(0))
    top_k: int = option(0, "Sample among the k most likely tokens only; 0 = no limit.", bounds=at_least(0))
    top_p: float = option(1.0, "Nucleus sampling: the smallest set of tokens whose probability reaches top_p; 1.0 = off.", bounds=between(0, 1, low_open=True))
    repetition_penalty: float = option(1.0, "Divide positive (multiply negative) logits of tokens already present; 1.0 = off.", bounds=above(0))
    stop: list[str] = option([], "Stop when any of these strings appears in the output (it is cut off there).")
    seed: int = option(1337, "Random seed of sampling.", bounds=SEED)
    device: str = option("cpu", "Device to run on: cpu, cuda, cuda:1, ...")
    stream: bool = option(True, "Print text as it is generated (single prompt) instead of at the end.")


def generate_text(
    loaded: LoadedCheckpoint, prompt: str, max_new_tokens: int, sampling: Sampling, stop: list[str] = (),
    seed: int = 1337, on_text: Callable[[str], None] | None = None,
) -> str:
    """The completion of `prompt` (without it), cut before the first stop string; `on_text` receives it in pieces."""
    tokenizer = loaded.tokenizer()
    eos_id = end_of_document_id(tokenizer)
    generator = torch.Generator(device=loaded.model.body.tok_embeddings.weight.device).manual_seed(seed)
    ids: list[int] = []
    shown = 0
    text = ""
    hold = max((len(s) for s in stop), default=1) - 1
    for token in generate_ids(loaded.model, tokenizer.encode(prompt, add_special_tokens=False).ids, max_new_tokens, sampling, eos_id, generator):
        if token == eos_id:
            break
        ids.append(token)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        text, stopped = cut_at_stop(text, stop)
        if stopped:
            break
        # Show only what is settled: not a half-decoded UTF-8 character, not what could still begin a stop string.
        settled = len(text) - hold if stop else len(text)
        if text.endswith("\ufffd"):
            settled = min(settled, len(text) - 1)
        if on_text and settled > shown:
            on_text(text[shown:settled])
            shown = settled
    if on_text and len(text) > shown:
        on_text(text[shown:])
    return text


def load_for_generation(path: str, device: str = "cpu") -> LoadedCheckpoint:
    """A checkpoint or run folder, or an int8 export folder (CPU only)."""
    from slmkit.eval.run import device_of
    from slmkit.export.int8 import is_int8_folder, load_int8

    target = device_of(device)  # a device this machine lacks is refused before anything loads
    if is_int8_folder(Path(path)):
        if target.type != "cpu":
            raise SlmkitError("an int8 export runs on CPU only (torch's dynamic int8 kernels); pass device=cpu")
        return load_int8(path)
    return load_checkpoint(path, map_location=target)


def read_prompts(path: str) -> list[str]:
    file = Path(path)
    if not file.is_file():
        raise SlmkitError(f"prompts_file={path} is not a file; give a text file with one prompt per line")
    prompts = [line.replace("\\n", "\n") for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise SlmkitError(f"prompts_file={path} holds no prompts (one per non-empty line)")
    return prompts


def run_generate(args: GenerateArgs) -> list[str]:
    """Generates for args.prompt or every line of args.prompts_file; prints (or writes) and returns the completions."""
    if not args.checkpoint:
        raise SlmkitError("generate needs checkpoint=PATH, e.g. slmkit generate checkpoint=runs/legal-tiny/latest prompt='The court'")
    if (args.prompt is None) == (args.prompts_file is None):
        raise SlmkitError("give exactly one of prompt='...' or prompts_file=FILE")
    sampling = Sampling(args.temperature, args.top_k, args.top_p, args.repetition_penalty).check()
    if args.out:
        check_writable(args.out, "out")  # before the work, not after it
    loaded = load_for_generation(args.checkpoint, args.device)
    check_language_model(loaded.model)  # before anything is printed: an encoder's error must not follow the prompt
    loaded.model.eval()
    if args.prompt is not None:
        on_text = None
        if args.stream:
            sys.stdout.write(args.prompt)
            on_text = lambda piece: (sys.stdout.write(piece), sys.stdout.flush())  # noqa: E731
        text = generate_text(loaded, args.prompt, args.max_new_tokens, sampling, args.stop, args.seed, on_text)
        sys.stdout.write("\n" if args.stream else args.prompt + text + "\n")
        return [text]
    prompts = read_prompts(args.prompts_file)
    # One prompt at a time: the model has no padding mask, and prompts of different lengths cannot share a batch exactly.
    completions = [generate_text(loaded, p, args.max_new_tokens, sampling, args.stop, args.seed + i) for i, p in enumerate(prompts)]
    if args.out:
        atomic_write_text(args.out, "".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in zip(prompts, completions)))
    else:
        for prompt, completion in zip(prompts, completions):
            sys.stdout.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")
    return completions
