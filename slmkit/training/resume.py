"""Resuming a run from its own record: which folder and checkpoint a run continues from, the config it continues
with (the run's config.yaml, with the command line's changes on top), and the refusal, before any file is touched, of
every change that would alter what the checkpoint means.

Safe on resume (SAFE_ON_RESUME: they change how the run is watched, how fast or how long it goes, not what its
weights are): trainer.max_steps (the learning-rate schedule then decays over the new length unless optim.decay_steps
fixes it), the logging, validation and checkpoint cadence, and the eval section. Everything else (objective, heads,
tokenizer, model, data, batch geometry, devices, precision, optimizer and schedule) is refused, naming the recorded
and the requested value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
from pathlib import Path
from typing import Any, Sequence

from slmkit.checkpoint.run_folder import RunFolder, checkpoint_problem
from slmkit.config import RunConfig, build_config, load_run_config, run_config_layer
from slmkit.errors import SlmkitError
from slmkit.model import resolve_pooling
from slmkit.recipe import split_overrides
from slmkit.tokenizer import tokenizer_differences

SAFE_ON_RESUME = (
    "trainer.max_steps", "trainer.log_every", "trainer.val_every", "trainer.val_batches", "trainer.checkpoint_every",
    "trainer.keep_checkpoints", "trainer.progress_bar", "trainer.num_workers", "trainer.compile",
    "trainer.activation_checkpointing", "eval.tasks", "eval.every", "eval.limit", "eval.batch_size",
    "data.prepared_dir", "data.num_workers",  # where prepared data is kept and how many processes prepare it
)
# Where the run is, and what the run derives when it starts (compared once derived, or by content).
# The trackers a run reports to and its provenance (rewritten by each attempt) do not change what the weights mean.
# The tokenizer (its path, and the domain vocabulary added to it) is compared by content: the run's own copy.
NOT_COMPARED = ("out_dir", "resume", "heads", "init_from", "tokenizer.path", "tokenizer.extend", "logger", "track.",
                "provenance.")
_OFF = ("", "false", "none", "null")


def is_resume(resume: str | None) -> bool:
    return (resume or "").strip().lower() not in _OFF


def resume_folder(resume: str, out_dir: str | None, name: str) -> RunFolder:
    """The folder a resumed run continues in: out_dir, else the newest run of the recipe (resume=true), else the run
    the checkpoint given as resume=PATH lies in."""
    if out_dir:
        return RunFolder(out_dir)
    if resume.strip().lower() in ("true", "latest"):
        return RunFolder.newest_of(name)
    return RunFolder(Path(resume).resolve().parent.parent)


def run_folder_and_resume_point(config: RunConfig) -> tuple[RunFolder, Path | None]:
    """The run's folder, and the checkpoint it continues from (None for a new run)."""
    resume = (config.resume or "").strip()
    if not is_resume(resume):
        folder = RunFolder(config.out_dir) if config.out_dir else RunFolder.new(config.name)
        if folder.newest_checkpoint() is not None:
            raise SlmkitError(f"{folder.root} already holds checkpoints: pass resume=true to continue it, or another out_dir")
        return folder, None
    folder = resume_folder(resume, config.out_dir, config.name)
    if resume.lower() in ("true", "latest"):
        return folder, folder.resume_point()
    ckpt = Path(resume)
    if not ckpt.exists():
        raise SlmkitError(f"resume={resume}: no checkpoint there; pass resume=true for the latest in out_dir, or a path to a .ckpt")
    problem = checkpoint_problem(ckpt)
    if problem is not None:
        raise SlmkitError(f"resume={resume}: {problem}")
    return folder, ckpt


def continue_command(config: RunConfig) -> str:
    """The command that continues a stopped run as recorded, printed when it stops; it works as printed."""
    return shlex.join(["slmkit", "train", f"recipe={config.name}", "resume=true", f"out_dir={config.out_dir}"])


def recorded_config(name: str, overrides: Sequence[str]) -> RunConfig | None:
    """The config of `slmkit train recipe=NAME resume=... [key=value ...]`: the run's own config.yaml with the command
    line's keys on top, so a run continues as it was started (its init_from, its batch, its data), not as the recipe
    reads today. None when the command starts a run, picks config groups, or the folder holds no record."""
    groups, values = split_overrides(overrides)
    if groups:
        return None  # a config group: the recipe path resolves it, and train() compares the outcome with the record
    given = dict(o.split("=", 1) for o in values)
    if not is_resume(given.get("resume")):
        return None
    folder = resume_folder(given["resume"], given.get("out_dir"), name)
    if not folder.is_run():
        return None
    raw = run_config_layer(folder.config)
    if raw.get("name", name) != name:
        raise SlmkitError(f"out_dir={folder.root} is a run of recipe {raw['name']!r}, not {name!r}: a resumed run "
                          f"continues as recorded; pass recipe={raw['name']}, or start a new run in another out_dir")
    if (raw.get("tokenizer") or {}).get("path") and folder.tokenizer.is_file():
        # The tokenizer the weights learned with is the run's own copy, wherever the file it was copied from went.
        # That copy holds the run's domain vocabulary already (tokenizer.extend): it is not extended a second time.
        raw = {**raw, "tokenizer": {**raw["tokenizer"], "path": str(folder.tokenizer), "extend": 0, "extend_from": None}}
    return build_config(RunConfig, raw, overrides=values)


def check_resume(folder: RunFolder, requested: RunConfig) -> list[str]:
    """Refuses, naming each key with its recorded and requested value, every change to the run's record that would
    alter what its checkpoint means; returns notes on the safe changes (a longer or shorter schedule)."""
    if not folder.is_run():
        return []
    recorded = load_run_config(folder.config)
    was, now = _leaves(recorded), _leaves(requested)
    changed = [key for key in sorted(now) if was.get(key) != now[key] and not key.startswith(NOT_COMPARED)]
    refused = [f"{key}: recorded {was.get(key)!r}, requested {now[key]!r}" for key in changed
               if key not in SAFE_ON_RESUME and not _derived_later(key, now[key], was.get(key), recorded)]
    if refused:
        architecture = " (a different architecture)" if any(item.startswith("model.") for item in refused) else ""
        raise SlmkitError(
            f"cannot resume {folder.root}: the run's record differs from this request in what its checkpoint means"
            f"{architecture} ({'; '.join(refused)}). Drop those settings to continue the run as recorded "
            f"(`slmkit train recipe={recorded.name} resume=true out_dir={folder.root}`), or start a new run in "
            f"another out_dir (init_from={folder.root} starts from its weights)"
        )
    notes = []
    if "trainer.max_steps" in changed:
        was_steps, now_steps = recorded.trainer.max_steps, requested.trainer.max_steps
        schedule = (f"the schedule is unchanged (optim.decay_steps={requested.optim.decay_steps})"
                    if requested.optim.decay_steps is not None else
                    f"the learning rate now decays to optim.min_lr over {now_steps} steps instead of {was_steps}, "
                    "from the step the run continues at")
        notes.append(f"trainer.max_steps: recorded {was_steps}, now {now_steps}; {schedule}")
    return notes


def check_same_tokenizer(folder: RunFolder, tokenizer_path: Path, given: str | None) -> None:
    """Refuses to continue a run with a tokenizer other than the copy in its folder, the one its weights learned;
    `given` is the tokenizer.path the user named (None: the tokenizer the data config trains)."""
    if not folder.tokenizer.is_file():
        return
    differences = tokenizer_differences(folder.tokenizer, tokenizer_path, ("run", "requested"))
    if differences:
        which = f"tokenizer.path={given}" if given else f"the tokenizer this data and tokenizer config make ({tokenizer_path})"
        raise SlmkitError(
            f"cannot resume {folder.root} with {which}: {'; '.join(differences)}. The run's "
            f"weights were learned with its own {folder.tokenizer.name}; drop the tokenizer (or init_from) override to "
            "continue it as recorded"
        )


def check_same_data(folder: RunFolder, manifest: Path, shards_from: str | None) -> None:
    """Refuses to continue a run on token shards other than the ones it trained on: `manifest` (the prepared folder's,
    or the cached copy of the one at `shards_from`) against the copy the run recorded. A config names the data but not
    its content: a new copy published under the same URL, or a source file edited after the run began, is other data
    that the config comparison above cannot see.

    A published manifest is the identity of its copy, so it must be the same bytes. A local one is compared by what
    the run reads, the tokenizer's digest and every shard's name, length and sha256: its `inputs_sha256` names the
    config it was prepared under, which a resume may spell differently for the same tokens (the run's own copy of an
    extended tokenizer as tokenizer.path)."""
    if not folder.data_manifest.is_file():
        return
    recorded, now = folder.data_manifest.read_bytes(), manifest.read_bytes()
    if recorded == now or (not shards_from and _tokens_of(recorded) == _tokens_of(now)):
        return
    digests = (f"its manifest has sha256 {hashlib.sha256(now).hexdigest()[:16]}..., the run's "
               f"{folder.data_manifest.name} {hashlib.sha256(recorded).hexdigest()[:16]}...")
    if shards_from:
        problem = f"data.shards_from={shards_from} holds other data than the run trained on ({digests}: a new copy was published there)"
        remedy = (f"Restore the old copy at that URL to continue the run, or publish the new data under a new URL and "
                  f"start a new run on it")
    else:
        problem = (f"the recipe's data now prepares into other token shards than the run trained on ({digests}: a "
                   f"source file changed since the run began)")
        remedy = "Restore the source files the run began with to continue it, or start a new run on the new data"
    raise SlmkitError(f"cannot resume {folder.root}: {problem}. {remedy} (init_from={folder.root} starts from its weights)")


def _tokens_of(manifest: bytes) -> tuple[Any, Any]:
    """What a run reads from a prepared folder, by its manifest: the tokenizer's digest and the shards of every split."""
    parsed = json.loads(manifest)
    return parsed.get("tokenizer_sha256"), parsed.get("splits")


def _derived_later(key: str, requested: Any, recorded: Any, record: RunConfig) -> bool:
    """Whether `requested` is the not-yet-derived form of `recorded`: the vocabulary taken from the tokenizer (0), the
    labels taken from the task ([]), the pooling chosen for the body (auto)."""
    if key == "model.vocab_size":
        return requested == 0
    if key == "objective.labels":
        return requested == []
    if key == "objective.pooling":
        return resolve_pooling(requested, record.model.causal) == recorded
    return False


def _leaves(config: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value of every leaf of a config tree (lists compared whole)."""
    if not dataclasses.is_dataclass(config):
        return {prefix[:-1]: config}
    found: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        found.update(_leaves(getattr(config, f.name), f"{prefix}{f.name}."))
    return found
