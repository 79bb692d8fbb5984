"""Reading back what data preparation wrote, for the data tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_prep.chunks import read_json
from data_prep.curate import CORPUS_DIR, CORPUS_DONE, corpus_records


def curated_documents(prepared_dir: Path, split: str) -> list[dict[str, Any]]:
    """The curated documents of one split of a prepared folder ({"id", "source", "text"} each), in corpus order."""
    return list(corpus_records(prepared_dir, read_json(prepared_dir / CORPUS_DIR / CORPUS_DONE), split))
