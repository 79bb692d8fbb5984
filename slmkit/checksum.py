"""Checksums written with every checkpoint and weights file and verified when one is loaded, so a flipped byte or a
truncated copy is refused, naming the file, instead of being trained on or served.

The checksum of `step-8.ckpt` (a file, or a DeepSpeed folder) is `step-8.ckpt.sha256` beside it, in `sha256sum`'s
format with paths relative to the folder both are in: `sha256sum -c step-8.ckpt.sha256` checks it as well.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from slmkit.atomic import atomic_write_text
from slmkit.errors import SlmkitError

SUFFIX = ".sha256"


def checksum_file(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + SUFFIX)


def write_checksum(target: str | Path, content: str | Path | None = None) -> None:
    """Records the SHA-256 of every file of `content` (a file or folder; default `target` itself) under `target`'s
    name, beside `target`. Called before a temporary `content` is renamed to `target`, so that a checkpoint under its
    final name always has its checksum."""
    target = Path(target)
    lines = [f"{_sha256(file)}  {target.name}{inner}\n" for inner, file in _files(Path(content or target))]
    atomic_write_text(checksum_file(target), "".join(lines))


def verify_checksum(path: str | Path) -> bool:
    """True when every file of `path` matches the checksum written with it; False when there is none (written before
    slmkit kept checksums, or by another tool). Raises SlmkitError naming a file that differs or is missing."""
    path = Path(path)
    record = checksum_file(path)
    if not record.is_file():
        return False
    for line in record.read_text(encoding="utf-8").splitlines():
        expected, _, name = line.partition("  ")
        file = path.parent / name
        if not file.is_file():
            raise SlmkitError(f"{file} is missing, and {record} says it belongs to the checkpoint: the checkpoint is "
                              "incomplete; use another one (or copy it again, whole)")
        if _sha256(file) != expected:
            raise SlmkitError(f"{file} does not match the checksum written with it ({record}): the file is damaged "
                              "(changed bytes, or a truncated copy); use another checkpoint, or copy it again from its source")
    return True


def _files(root: Path) -> list[tuple[str, Path]]:
    if root.is_dir():
        return [(f"/{file.relative_to(root).as_posix()}", file) for file in sorted(root.rglob("*")) if file.is_file()]
    return [("", root)]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
