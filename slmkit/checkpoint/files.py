"""A run's checkpoint files: what they are called, how a model is built for them, written, read and located.

Loading takes a run folder, a Lightning checkpoint, a DeepSpeed folder or safetensors. Only tensors are loaded:
safetensors, or torch.load(weights_only=True) — a checkpoint can never run code.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model

from slmkit.atomic import atomic_copy, atomic_path, fsync_file
from slmkit.checkpoint.heads import run_heads, with_heads
from slmkit.checkpoint.run_folder import CONFIG_FILE, STEP_KEY, WEIGHTS_FILE, RunFolder, checkpoint_step
from slmkit.checkpoint.unpickling import load_problem
from slmkit.checksum import verify_checksum, write_checksum
from slmkit.config import RunConfig, load_run_config, save_run_config
from slmkit.errors import SlmkitError
from slmkit.lora import add_lora, has_adapters, merge_lora
from slmkit.model import LM_HEAD, MASKED_LM_HEAD, Model
from slmkit.tokenizer import TOKENIZER_FILE, load_tokenizer

LIGHTNING_PREFIX = "model."  # the LightningModule holds the Model as `self.model`
TIED = (f"heads.{LM_HEAD}.proj.weight", "body.tok_embeddings.weight")  # one tensor when model.tie_embeddings
TIED_MASKED_LM = (f"heads.{MASKED_LM_HEAD}.decoder.weight", "body.tok_embeddings.weight")  # likewise for an encoder


def build_model(config: RunConfig) -> Model:
    """The run's model: its body, and the heads its config records (freshly initialized)."""
    return Model(config.model, run_heads(config))


@dataclass
class LoadedCheckpoint:
    model: Model
    config: RunConfig
    tokenizer_path: Path
    path: Path
    step: int | None = None  # optimizer steps the weights were trained for; None when the file does not say

    def tokenizer(self):
        return load_tokenizer(self.tokenizer_path)

    @property
    def planned_steps(self) -> int:
        return self.config.trainer.max_steps

    @property
    def finished(self) -> bool | None:
        """Whether the weights are those of the run's last planned step; None when their step is unknown."""
        return None if self.step is None else self.step >= self.planned_steps


def save_inference_checkpoint(out_dir: str | Path, model: Model, config: RunConfig, tokenizer_path: str | Path,
                              step: int | None = None) -> Path:
    """Writes config.yaml (with the model's heads) + tokenizer.json + model.safetensors (fp32, with its checksum) into
    out_dir; returns the weights path. `step`, the optimizer steps the weights were trained for, is recorded in the
    weights' metadata."""
    folder = RunFolder(out_dir)
    save_run_config(with_heads(config, list(model.head_specs)), folder.config)
    if Path(tokenizer_path).resolve() != folder.tokenizer.resolve():
        atomic_copy(tokenizer_path, folder.tokenizer)
    fp32 = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    # save_model drops one name of a tied pair so safetensors does not refuse shared storage.
    shadow = Model(config.model, model.head_specs)
    shadow.load_state_dict(fp32)
    target = folder.weights
    with atomic_path(target) as tmp:
        try:
            save_model(shadow, str(tmp), metadata={STEP_KEY: str(step)} if step is not None else None)
        except SafetensorError as err:  # safetensors reports the file system's refusal as text only
            errno = re.search(r"os error (\d+)", str(err))
            if errno is None:
                raise
            raise OSError(int(errno.group(1)), os.strerror(int(errno.group(1))), str(target)) from None
        fsync_file(tmp)
        write_checksum(target, tmp)
    return target


def save_torch(obj: Any, path: str | Path) -> None:
    """torch.save to `path`, fsynced. A write the file system refuses raises its OSError (ENOSPC, EFBIG, ...), not the
    `RuntimeError: [enforce fail at inline_container.cc] unexpected pos` that torch turns it into."""
    refused: list[OSError] = []

    class Recording(io.FileIO):
        def write(self, data: Any) -> int:
            view, written = memoryview(data).cast("B"), 0
            try:
                while written < len(view):  # a nearly full disk takes part of a write; the rest raises
                    written += super().write(view[written:])
            except OSError as err:
                refused.append(err)
                raise
            return written

    with Recording(path, "w") as f:
        try:
            torch.save(obj, f)
        except RuntimeError:
            if refused:
                raise OSError(refused[0].errno, refused[0].strerror, str(path)) from None
            raise
        os.fsync(f.fileno())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Builds the model of a checkpoint and loads its weights; `path` is a run folder or a checkpoint in one."""
    path = Path(path)
    if not path.exists():
        raise SlmkitError(f"checkpoint not found: {path} — pass a run folder (runs/<recipe>/<time>) or a checkpoint file in it")
    weights_path, run_dir = _locate(path)
    config = load_run_config(run_dir / CONFIG_FILE)
    tokenizer_path = run_dir / TOKENIZER_FILE
    if not tokenizer_path.is_file():
        raise SlmkitError(f"no {TOKENIZER_FILE} beside the checkpoint in {run_dir}: copy the run's tokenizer there")
    model = model_from_state(config, read_state_dict(weights_path), weights_path)
    model.to(map_location).eval()
    return LoadedCheckpoint(model=model, config=with_heads(config, list(model.head_specs)), tokenizer_path=tokenizer_path, path=weights_path,
                            step=checkpoint_step(weights_path))


def locate_run(path: str | Path, key: str) -> Path:
    """The run folder that a run folder, a `latest` link or a checkpoint in one belongs to; `key` names the setting."""
    path = Path(path)
    if not path.exists():
        raise SlmkitError(
            f"{key}={path}: nothing there; give a run folder (runs/<recipe>/<time> or runs/<recipe>/latest, written "
            "by `slmkit train recipe=<recipe>`) or a checkpoint in one"
        )
    return _locate(path)[1]


def locate_weights(path: str | Path, key: str) -> Path:
    """The weights file (or DeepSpeed folder) that load_checkpoint reads for a run folder or a checkpoint in one."""
    locate_run(path, key)
    return _locate(Path(path))[0]


def model_from_state(config: RunConfig, state: dict[str, torch.Tensor], source: Path) -> Model:
    """The run's model holding exactly `state`; a LoRA training checkpoint is loaded as trained, then its adapters
    are folded into plain weights."""
    model = build_model(config)
    if has_adapters(state):
        add_lora(model, config.lora)
        _load_into(model, state, source)
        return merge_lora(model)
    _load_into(model, state, source)
    return model


def _locate(path: Path) -> tuple[Path, Path]:
    """(weights, run folder) for a run folder, a checkpoint file/folder inside checkpoints/, or a weights file."""
    run = RunFolder(path)
    if path.is_dir() and run.is_run():
        if run.weights.is_file():
            return run.weights, path
        newest = run.newest_checkpoint()
        if newest is None:
            raise SlmkitError(f"{path} has no {WEIGHTS_FILE} and no checkpoints/: the run has not saved a checkpoint yet")
        return newest, path
    for parent in [path.parent, path.parent.parent]:
        if RunFolder(parent).is_run():
            return path, parent
    raise SlmkitError(f"no {CONFIG_FILE} found beside {path} or in its run folder: slmkit needs the run's config to build the model")


def read_state_dict(weights_path: Path) -> dict[str, torch.Tensor]:
    """Model tensors from safetensors, a Lightning .ckpt file, or a DeepSpeed checkpoint folder, checked against the
    checksum written with them."""
    verify_checksum(weights_path)
    if weights_path.suffix == ".safetensors":
        try:
            return load_file(str(weights_path))
        except SafetensorError as err:
            raise SlmkitError(f"cannot read {weights_path}: it is not a whole safetensors file ({err}); "
                              "use the run's checkpoints/ instead, or copy the file again") from None
    if weights_path.is_dir():
        from slmkit.checkpoint.zero import consolidate_zero_checkpoint

        state = consolidate_zero_checkpoint(weights_path)
    else:
        try:
            payload = torch.load(weights_path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle/zip errors: truncated, foreign or not a checkpoint at all
            raise SlmkitError(f"cannot read checkpoint {weights_path} as tensors only ({load_problem(err)}): the file "
                              "is truncated, damaged or not an slmkit checkpoint") from None
        state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
        if not isinstance(state, dict):
            raise SlmkitError(f"{weights_path} holds no state_dict: not an slmkit checkpoint")
    if any(k.startswith(LIGHTNING_PREFIX) for k in state):
        state = {k[len(LIGHTNING_PREFIX):]: v for k, v in state.items() if k.startswith(LIGHTNING_PREFIX)}
    return state


def with_tied_names(model: Model, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fills in the other name of a tied embedding / (masked) LM-head pair: safetensors' save_model keeps only one."""
    if not model.config.tie_embeddings:
        return state
    expected = model.state_dict()
    for name, twin in (TIED, TIED[::-1], TIED_MASKED_LM, TIED_MASKED_LM[::-1]):
        if name not in state and twin in state and name in expected:
            state = {**state, name: state[twin]}
    return state


def _shape_mismatch(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> list[str]:
    return [f"{k} is {tuple(state[k].shape)} in the checkpoint but {tuple(v.shape)} in the model"
            for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]


def _load_into(model: Model, state: dict[str, torch.Tensor], source: Path) -> None:
    expected = model.state_dict()
    state = with_tied_names(model, state)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = _shape_mismatch(state, expected)
    if missing or unexpected or mismatched:
        details = mismatched[:1]
        if missing:
            details.append(f"missing {', '.join(missing[:3])}{'...' if len(missing) > 3 else ''}")
        if unexpected:
            details.append(f"unexpected {', '.join(unexpected[:3])}{'...' if len(unexpected) > 3 else ''}")
        raise SlmkitError(
            f"checkpoint {source} does not fit the model in its config.yaml ({'; '.join(details)}): "
            "it comes from a different architecture — use the config.yaml of the run that wrote it"
        )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items() if k in expected})


@dataclass
class InitReport:
    """What `init_from` did: heads loaded, heads newly initialized (the checkpoint lacks them), heads left behind."""

    loaded_heads: list[str]
    new_heads: list[str]
    unused_heads: list[str]

    def lines(self) -> list[str]:
        out = [f"heads loaded from the checkpoint: {', '.join(self.loaded_heads) or 'none'}"]
        if self.new_heads:
            out.append(f"heads the checkpoint lacks, initialized fresh: {', '.join(self.new_heads)}")
        if self.unused_heads:
            out.append(f"checkpoint heads this run does not use: {', '.join(self.unused_heads)}")
        return out


def init_from_checkpoint(model: Model, path: str | Path) -> InitReport:
    """Loads the body (all of it, or nothing) and every head the checkpoint has into `model`, which keeps the fresh
    init of heads the checkpoint lacks. Any weight whose shape differs is refused, named."""
    weights_path, run_dir = _locate(Path(path))
    source_heads = [spec.kind for spec in run_heads(load_run_config(run_dir / CONFIG_FILE))]
    state = with_tied_names(model, read_state_dict(weights_path))
    expected = model.state_dict()
    mismatched = _shape_mismatch(state, expected)
    if mismatched:
        raise SlmkitError(
            f"init_from={path}: weights do not fit this run's model ({'; '.join(mismatched[:3])}"
            f"{'; ...' if len(mismatched) > 3 else ''}); keep the checkpoint's model section (drop model.* overrides)"
        )
    body_missing = sorted(k for k in expected if k.startswith("body.") and k not in state)
    if body_missing:
        raise SlmkitError(
            f"init_from={path}: the checkpoint lacks body weights this model has ({', '.join(body_missing[:3])}"
            f"{'...' if len(body_missing) > 3 else ''}): it is not a model of this architecture"
        )
    loaded = [name for name in model.heads if name in source_heads]
    take = {k: v.to(expected[k].dtype) for k, v in state.items()
            if k in expected and (k.startswith("body.") or k.split(".")[1] in loaded)}
    model.load_state_dict(take, strict=False)
    return InitReport(loaded, [name for name in model.heads if name not in loaded],
                      [name for name in source_heads if name not in model.heads])
