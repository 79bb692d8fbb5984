"""The training data: windows over memory-mapped token shards, or a task's encoded examples shuffled epoch by
epoch, in an order fixed by the seed.

Token windows come in one of two orders (trainer.data_order). random_windows: each micro-step draws its windows
from a generator seeded by (seed, step), so a resume at the same world size replays a straight run. global_index:
the split is cut into non-overlapping windows and a seeded permutation per epoch orders them into one global sample
stream; each global micro-batch takes the next samples in turn, and the checkpoint keeps how many were consumed, so
a run resumed at any world size continues the stream without skipping or repeating a window.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from slmkit.data import TokenShards
from slmkit.errors import SlmkitError
from slmkit.objectives import TaskObjective
from slmkit.objectives.base import next_token_example
from slmkit.streamed import token_shards


Example = Callable[[torch.Tensor, int], dict[str, Any]]


class TokenWindows(Dataset):
    """Item `offset` is example(tokens, offset) of the `window` + 1 tokens from `offset`: by default {input_ids,
    targets}, the window and the same shifted by one; the objective's own example otherwise (masked tokens)."""

    def __init__(self, shards: TokenShards, window: int, example: Example = next_token_example):
        self.shards = shards
        self.window = window
        self.example = example

    def __len__(self) -> int:
        return len(self.shards) - self.window

    def __getitem__(self, offset: int) -> dict[str, Any]:
        tokens = torch.from_numpy(self.shards.window(int(offset), self.window + 1).astype(np.int64))
        return self.example(tokens, int(offset))


class StepSeededOffsets(Sampler[int]):
    """Endless window offsets: micro-step s draws the global micro-batch from a generator seeded by (seed, s),
    and this rank takes its slice of it. Starting at `start_micro_step` replays the stream from there."""

    def __init__(self, num_offsets: int, micro_batch_size: int, rank: int, world_size: int, seed: int, start_micro_step: int = 0):
        self.num_offsets = num_offsets
        self.micro_batch_size = micro_batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.start_micro_step = start_micro_step

    def __iter__(self) -> Iterator[int]:
        step = self.start_micro_step
        while True:
            rng = np.random.default_rng([self.seed, step])
            offsets = rng.integers(0, self.num_offsets, size=self.micro_batch_size * self.world_size)
            yield from offsets[self.rank * self.micro_batch_size : (self.rank + 1) * self.micro_batch_size].tolist()
            step += 1


class EpochShuffledIndices(Sampler[int]):
    """Endless item indices, each epoch a permutation seeded by (seed, epoch): the global sample stream is fixed,
    each global micro-batch takes the next micro_batch_size * world_size items of it and this rank its slice, so
    starting at a stream position (`start_sample`, the items consumed so far) continues it at any world size."""

    def __init__(self, num_items: int, micro_batch_size: int, rank: int, world_size: int, seed: int, start_sample: int = 0):
        self.num_items = num_items
        self.micro_batch_size = micro_batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.start_sample = start_sample

    def __iter__(self) -> Iterator[int]:
        global_batch = self.micro_batch_size * self.world_size
        position = self.start_sample + self.rank * self.micro_batch_size
        epoch, order = -1, None
        while True:
            for p in range(position, position + self.micro_batch_size):
                if p // self.num_items != epoch:
                    epoch = p // self.num_items
                    order = np.random.default_rng([self.seed, epoch]).permutation(self.num_items)
                yield int(order[p % self.num_items])
            position += global_batch


class IndexedWindows(Dataset):
    """The global index's samples: sample i is the window starting at token i * window (windows share only the
    boundary token that one predicts and the next starts with), read from any dataset indexed by token offset."""

    def __init__(self, windows: Dataset, window: int):
        self.windows = windows
        self.window = window

    def __len__(self) -> int:
        return (len(self.windows) - 1) // self.window + 1 if len(self.windows) else 0

    def __getitem__(self, sample: int) -> dict[str, Any]:
        return self.windows[int(sample) * self.window]


class EvenlySpacedOffsets(Sampler[int]):
    """A fixed validation set: `count` windows spread evenly over the split, the same at every evaluation."""

    def __init__(self, num_offsets: int, count: int, rank: int, world_size: int):
        all_offsets = np.linspace(0, max(num_offsets - 1, 0), num=count, dtype=np.int64)
        self.offsets = all_offsets[rank::world_size].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets)


class TokenDataModule(L.LightningDataModule):
    """Windows of the token shards: random ones for training (or the objective's own `train_windows`, e.g. windows
    with a teacher's cached logits), evenly spaced ones for validation."""

    def __init__(self, shards_dir: Path, block_size: int, micro_batch_size: int, grad_accum: int, val_batches: int, seed: int,
                 num_workers: int = 0, train_windows: Dataset | None = None, example: Example = next_token_example,
                 data_order: str = "random_windows"):
        super().__init__()
        self.data_order = data_order
        self.resumed: dict[str, int] | None = None  # the global index's state in the checkpoint resumed from
        self.example = example
        self.given_train_windows = train_windows
        self.shards_dir = Path(shards_dir)
        self.block_size = block_size
        self.micro_batch_size = micro_batch_size
        self.grad_accum = grad_accum
        self.val_batches = val_batches
        self.seed = seed
        self.num_workers = num_workers

    def setup(self, stage: str | None = None) -> None:
        self.train_windows = self.given_train_windows if self.given_train_windows is not None else self._windows("train")
        self.val_windows = self._windows("val") if self.val_batches > 0 else None

    def _windows(self, split: str) -> TokenWindows:
        shards = token_shards(self.shards_dir, split)
        if len(shards) <= self.block_size:
            raise SlmkitError(
                f"the {split} split has {len(shards)} tokens, fewer than one window of model.block_size+1="
                f"{self.block_size + 1}: use a larger corpus, change data.val_fraction, or shrink model.block_size"
            )
        return TokenWindows(shards, self.block_size, self.example)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        # The checkpoint is restored before the loaders are built, so global_step is where a resumed run starts.
        step = trainer.global_step if trainer is not None else 0
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        if self.data_order == "global_index":
            dataset: Dataset = IndexedWindows(self.train_windows, self.block_size)
            self.start_batches, self.start_sample = trained_batches(trainer), self._resumed_sample(len(dataset), step, world)
            sampler: Sampler[int] = EpochShuffledIndices(len(dataset), self.micro_batch_size, rank, world, self.seed,
                                                         self.start_sample)
        else:
            dataset = self.train_windows
            sampler = StepSeededOffsets(len(dataset), self.micro_batch_size, rank, world, self.seed, step * self.grad_accum)
        return DataLoader(dataset, batch_size=self.micro_batch_size, sampler=sampler,
                          num_workers=self.num_workers, pin_memory=torch.cuda.is_available(), generator=_own_generator(self.seed))

    def _index_identity(self, samples: int) -> dict[str, int]:
        return {"seed": self.seed, "samples": samples, "window": self.block_size}

    def _resumed_sample(self, samples: int, step: int, world: int) -> int:
        """Where the global sample stream continues: the checkpoint's count of consumed samples, or (a checkpoint
        written without one) the count a run at this world size would have consumed by this step."""
        if self.resumed is None:
            return step * self.grad_accum * self.micro_batch_size * world
        saved = {key: self.resumed.get(key) for key in ("seed", "samples", "window")}
        if saved != self._index_identity(samples):
            raise SlmkitError(
                f"the checkpoint's global sample index (seed, samples, window) = {tuple(saved.values())} does not fit "
                f"this run's {tuple(self._index_identity(samples).values())}: the training shards, model.block_size or "
                f"trainer.seed changed since it was written; resume with the ones it was written with")
        return int(self.resumed["consumed"])

    def state_dict(self) -> dict[str, Any]:
        """With the global index: how many samples of the stream the completed steps consumed (on any world size)."""
        trainer = self.trainer
        if self.data_order != "global_index" or trainer is None or not hasattr(self, "start_sample"):
            return {}
        # micro-batches, not steps: after a resume with another grad_accum the first step accumulates fewer of them
        consumed = self.start_sample + (trained_batches(trainer) - self.start_batches) * self.micro_batch_size * \
            trainer.world_size
        samples = len(IndexedWindows(self.train_windows, self.block_size))
        return {"global_index": {**self._index_identity(samples), "consumed": consumed}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.resumed = state_dict.get("global_index")

    def val_dataloader(self) -> DataLoader | list:
        if self.val_windows is None:
            return []
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        count = self.val_batches * self.micro_batch_size * world
        sampler = EvenlySpacedOffsets(len(self.val_windows), count, rank, world)
        return DataLoader(self.val_windows, batch_size=self.micro_batch_size, sampler=sampler, num_workers=self.num_workers,
                          generator=_own_generator(self.seed))


class TaskDataModule(L.LightningDataModule):
    """A fine-tuning objective's encoded examples: its `train` split shuffled by epoch, a fixed validation subset."""

    def __init__(self, objective: TaskObjective, micro_batch_size: int, grad_accum: int, val_batches: int, seed: int,
                 num_workers: int = 0):
        super().__init__()
        self.objective = objective
        self.micro_batch_size = micro_batch_size
        self.grad_accum = grad_accum
        self.val_batches = val_batches
        self.seed = seed
        self.num_workers = num_workers

    def setup(self, stage: str | None = None) -> None:
        self.train_examples = self.objective.examples("train")
        if not self.train_examples:
            raise SlmkitError(f"task {self.objective.spec.name}: no training examples; check its `train` records")
        self.val_examples = self.objective.examples("val") if self.val_batches > 0 else []

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        start = trainer.global_step * self.grad_accum * self.micro_batch_size * world if trainer is not None else 0
        sampler = EpochShuffledIndices(len(self.train_examples), self.micro_batch_size, rank, world, self.seed, start)
        return DataLoader(self.train_examples, batch_size=self.micro_batch_size, sampler=sampler, collate_fn=self.objective.collate,
                          num_workers=self.num_workers, generator=_own_generator(self.seed))

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_examples:
            return []
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        count = min(self.val_batches * self.micro_batch_size * world, len(self.val_examples))
        sampler = EvenlySpacedOffsets(len(self.val_examples), count, rank, world)
        return DataLoader(self.val_examples, batch_size=self.micro_batch_size, sampler=sampler, collate_fn=self.objective.collate,
                          num_workers=self.num_workers, generator=_own_generator(self.seed))


def trained_batches(trainer: L.Trainer | None) -> int:
    """Training micro-batches this rank has run over the whole run (Lightning keeps the count in its checkpoints)."""
    if trainer is None:
        return 0
    return trainer.fit_loop.epoch_loop.batch_progress.total.processed


def _own_generator(seed: int) -> torch.Generator:
    """Starting a DataLoader iterator draws a worker seed; from its own generator, so the global RNG that dropout
    uses advances the same way in a straight run and a resumed one."""
    return torch.Generator().manual_seed(seed)
