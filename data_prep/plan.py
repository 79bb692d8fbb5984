"""A prepare run's plan: where it writes, and the hashes of its inputs that decide what an earlier run left can be
reused. Made by `prepare.make_plan`, read by every stage (curation, tokenizer, packing)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Plan:
    """Where a prepare run writes, and the hashes that decide what can be reused."""

    root: Path
    folder: Path
    fingerprints: list[dict[str, Any]]
    corpus_sha256: str
    tokenizer_key: str
    inputs_sha256: str
    eval_files: list[str]  # the evaluation sets to decontaminate against, resolved

    @property
    def work(self) -> Path:
        """Intermediate chunk files of this corpus; kept so that a crashed run resumes instead of restarting."""
        return self.folder / "work" / self.corpus_sha256[:16]
