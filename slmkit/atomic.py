"""Atomic writes: a file or folder appears complete under its final name, or not at all.

A crash mid-write leaves at most a hidden temporary beside the target, never a truncated file under the real name;
the owner of a folder removes such leftovers (`remove_temporaries`) before it writes there again. A write that the file
system refuses (full disk, read-only, a file where a folder should be) raises OSError naming the target, not the
temporary.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from slmkit.errors import SlmkitError

_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # what open() gives a new file; some writers (safetensors) create theirs private


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yields a temporary path beside `target`; on success it replaces `target` (file or folder) in one rename."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
    except OSError as err:
        raise naming(err, target) from None
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # callers create a file or a folder here themselves
    try:
        yield tmp
        if tmp.is_dir():
            # Files keep the user's umask whoever wrote them (safetensors creates its files private, 0600).
            for path in tmp.rglob("*"):
                if path.is_file() and not path.is_symlink():
                    os.chmod(path, FILE_MODE)
        if tmp.is_dir() and target.is_dir():
            # A folder cannot be renamed over a non-empty folder: swap the two in one step where the system can (the
            # old one, now at tmp, is dropped below), else move the old one aside first and drop it after.
            if not _exchange(tmp, target):
                old = target.with_name(f".{target.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(target, old)
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
        else:
            if tmp.is_file():
                os.chmod(tmp, FILE_MODE)
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    except OSError as err:
        raise naming(err, target) from None
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


_AT_FDCWD = -100  # renameat2's "relative to the working directory" (Linux)
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swaps two existing paths in one step (Linux renameat2 RENAME_EXCHANGE), so neither name is ever missing;
    False where the system or file system cannot, for the caller's two-rename fallback."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def naming(err: OSError, target: Path) -> OSError:
    """`err` about `target` where it named one of target's temporaries, or nothing: a message naming a hidden
    temporary would send the user looking for the wrong file."""
    if err.errno is None or (err.filename is not None and not Path(err.filename).name.startswith(f".{target.name}.")):
        return err
    return type(err)(err.errno, err.strerror, str(target))


def is_temporary(path: Path) -> bool:
    """Whether `path` is a hidden temporary of an atomic write (`.NAME.*.tmp*`, `.NAME.old`), slmkit's or DeepSpeed's."""
    return path.name.startswith(".") and (".tmp" in path.name or path.name.endswith(".old"))


def remove_temporaries(folder: str | os.PathLike, of: Iterable[str] | None = None) -> list[Path]:
    """Deletes the temporaries that writers killed mid-write left in `folder` (not below it), or only those of the
    targets named in `of`; returns them.

    Only the owner of those targets calls this, before it writes them: nobody else may be writing one right now.
    """
    folder = Path(folder)
    prefixes = tuple(f".{name}." for name in of) if of is not None else (".",)
    removed = [path for path in folder.iterdir() if is_temporary(path) and path.name.startswith(prefixes)] \
        if folder.is_dir() else []
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return removed


def check_writable(target: str | os.PathLike, key: str, folder: bool = False) -> None:
    """Refuses, before any work, a target that cannot be written: a folder where a file goes (or a file where a folder
    goes), or a place that is read-only or not ours; `key` names the setting (out=, out_dir=)."""
    target = Path(target)
    if target.exists() and target.is_dir() != folder:
        raise SlmkitError(f"{key}={target} is a {'file' if folder else 'folder'}, and a {'folder' if folder else 'file'} "
                          f"is written there; choose another {key}")
    existing = next(path for path in target.absolute().parents if path.exists()) if not target.exists() else target
    if not existing.is_dir() and existing != target:
        raise SlmkitError(f"{key}={target}: {existing} is a file, and a folder is needed there; choose another {key}")
    place = existing if existing.is_dir() else existing.parent
    if not os.access(place, os.W_OK):
        raise SlmkitError(f"{key}={target}: {place} is not writable (a read-only file system, or no permission); "
                          f"choose another {key}")


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_copy(source: str | os.PathLike, target: str | os.PathLike) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
        fsync_file(tmp)


def fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
