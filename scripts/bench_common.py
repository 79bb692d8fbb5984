"""What the benchmark scripts share: where the repo and the shared data are, and `slmkit` run as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SLMKIT_SHARED", REPO.parent / "shared")).resolve()


def slmkit_env() -> dict[str, str]:
    """The environment for an slmkit subprocess: the shared data where this script found it."""
    return {**os.environ, "SLMKIT_SHARED": str(SHARED), "SLMKIT_DATA": os.environ.get("SLMKIT_DATA", str(SHARED / "corpora"))}


def slmkit(*args: str) -> float:
    """Runs `slmkit ARGS` from the repo root; returns its wall time; stops the benchmark if it fails."""
    start = time.perf_counter()
    print(f"$ slmkit {' '.join(args)}", flush=True)
    result = subprocess.run([sys.executable, "-m", "slmkit.cli", *args], cwd=REPO, env=slmkit_env())
    if result.returncode:
        sys.exit(f"slmkit {' '.join(args)} failed with exit code {result.returncode}")
    return time.perf_counter() - start


def section_overrides(section: str, values: dict) -> list[str]:
    """A config section's values as dotted command-line overrides (None as null): every key of it set on another run."""
    return [f"{section}.{key}={'null' if value is None else value}" for key, value in values.items()]
