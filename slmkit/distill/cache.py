"""The teacher's top-k logits per position, computed once over windows of the train split and kept beside the token
shards, so that a student trains with no teacher in memory. With each position's k logits goes the log-sum-exp of the
teacher's other logits at the run's temperature: the probability of "every other token" (see losses.py).

The cache holds `windows` windows of block_size tokens, aligned to block_size and drawn with the run's seed; the
student then draws its training windows from these, and the teacher's logits for a window are exactly those it gives
on the fly for the same window. It is written batch by batch into memory-mapped .npy files (one batch of full
logits in memory at a time) inside a temporary folder renamed into place when complete. Its manifest records what
it was built from — teacher (sha256 of its files), tokenizer, shards, k, temperature, window size and count, seed,
precision — and is compared on every use: a cache of another teacher or other data is never read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from slmkit.atomic import atomic_path
from slmkit.data import TokenShards, read_manifest
from slmkit.streamed import token_shards
from slmkit.distill.teacher import TeacherSpec
from slmkit.errors import SlmkitError
from slmkit.model import LM_HEAD
from slmkit.training.precision import training_device, weights_and_autocast

if TYPE_CHECKING:
    from slmkit.config import RunConfig

log = logging.getLogger("slmkit")

FORMAT = "slmkit-teacher-topk/1"
FOLDER = "teacher-logits"  # under the shards folder: the cache lives and goes with the shards it was computed on
MANIFEST = "manifest.json"
WINDOWS, IDS, LOGITS, TAIL = "windows.npy", "ids.npy", "logits.npy", "tail.npy"


@dataclass(frozen=True)
class CachePlan:
    """Everything a cache is computed from; two caches with equal plans hold the same numbers."""

    teacher_sha256: str
    tokenizer_sha256: str
    shards_inputs_sha256: str
    train_tokens: int
    block_size: int
    k: int
    temperature: float  # the tail's log-sum-exp is taken at it
    vocabulary: int  # the tokenizer's real vocabulary: padded rows of either model never enter the top k
    windows: int
    seed: int
    precision: str

    def key(self) -> str:
        return hashlib.sha256(json.dumps({"format": FORMAT, **dataclasses.asdict(self)}, sort_keys=True).encode()).hexdigest()


# How a difference in each field is told to the user.
_WHAT = {"teacher_sha256": "another teacher (or the teacher's weights changed)", "tokenizer_sha256": "other data (another tokenizer)",
         "shards_inputs_sha256": "other data (other token shards)", "train_tokens": "other data (another train split)"}


def check_cache_k(k: int, vocabulary: int) -> None:
    if k > vocabulary:
        raise SlmkitError(f"distill.cache_k={k} is more than the tokenizer's {vocabulary} tokens: set it to at most "
                          f"{vocabulary} (the whole vocabulary keeps the exact KL)")


def plan_cache(config: "RunConfig", spec: TeacherSpec, shards_dir: Path, vocabulary: int) -> CachePlan:
    """The cache this run needs: the distill section's k and windows over the run's shards, block size and seed."""
    settings, trainer = config.distill, config.trainer
    check_cache_k(settings.cache_k, vocabulary)
    manifest = read_manifest(shards_dir)
    train_tokens = int(manifest["splits"]["train"]["tokens"])
    block = config.model.block_size
    available = (train_tokens - 1) // block
    if available < 1:
        raise SlmkitError(f"the train split has {train_tokens} tokens, fewer than one window of model.block_size+1="
                          f"{block + 1}: use a larger corpus or a smaller model.block_size")
    wanted = settings.cache_windows or trainer.max_steps * trainer.micro_batch_size * trainer.grad_accum
    return CachePlan(spec.fingerprint(), manifest["tokenizer_sha256"], manifest["inputs_sha256"], train_tokens, block,
                     settings.cache_k, settings.temperature, vocabulary, min(wanted, available), trainer.seed, trainer.precision)


def differences(built: dict[str, Any], plan: CachePlan) -> list[str]:
    """What a cache's recorded plan has that this run's does not, in words."""
    found = []
    for name, value in dataclasses.asdict(plan).items():
        if built.get(name) != value:
            found.append(_WHAT.get(name, f"{name} {built.get(name)} (this run: {value})"))
    return list(dict.fromkeys(found))


def teacher_topk_cache(config: "RunConfig", spec: TeacherSpec, shards_dir: Path, vocabulary: int, progress: bool) -> "TopkCache":
    """The cache this run needs: reused when its manifest matches, built otherwise. An explicit distill.cache_dir that
    holds a cache of another teacher or other data is refused, never overwritten or read."""
    plan = plan_cache(config, spec, shards_dir, vocabulary)
    explicit = config.distill.cache_dir
    folder = Path(explicit).expanduser() if explicit else Path(shards_dir) / FOLDER / plan.key()[:16]
    manifest = _read_manifest(folder)
    if manifest is not None:
        found = differences(manifest.get("built_from", {}), plan)
        if not found and _intact(folder, plan):
            log.info("teacher logits: reusing the top-%d cache of %d windows in %s", plan.k, plan.windows, folder)
            return TopkCache(folder)
        if found and explicit:
            raise SlmkitError(
                f"distill.cache_dir={folder} holds teacher logits computed from {', '.join(found)}: they would teach "
                "the student the wrong numbers. Delete that folder to rebuild it there, or point distill.cache_dir at "
                "another folder (or unset it: the default folder is keyed by teacher and data)"
            )
        log.warning("teacher logits: the cache in %s is %s; rebuilding it", folder,
                    f"from {', '.join(found)}" if found else "incomplete")
    elif explicit and folder.exists() and any(folder.iterdir()):
        raise SlmkitError(f"distill.cache_dir={folder} is a folder with other files and no teacher-logits manifest: "
                          "point distill.cache_dir at an empty or new folder")
    build_cache(plan, folder, spec, token_shards(shards_dir, "train"), config, progress)
    return TopkCache(folder)


def aligned_windows(train_tokens: int, block_size: int, count: int, seed: int) -> np.ndarray:
    """Offsets of `count` windows at multiples of block_size, chosen by a generator seeded by the run's seed."""
    available = (train_tokens - 1) // block_size
    chosen = np.random.default_rng([seed, available]).choice(available, size=count, replace=False)
    return np.sort(chosen).astype(np.int64) * block_size


def build_cache(plan: CachePlan, folder: Path, spec: TeacherSpec, shards: TokenShards, config: "RunConfig",
                progress: bool) -> None:
    """Runs the teacher over the planned windows, a batch at a time, and writes their top-k logits."""
    start = time.perf_counter()
    device = training_device(config.trainer.accelerator)
    weights_dtype, autocast = weights_and_autocast(plan.precision, device)
    teacher = spec.load(LM_HEAD)
    teacher.follow(device, weights_dtype)
    offsets = aligned_windows(plan.train_tokens, plan.block_size, plan.windows, plan.seed)
    shape = (plan.windows, plan.block_size, plan.k)
    ids_dtype = np.uint16 if plan.vocabulary <= 2**16 else np.uint32
    batch = config.trainer.micro_batch_size
    mass = 0.0
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        np.save(tmp / WINDOWS, offsets)
        ids = np.lib.format.open_memmap(tmp / IDS, mode="w+", dtype=ids_dtype, shape=shape)
        logits = np.lib.format.open_memmap(tmp / LOGITS, mode="w+", dtype=np.float32, shape=shape)
        tail = np.lib.format.open_memmap(tmp / TAIL, mode="w+", dtype=np.float32, shape=shape[:2])
        for first in _progress(range(0, plan.windows, batch), progress, plan.windows):
            rows = offsets[first:first + batch]
            tokens = np.stack([shards.window(int(o), plan.block_size) for o in rows]).astype(np.int64)
            with autocast:
                out, _ = teacher(torch.from_numpy(tokens).to(device))
            out = out[..., :plan.vocabulary].float()
            top = out.topk(plan.k, dim=-1)
            mass += float(torch.softmax(out, dim=-1).gather(-1, top.indices).sum())
            others = (out / plan.temperature).scatter(-1, top.indices, float("-inf"))
            ids[first:first + len(rows)] = top.indices.cpu().numpy().astype(ids_dtype)
            logits[first:first + len(rows)] = top.values.cpu().numpy()
            tail[first:first + len(rows)] = torch.logsumexp(others, dim=-1).cpu().numpy()
        for array in (ids, logits, tail):
            array.flush()
        del ids, logits, tail
        seconds = time.perf_counter() - start
        manifest = {"format": FORMAT, "teacher": str(spec.path), "built_from": dataclasses.asdict(plan),
                    "top_k_mass": mass / (plan.windows * plan.block_size), "build_seconds": round(seconds, 2)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    log.info("teacher logits: top-%d cache of %d windows (%d tokens) built in %.1f s in %s; the top %d hold %.1f%% "
                "of the teacher's probability", plan.k, plan.windows, plan.windows * plan.block_size, seconds, folder,
                plan.k, 100 * manifest["top_k_mass"])


def _progress(steps: range, enabled: bool, windows: int) -> Iterator[int]:
    if not enabled:
        return iter(steps)
    from tqdm.auto import tqdm

    return iter(tqdm(steps, desc="teacher logits", unit="batch", total=len(steps), postfix=f"{windows} windows"))


def _read_manifest(folder: Path) -> Optional[dict[str, Any]]:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT else None


def _intact(folder: Path, plan: CachePlan) -> bool:
    """Whether every array is there with the shape the plan says."""
    shape = (plan.windows, plan.block_size, plan.k)
    try:
        return (np.load(folder / WINDOWS, mmap_mode="r").shape == (plan.windows,)
                and np.load(folder / IDS, mmap_mode="r").shape == shape
                and np.load(folder / LOGITS, mmap_mode="r").shape == shape
                and np.load(folder / TAIL, mmap_mode="r").shape == shape[:2])
    except (OSError, ValueError):
        return False


class TopkCache:
    """A built cache: window offsets, and per window the teacher's top-k token ids and logits [block_size, k] and the
    log-sum-exp of its other logits at temperature T [block_size].

    The arrays are memory-mapped on first use, in the process that reads them (a DataLoader worker maps its own).
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.manifest = json.loads((self.folder / MANIFEST).read_text(encoding="utf-8"))
        self.offsets = np.load(self.folder / WINDOWS)
        self._arrays: Optional[tuple[np.ndarray, np.ndarray, np.ndarray]] = None

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._arrays is None:
            self._arrays = tuple(np.load(self.folder / name, mmap_mode="r") for name in (IDS, LOGITS, TAIL))
        return tuple(array[index] for array in self._arrays)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None}


class TeacherTopkWindows(Dataset):
    """Item i: the cached window i as {input_ids, targets} (as plain windows) + {teacher_ids, teacher_logits} [T, k]
    and {teacher_tail} [T]."""

    def __init__(self, shards: TokenShards, block_size: int, cache: TopkCache):
        self.shards = shards
        self.block_size = block_size
        self.cache = cache

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        offset = int(self.cache.offsets[index])
        tokens = torch.from_numpy(self.shards.window(offset, self.block_size + 1).astype(np.int64))
        ids, logits, tail = self.cache[int(index)]
        # The example next-token prediction reads (slmkit.objectives.base.next_token_example), with the teacher's part.
        return {"input_ids": tokens[:-1], "targets": tokens[1:], "teacher_ids": torch.from_numpy(ids.astype(np.int64)),
                "teacher_logits": torch.from_numpy(np.array(logits)), "teacher_tail": torch.from_numpy(np.array(tail))}
