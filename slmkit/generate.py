"""`slmkit generate`: sampling from a checkpoint with a KV cache — temperature, top-k, top-p, repetition penalty,
stop strings, streaming to the terminal, and a batch mode over a prompts file (one prompt per line).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

from slmkit.checkpoint import LoadedCheckpoint, load_checkpoint
from slmkit.errors import SlmkitError
from slmkit.options import option


@dataclass
class GenerateArgs:
    checkpoint: str = option("", "Run folder, checkpoint, or int8 export folder to sample from.")
    prompt: Optional[str] = option(None, "Text to continue.")
    prompts_file: Optional[str] = option(None, "Batch mode: a text file with one prompt per line (\\n inside a line is a newline).")
    out: Optional[str] = option(None, "Batch mode: write {prompt, completion} JSON lines here instead of printing.")
    max_new_tokens: int = option(128, "Most tokens to generate per prompt (fewer if the model's context fills up).")
    temperature: float = option(0.8, "Softmax temperature; 0 = greedy (always the most likely token).")
    top_k: int = option(0, "Sample among the k most likely tokens only; 0 = no limit.")
    top_p: float = option(1.0, "Nucleus sampling: the smallest set of tokens whose probability reaches top_p; 1.0 = off.")
    repetition_penalty: float = option(1.0, "Divide positive (multiply negative) logits of tokens already present; 1.0 = off.")
    stop: list[str] = option([], "Stop when any of these strings appears in the output (it is cut off there).")
    seed: int = option(1337, "Random seed of sampling.")
    device: str = option("cpu", "Device to run on: cpu, cuda, cuda:1, ...")
    stream: bool = option(True, "Print text as it is generated (single prompt) instead of at the end.")


@dataclass
class Sampling:
    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def check(self) -> "Sampling":
        if self.temperature < 0:
            raise SlmkitError(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
        if self.top_k < 0:
            raise SlmkitError(f"top_k={self.top_k} must be >= 0 (0 = no limit)")
        if not 0 < self.top_p <= 1:
            raise SlmkitError(f"top_p={self.top_p} must be in (0, 1]")
        if self.repetition_penalty <= 0:
            raise SlmkitError(f"repetition_penalty={self.repetition_penalty} must be > 0 (1.0 = off)")
        return self


def next_token(logits: torch.Tensor, seen: torch.Tensor, s: Sampling, generator: torch.Generator | None) -> torch.Tensor:
    """Picks the next token [B] from logits [B, V]; `seen` [B, N] holds the ids so far (for the repetition penalty).

    Processing order as transformers: repetition penalty, temperature, top-k, top-p, then sample (or argmax).
    """
    logits = logits.float()
    if s.repetition_penalty != 1.0:
        picked = logits.gather(1, seen)
        picked = torch.where(picked > 0, picked / s.repetition_penalty, picked * s.repetition_penalty)
        logits = logits.scatter(1, seen, picked)
    if s.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / s.temperature
    if s.top_k:
        kth = torch.topk(logits, min(s.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already reach top_p; the most likely one always stays.
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= s.top_p
        logits = logits.masked_fill(drop_sorted.scatter(1, order, drop_sorted), float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@torch.no_grad()
def generate_ids(
    model, prompt_ids: list[int], max_new_tokens: int, sampling: Sampling, eos_id: int | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[int]:
    """Yields new token ids one by one, decoding with a KV cache; stops at eos, max_new_tokens or the context end."""
    block_size = model.config.block_size
    if not prompt_ids:
        raise SlmkitError("the prompt is empty after tokenization; give some text to continue")
    if len(prompt_ids) >= block_size:
        raise SlmkitError(f"the prompt has {len(prompt_ids)} tokens but the model's context is {block_size}; shorten it")
    device = model.tok_embeddings.weight.device
    total = min(block_size, len(prompt_ids) + max_new_tokens)
    cache = model.new_cache(1, total, device=device)
    seen = torch.tensor([prompt_ids], device=device)
    logits = model(seen, cache=cache)[:, -1]
    for _ in range(total - len(prompt_ids)):
        token = next_token(logits, seen, sampling, generator)
        yield int(token)
        if eos_id is not None and int(token) == eos_id:
            return
        seen = torch.cat([seen, token[:, None]], dim=1)
        if seen.shape[1] < total:
            logits = model(token[:, None], cache=cache)[:, -1]


def generate_text(
    loaded: LoadedCheckpoint, prompt: str, max_new_tokens: int, sampling: Sampling, stop: list[str] = (),
    seed: int = 1337, on_text: Callable[[str], None] | None = None,
) -> str:
    """The completion of `prompt` (without it), cut before the first stop string; `on_text` receives it in pieces."""
    tokenizer = loaded.tokenizer()
    eos = loaded.config.tokenizer.special_tokens[0] if loaded.config.tokenizer.special_tokens else None
    eos_id = tokenizer.token_to_id(eos) if eos else None
    generator = torch.Generator(device=loaded.model.tok_embeddings.weight.device).manual_seed(seed)
    ids: list[int] = []
    shown = 0
    text = ""
    hold = max((len(s) for s in stop), default=1) - 1
    for token in generate_ids(loaded.model, tokenizer.encode(prompt, add_special_tokens=False).ids, max_new_tokens, sampling, eos_id, generator):
        if token == eos_id:
            break
        ids.append(token)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        cut = _first_stop(text, stop)
        if cut is not None:
            text = text[:cut]
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


def _first_stop(text: str, stop: list[str]) -> int | None:
    found = [text.find(s) for s in stop if s and s in text]
    return min(found) if found else None


def load_for_generation(path: str, device: str = "cpu") -> LoadedCheckpoint:
    """A checkpoint or run folder, or an int8 export folder (CPU only)."""
    from slmkit.export.quantize import is_int8_folder, load_int8

    if is_int8_folder(Path(path)):
        if device != "cpu":
            raise SlmkitError("an int8 export runs on CPU only (torch's dynamic int8 kernels); pass device=cpu")
        return load_int8(path)
    return load_checkpoint(path, map_location=device)


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
    loaded = load_for_generation(args.checkpoint, args.device)
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
        from slmkit.atomic import atomic_write_text

        atomic_write_text(args.out, "".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in zip(prompts, completions)))
    else:
        for prompt, completion in zip(prompts, completions):
            sys.stdout.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")
    return completions
