"""The run folder, owned here alone: what each file is called, how checkpoints are named, listed, checked, pruned and
chosen to resume from, where a recipe's runs live and which one `latest` names.

    runs/<recipe>/<time>/   config.yaml · tokenizer.json · data_manifest.json · metrics.jsonl · tb/ · eval/
                            checkpoints/step-<N>.ckpt (a file, or a DeepSpeed folder) + checksums
                            model.safetensors (+ checksum): present exactly when the run went the whole way
    runs/<recipe>/latest -> the newest finished run of the recipe

As torchtitan's CheckpointManager, one class answers every question about steps and checkpoints; the training loop
asks it and only orchestrates.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from slmkit.atomic import remove_temporaries
from slmkit.checkpoint.unpickling import load_problem
from slmkit.checksum import checksum_file, verify_checksum
from slmkit.data import RUN_MANIFEST
from slmkit.errors import SlmkitError
from slmkit.tokenizer import TOKENIZER_FILE

log = logging.getLogger("slmkit")

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tb"
EVAL_REPORTS = "eval"
STEP_KEY = "slmkit_step"  # model.safetensors metadata: the optimizer step of the weights
RUNS_ROOT = Path("runs")
LATEST = "latest"  # runs/<recipe>/latest links to the newest finished run of the recipe
_PREFIX, _SUFFIX = "step-", ".ckpt"


class RunFolder:
    """One run's folder: its paths, and its checkpoints by step."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def tokenizer(self) -> Path:
        return self.root / TOKENIZER_FILE

    @property
    def weights(self) -> Path:
        """The final weights: written when the run finishes, so present exactly when it went the whole way."""
        return self.root / WEIGHTS_FILE

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def data_manifest(self) -> Path:
        return self.root / RUN_MANIFEST

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def eval_reports(self) -> Path:
        return self.root / EVAL_REPORTS

    def is_run(self) -> bool:
        return self.config.is_file()

    @property
    def finished(self) -> bool:
        return self.weights.is_file()

    def metric_records(self) -> list[dict]:
        """metrics.jsonl's records, one per logged step, in order; a last line cut by a killed run is skipped."""
        if not self.metrics.is_file():
            return []
        records = []
        for line in self.metrics.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                records.append(record)
        return records

    def checkpoint(self, step: int) -> Path:
        """Where the checkpoint of `step` is (or will be) written."""
        return self.checkpoints_dir / f"{_PREFIX}{step}{_SUFFIX}"

    def checkpoints(self) -> list[tuple[int, Path]]:
        """(step, path) of every checkpoint (file or DeepSpeed folder), oldest first; temporaries are not listed."""
        folder = self.checkpoints_dir
        found = [(step_in_name(p), p) for p in folder.glob(f"{_PREFIX}*{_SUFFIX}")] if folder.is_dir() else []
        return sorted((step, p) for step, p in found if step is not None)

    def newest_checkpoint(self) -> Path | None:
        listed = self.checkpoints()
        return listed[-1][1] if listed else None

    def resume_point(self) -> Path:
        """The newest checkpoint that is whole; a damaged newer one is named in a warning (it is removed when the run
        starts again: a run continues from one history)."""
        damaged = []
        for _, path in reversed(self.checkpoints()):
            problem = checkpoint_problem(path)
            if problem is None:
                for bad, why in damaged:
                    log.warning("the checkpoint %s is damaged (%s); resuming from %s, the newest intact one", bad.name, why,
                                path.name)
                return path
            damaged.append((path, problem))
        if not damaged:
            raise SlmkitError(f"resume=true but {self.checkpoints_dir} holds no checkpoint to continue from")
        raise SlmkitError(f"resume=true but no checkpoint in {self.checkpoints_dir} is intact "
                          f"({'; '.join(why for _, why in damaged)}): start the run again with another out_dir")

    def prune(self, keep: int) -> None:
        """Removes all but the newest `keep` checkpoints, whichever attempt wrote them."""
        for _, old in self.checkpoints()[:-keep]:
            remove_checkpoint(old)

    def begin_attempt(self, start_step: int | None) -> None:
        """The folder as of `start_step`: what a stopped attempt wrote after it (checkpoints of later steps, the final
        weights of an earlier finish) and what killed writers left (hidden temporaries) go; metrics.jsonl is cut back
        by the run's metrics logger when training starts."""
        remove_temporaries(self.checkpoints_dir)
        remove_temporaries(self.root, of=[WEIGHTS_FILE])
        if start_step is None:
            return
        for step, path in self.checkpoints():
            if step > start_step:
                log.warning("removing %s: it comes after step %d, where this run continues", path, start_step)
                remove_checkpoint(path)
        for path in (self.weights, checksum_file(self.weights)):
            path.unlink(missing_ok=True)

    # -- where a recipe's runs live ---------------------------------------------------------------------------------

    @classmethod
    def new(cls, name: str) -> "RunFolder":
        """A fresh folder for a run of recipe `name`: runs/<name>/<time>."""
        return cls(RUNS_ROOT / name / time.strftime("%Y%m%d-%H%M%S"))

    @classmethod
    def newest_of(cls, name: str) -> "RunFolder":
        """The newest run of recipe `name` that has written a checkpoint (resume=true without out_dir)."""
        base = RUNS_ROOT / name
        runs = sorted(p for p in base.glob("*") if (p / CHECKPOINTS).is_dir() and not p.is_symlink()) if base.is_dir() else []
        if not runs:
            raise SlmkitError(f"resume=true: no earlier run of {name!r} under {base}; pass out_dir=PATH of the run to continue")
        return cls(runs[-1])

    def point_latest_at(self, name: str) -> None:
        """runs/<recipe>/latest -> this run, once it finished, so later commands (init_from, eval, export) can name it;
        a run outside runs/<recipe>/ is left unlinked."""
        if self.root.resolve().parent != (RUNS_ROOT / name).resolve():
            return
        link = self.root.parent / LATEST
        tmp = self.root.parent / f".{LATEST}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(self.root.name)
        os.replace(tmp, link)


def step_in_name(path: Path) -> int | None:
    """N of a checkpoint named step-N.ckpt; None for any other name."""
    stem = path.name.removesuffix(_SUFFIX)
    if path.name.endswith(_SUFFIX) and stem.startswith(_PREFIX) and stem[len(_PREFIX):].isdigit():
        return int(stem[len(_PREFIX):])
    return None


def checkpoint_step(path: Path) -> int | None:
    """The optimizer step a checkpoint or weights file holds: from a checkpoint's name, the metadata that final weights
    carry, or the step a Lightning checkpoint file records (read without its tensors); None when nothing says."""
    path = Path(path)
    step = step_in_name(path)
    if step is not None:
        return step
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                recorded = (f.metadata() or {}).get(STEP_KEY)
        except SafetensorError:
            return None
        return int(recorded) if recorded is not None and recorded.isdigit() else None
    if path.is_file():
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # unpickling errors: reported in slmkit's words, never torch's advice
            raise SlmkitError(f"cannot read {path} as tensors only ({load_problem(err)}): the file is damaged, or not "
                              "an slmkit checkpoint") from None
        recorded = payload.get("global_step") if isinstance(payload, dict) else None
        return int(recorded) if isinstance(recorded, int) else None
    return None


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint cannot be resumed from (a checksum mismatch, a truncated file, objects other than tensors),
    or None when it looks whole and safe.

    A checkpoint without a checksum (slmkit before checksums, another tool) is checked as far as its format allows:
    a truncated zip file lacks the directory at its end. A checkpoint file is also read as tensors only (memory-mapped,
    so its tensors are not loaded): one that pickles anything else is refused here, before the run folder is touched,
    and never loaded."""
    try:
        checked = verify_checksum(path)
    except SlmkitError as err:
        return str(err)
    if not path.is_file():
        return None
    if not checked:
        try:
            with zipfile.ZipFile(path):
                pass
        except (zipfile.BadZipFile, OSError) as err:
            return f"{path} is not a whole checkpoint file ({err})"
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # unpickling errors: reported in slmkit's words, never torch's advice
        return f"{path} cannot be read as tensors only ({load_problem(err)}); it may be unsafe, and slmkit will not load it"
    return None


def remove_checkpoint(path: Path) -> None:
    """Deletes a checkpoint (file or DeepSpeed folder) and its checksum."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    checksum_file(path).unlink(missing_ok=True)
