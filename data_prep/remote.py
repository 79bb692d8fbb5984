"""Sources on other file systems: a source path that is an fsspec URL (s3://, gs://, memory://, file://) is listed
and read through fsspec, so the pool and every datatrove task read object stores the way they read a local disk.

Local paths never go through here: a plain path stays a `pathlib.Path` and is opened with the built-in `open`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO, Any

from slmkit.errors import SlmkitError
from slmkit.filesystems import filesystem, is_url, make_folders, store_errors, unreachable

__all__ = ["RemotePath", "list_files", "source_file", "relative_name", "check_writable", "publish_copy"]


@dataclass(frozen=True)
class RemotePath:
    """A file on an fsspec file system: the URL it was named by, and enough of pathlib's surface for the readers."""

    url: str

    @property
    def name(self) -> str:
        return PurePosixPath(self.url.split("://", 1)[1]).name

    def __str__(self) -> str:
        return self.url

    def open(self) -> IO[bytes]:
        fs, path = filesystem(self.url)
        try:
            return fs.open(path, "rb")
        except store_errors() as error:
            raise unreachable(self.url, error) from None

    def fingerprint(self) -> list[Any]:
        """URL, size and the store's version marker (modification time, or ETag): a changed object changes it."""
        fs, path = filesystem(self.url)
        try:
            info = fs.info(path)
        except store_errors() as error:
            raise unreachable(self.url, error) from None
        version = next((info[key] for key in ("mtime", "LastModified", "updated", "created", "ETag", "etag")
                        if info.get(key) is not None), None)
        return [self.url, info.get("size"), str(version)]


def list_files(url: str) -> tuple[list[RemotePath], str]:
    """The files a source URL names (one file, every file under a folder, or a glob) in a stable order, with the
    URL prefix their relative names start after."""
    import glob

    fs, path = filesystem(url)
    protocol = url.split("://", 1)[0]
    try:
        if glob.has_magic(path):
            found = sorted(p for p in fs.glob(path) if fs.isfile(p))
            base = path[: path.index(next(part for part in path.split("/") if glob.has_magic(part)))].rstrip("/")
        elif fs.isdir(path):
            found, base = sorted(fs.find(path)), path.rstrip("/")
        elif fs.isfile(path):
            found, base = [path], path.rsplit("/", 1)[0] if "/" in path else ""
        else:
            found, base = [], path
    except store_errors() as error:
        raise unreachable(url, error) from None
    return [RemotePath(fs.unstrip_protocol(p) if protocol != "file" else f"file://{p}") for p in found], base


def source_file(path: str) -> Any:
    """A file named by a string: a RemotePath for a URL, else a local Path."""
    from pathlib import Path

    return RemotePath(path) if is_url(path) else Path(path)


def relative_name(remote: RemotePath, base: str) -> str:
    """The file's path under the source's base folder (the stable part of its documents' ids)."""
    path = remote.url.split("://", 1)[1]
    base = base.split("://", 1)[-1]
    return path[len(base):].lstrip("/") if base and path.startswith(base) else PurePosixPath(path).name


# ---- publishing a prepared folder to another file system ------------------------------------------------------

PROBE = ".slmkit-write-probe"


def check_writable(url: str) -> None:
    """Writes and removes a small file under the URL, so an unwritable destination fails before any work."""
    fs, path = filesystem(url)
    probe = f"{path.rstrip('/')}/{PROBE}"
    try:
        make_folders(fs, path)
        with fs.open(probe, "wb") as handle:
            handle.write(b"slmkit")
        fs.rm(probe)
    except store_errors() as error:
        raise SlmkitError(f"data.publish_to={url} cannot be written ({type(error).__name__}: {error}); check the URL, "
                          f"its permissions and the store's credentials") from None


def publish_copy(folder: Any, url: str, manifest_name: str) -> None:
    """Copies a prepared folder to the URL, the manifest last: a copy cut short has no manifest, so nothing
    reads it as complete. An existing copy of the same inputs (same manifest) is left as it is."""
    fs, path = filesystem(url)
    target = path.rstrip("/")
    manifest = (folder / manifest_name).read_bytes()
    try:
        if fs.isfile(f"{target}/{manifest_name}") and fs.cat_file(f"{target}/{manifest_name}") == manifest:
            return
        if fs.isfile(f"{target}/{manifest_name}"):
            fs.rm(f"{target}/{manifest_name}")  # unpublish the old copy before any of its files change
        for file in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != manifest_name
                           and "work" not in p.relative_to(folder).parts and "curated" not in p.relative_to(folder).parts):
            parent = file.parent.relative_to(folder).as_posix()
            make_folders(fs, target if parent == "." else f"{target}/{parent}")
            fs.put_file(str(file), f"{target}/{file.relative_to(folder).as_posix()}")
        fs.pipe_file(f"{target}/{manifest_name}", manifest)
    except store_errors() as error:
        raise SlmkitError(f"copying the prepared data to {url} failed ({type(error).__name__}: {error}); nothing there "
                          f"reads as complete (no manifest): fix the cause and run again") from None
