"""Files named by fsspec URLs (s3://, gs://, memory://, file://): the one place that turns a URL into a file system,
names the package a missing backend needs, and words the message for a store that cannot be reached.

Data preparation reads its sources and publishes its folder through these, and training streams token shards
through them (`slmkit.streamed`). fsspec is imported only when a URL is used: every install has it (datasets
depends on it), but a run on local paths never loads it.
"""

from __future__ import annotations

from typing import Any

from slmkit.errors import SlmkitError

# The backends of the usual object stores and the package each needs (fsspec names it too, less plainly).
BACKENDS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}


def is_url(path: str) -> bool:
    """A path with a protocol (s3://bucket/key, memory://x); `file://` URLs count too."""
    return "://" in str(path)


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec file system, path inside it) of a URL or local path; a SlmkitError naming the package when its
    backend is missing."""
    import fsspec

    protocol = url.split("://", 1)[0] if is_url(url) else "file"
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError:
        package = BACKENDS.get(protocol, f"the fsspec backend for {protocol}://")
        raise SlmkitError(f"{url}: reading {protocol}:// needs {package}, which is not installed: pip install {package}"
                          ) from None
    except ValueError as error:  # an unknown protocol
        raise SlmkitError(f"{url}: {error}; use a local path or an fsspec URL (s3://, gs://, memory://, file://)") from None


def store_errors() -> tuple[type[Exception], ...]:
    """What a call into a store's client raises when the store refuses or fails: fsspec's translations (OSError,
    ValueError) and the client's own errors, which some backends let through untranslated on some paths (s3fs passes
    botocore's NoSuchBucket from closing a written file, for one)."""
    errors: list[type[Exception]] = [OSError, ValueError]
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        pass
    else:
        errors += [BotoCoreError, ClientError]
    return tuple(errors)


def make_folders(fs: Any, path: str) -> None:
    """Makes the folders a file about to be written under `path` needs, where the file system has folders at all.

    An object store has keys, not folders, and its `makedirs` makes the bucket: a mistyped bucket name would become a
    new bucket (where the credentials allow it) holding the data, instead of an error."""
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    if not protocols & set(BACKENDS):
        fs.makedirs(path, exist_ok=True)


def unreachable(url: str, error: Exception) -> SlmkitError:
    return SlmkitError(f"{url} cannot be reached ({type(error).__name__}: {error}); check the URL, the network and "
                       f"the credentials of its store")
