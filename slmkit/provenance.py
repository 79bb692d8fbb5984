"""What a run records so that runs can be compared later: the slmkit commit and version, the machine, and a hash of
the resolved config without its seed (so the seeds of one configuration group together).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import slmkit

# Keys that say where a run is written and reported, or which seed it draws: runs that differ only in these are
# repetitions of one configuration.
UNHASHED_KEYS = ("out_dir", "resume", "provenance", "trainer.seed", "logger", "track")


def config_hash(config: Any) -> str:
    """First 16 hex digits of the sha256 of the config (a RunConfig, or its plain dict) without UNHASHED_KEYS."""
    tree = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else json.loads(json.dumps(config))
    for key in UNHASHED_KEYS:
        *parents, last = key.split(".")
        node = tree
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    text = json.dumps(tree, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def source_commit() -> str:
    """The git commit slmkit runs from, with '-dirty' when its tracked files have changes; 'unknown' outside a checkout
    (an installed wheel) or without git."""
    root = Path(slmkit.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "") if commit else "unknown"


def machine_description() -> str:
    """'host: 2-core x86_64, torch 2.13.0+cpu, NVIDIA H100 x1': enough to tell which figures can be compared."""
    import torch

    accelerator = "no GPU"
    if torch.cuda.is_available():
        accelerator = f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return (f"{platform.node() or 'unknown host'}: {os.cpu_count()}-core {platform.machine()}, "
            f"torch {torch.__version__}, {accelerator}")


def provenance_of(config: Any) -> dict[str, str]:
    """The provenance section of a run about to start from `config`."""
    return {"commit": source_commit(), "version": slmkit.__version__, "config_hash": config_hash(config),
            "machine": machine_description()}


# What every metrics.jsonl record repeats besides its counts and wall_s: a record read alone (one line, one file of
# many gathered from several machines) still says which configuration, seed and source it belongs to.
RECORD_KEYS = ("seed", "commit", "version", "config_hash")


def record_provenance(config: Any) -> dict[str, Any]:
    """The RECORD_KEYS of a run whose config has its provenance filled in (with_provenance)."""
    return {key: config.trainer.seed if key == "seed" else getattr(config.provenance, key) for key in RECORD_KEYS}


def with_provenance(config: Any) -> Any:
    """The RunConfig with its provenance section filled in for a run starting now."""
    from slmkit.config import ProvenanceConfig

    return dataclasses.replace(config, provenance=ProvenanceConfig(**provenance_of(config)))
