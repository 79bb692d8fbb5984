"""Loading a trained model for inference: from a run folder, a Lightning checkpoint, a DeepSpeed folder or safetensors.

Eval, generation and export start here, never from a training run's internals. Only tensors are loaded:
safetensors, or torch.load(weights_only=True) — a checkpoint can never run code.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_model

from slmkit.config import RunConfig, load_run_config, save_run_config
from slmkit.errors import SlmkitError
from slmkit.model import Transformer

CONFIG_FILE = "config.yaml"
TOKENIZER_FILE = "tokenizer.json"
WEIGHTS_FILE = "model.safetensors"
LIGHTNING_PREFIX = "model."  # the LightningModule holds the Transformer as `self.model`


@dataclass
class LoadedCheckpoint:
    model: Transformer
    config: RunConfig
    tokenizer_path: Path
    path: Path

    def tokenizer(self):
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(self.tokenizer_path))


def save_inference_checkpoint(out_dir: str | Path, model: Transformer, config: RunConfig, tokenizer_path: str | Path) -> Path:
    """Writes config.yaml + tokenizer.json + model.safetensors (fp32) into out_dir; returns the weights path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_run_config(config, out_dir / CONFIG_FILE)
    if Path(tokenizer_path).resolve() != (out_dir / TOKENIZER_FILE).resolve():
        shutil.copyfile(tokenizer_path, out_dir / f".{TOKENIZER_FILE}.tmp")
        (out_dir / f".{TOKENIZER_FILE}.tmp").replace(out_dir / TOKENIZER_FILE)
    tmp = out_dir / f".{WEIGHTS_FILE}.tmp"
    fp32 = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    # save_model drops the tied lm_head alias so safetensors does not refuse shared storage.
    shadow = Transformer(config.model)
    shadow.load_state_dict(fp32)
    save_model(shadow, str(tmp))
    tmp.replace(out_dir / WEIGHTS_FILE)
    return out_dir / WEIGHTS_FILE


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
    state = read_state_dict(weights_path)
    model = Transformer(config.model)
    _load_into(model, state, weights_path)
    model.to(map_location).eval()
    return LoadedCheckpoint(model=model, config=config, tokenizer_path=tokenizer_path, path=weights_path)


def _locate(path: Path) -> tuple[Path, Path]:
    """(weights, run folder) for a run folder, a checkpoint file/folder inside checkpoints/, or a weights file."""
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        if (path / WEIGHTS_FILE).is_file():
            return path / WEIGHTS_FILE, path
        latest = latest_checkpoint(path / "checkpoints")
        if latest is None:
            raise SlmkitError(f"{path} has no {WEIGHTS_FILE} and no checkpoints/: the run has not saved a checkpoint yet")
        return latest, path
    for parent in [path.parent, path.parent.parent]:
        if (parent / CONFIG_FILE).is_file():
            return path, parent
    raise SlmkitError(f"no {CONFIG_FILE} found beside {path} or in its run folder: slmkit needs the run's config to build the model")


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest checkpoint by step (last.ckpt wins when present); None when there is none."""
    if not checkpoint_dir.is_dir():
        return None
    last = checkpoint_dir / "last.ckpt"
    if last.exists():
        return last
    steps = [(checkpoint_step(p), p) for p in checkpoint_dir.glob("step-*.ckpt")]
    steps = [(s, p) for s, p in steps if s is not None]
    return max(steps)[1] if steps else None


def checkpoint_step(path: Path) -> int | None:
    stem = path.name.removesuffix(".ckpt")
    if stem.startswith("step-") and stem[5:].isdigit():
        return int(stem[5:])
    return None


def read_state_dict(weights_path: Path) -> dict[str, torch.Tensor]:
    """Model tensors from safetensors, a Lightning .ckpt file, or a DeepSpeed checkpoint folder."""
    if weights_path.suffix == ".safetensors":
        return load_file(str(weights_path))
    if weights_path.is_dir():
        from slmkit.zero_checkpoint import consolidate_zero_checkpoint

        state = consolidate_zero_checkpoint(weights_path)
    else:
        try:
            payload = torch.load(weights_path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle/zip errors: truncated, foreign or not a checkpoint at all
            raise SlmkitError(f"cannot read checkpoint {weights_path}: {err}. Is the file complete?") from None
        state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
        if not isinstance(state, dict):
            raise SlmkitError(f"{weights_path} holds no state_dict: not an slmkit checkpoint")
    if any(k.startswith(LIGHTNING_PREFIX) for k in state):
        state = {k[len(LIGHTNING_PREFIX):]: v for k, v in state.items() if k.startswith(LIGHTNING_PREFIX)}
    return state


def _load_into(model: Transformer, state: dict[str, torch.Tensor], source: Path) -> None:
    expected = model.state_dict()
    if model.config.tie_embeddings and "lm_head.weight" not in state and "tok_embeddings.weight" in state:
        state = {**state, "lm_head.weight": state["tok_embeddings.weight"]}
    # safetensors' save_model may keep either name of the tied pair.
    if model.config.tie_embeddings and "tok_embeddings.weight" not in state and "lm_head.weight" in state:
        state = {**state, "tok_embeddings.weight": state["lm_head.weight"]}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        details = []
        if mismatched:
            k = mismatched[0]
            details.append(f"{k} is {tuple(state[k].shape)} in the checkpoint but {tuple(expected[k].shape)} in the model")
        if missing:
            details.append(f"missing {', '.join(missing[:3])}{'...' if len(missing) > 3 else ''}")
        if unexpected:
            details.append(f"unexpected {', '.join(unexpected[:3])}{'...' if len(unexpected) > 3 else ''}")
        raise SlmkitError(
            f"checkpoint {source} does not fit the model in its config.yaml ({'; '.join(details)}): "
            "it comes from a different architecture — use the config.yaml of the run that wrote it"
        )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items() if k in expected})
