"""Token shards streamed from a folder or object store (`data.shards_from=URL`), for nodes without a shared disk.

The URL names a prepared folder as `slmkit data prepare` writes it (and `data.publish_to` copies it): manifest.json,
tokenizer.json and the token shards. Training reads the manifest, and each shard is fetched into a local cache,
`$SLMKIT_CACHE/streamed/<sha256 of the manifest>/`, the first time one of a rank's windows reads from it (with
random windows that is soon most shards). The ranks and DataLoader workers of one node share the cache: one of them
downloads a shard while the others wait for it (a lock file per shard), and a brief network error is retried with a
short backoff before it ends the run. A download is checked against the sha256 the manifest records for the shard (its size only,
with a warning, for a manifest written before slmkit recorded them) and renamed into place only then: a file under
a shard's name in the cache is complete and verified, a crash leaves at most a hidden temporary, and a corrupt
download is dropped and fetched again. The cache folder, holding the manifest, is an ordinary prepared folder to
everything downstream; a note in it (`streamed_from.json`) says where its missing shards come from.

Where training is in the sample stream is the data module's business, saved in the checkpoint as for a local
folder (`trainer.data_order=global_index` resumes exactly at any world size): nothing here keeps state beyond the
cache, which is keyed by the manifest's content, so a folder published again under the same URL is a new cache (and a
run that trained on the old copy refuses to resume on it: training/resume.py, check_same_data).
"""

from __future__ import annotations

import hashlib
import fcntl
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from slmkit.atomic import atomic_path, atomic_write_bytes, atomic_write_text, fsync_file, remove_temporaries
from slmkit.data import MANIFEST, PreparedData, TokenShards, cache_root, parse_manifest, read_manifest
from slmkit.errors import SlmkitError
from slmkit.filesystems import filesystem, store_errors, unreachable
from slmkit.tokenizer import TOKENIZER_FILE, tokenizer_sha256

log = logging.getLogger("slmkit")

CACHE_DIR = "streamed"  # under cache_root()
SOURCE_NOTE = "streamed_from.json"  # in a cache folder: the URL its shards are fetched from
ATTEMPTS = 2  # downloads of a file before a mismatch with the manifest is reported (a flipped bit in transit passes the second)
TRIES = 4  # reads of a file before a network error is reported: shards are fetched hours into a run
BACKOFF_SECONDS = 2.0  # the wait before the second read, doubled before each further one
CHUNK_BYTES = 8 * 2**20
REPUBLISH = "publish the prepared folder there again (`slmkit data prepare recipe=... data.publish_to=URL`)"


def open_streamed(url: str, tokenizer_path: Optional[str] = None) -> PreparedData:
    """The prepared folder at `url` as a local cache folder: its manifest and tokenizer fetched (and checked), its
    shards left to be fetched as they are read. `reused` is True when every shard is cached already.

    `tokenizer_path`, the recipe's tokenizer.path (set by init_from), must be the tokenizer the shards were encoded
    with: the model would otherwise read ids that mean other tokens."""
    fs, root = filesystem(url)
    root = root.rstrip("/")
    content = _read_manifest(fs, root, url)
    manifest = parse_manifest(content, f"{url.rstrip('/')}/{MANIFEST}")
    folder = cache_root() / CACHE_DIR / hashlib.sha256(content).hexdigest()[:16]
    tokenizer = folder / TOKENIZER_FILE
    if not tokenizer.is_file() or tokenizer_sha256(tokenizer) != manifest["tokenizer_sha256"]:
        _download(fs, f"{root}/{TOKENIZER_FILE}", tokenizer, url, manifest["tokenizer_sha256"], None)
    own = Path(tokenizer_path).expanduser() if tokenizer_path else None
    if own is not None and (not own.is_file() or tokenizer_sha256(own) != manifest["tokenizer_sha256"]):
        raise SlmkitError(
            f"tokenizer.path={tokenizer_path} is not the tokenizer the shards at data.shards_from={url} were encoded "
            f"with (their manifest's tokenizer_sha256 is {manifest['tokenizer_sha256'][:16]}...): stream shards "
            f"prepared with this tokenizer, or leave tokenizer.path unset to train with the shards' own")
    note = json.dumps({"url": url}) + "\n"
    if not (folder / SOURCE_NOTE).is_file() or (folder / SOURCE_NOTE).read_text(encoding="utf-8") != note:
        atomic_write_text(folder / SOURCE_NOTE, note)  # the latest URL: copies of one manifest are interchangeable
    if not (folder / MANIFEST).is_file() or (folder / MANIFEST).read_bytes() != content:
        atomic_write_bytes(folder / MANIFEST, content)
    if any("sha256" not in entry for split in manifest["splits"].values() for entry in split["shards"]):
        log.warning("%s/%s records no sha256 per shard (written by an older slmkit): streamed shards are checked by "
                    "size only. To have each checked by content, delete the prepared folder, prepare it again and "
                    "publish it (`slmkit data prepare recipe=... data.publish_to=%s`)", url.rstrip("/"), MANIFEST, url)
    itemsize = np.dtype(manifest["dtype"]).itemsize
    cached = all(_is_cached(folder / entry["file"], entry["tokens"] * itemsize)
                 for split in manifest["splits"].values() for entry in split["shards"])
    return PreparedData(folder, tokenizer, manifest, reused=cached)


def token_shards(shards_dir: Path, split: str) -> TokenShards:
    """One split of a prepared folder: a local one as it is, a streamed cache with its shards fetched as they are read."""
    note = Path(shards_dir) / SOURCE_NOTE
    if not note.is_file():
        return TokenShards(shards_dir, split)
    url = json.loads(note.read_text(encoding="utf-8"))["url"]
    itemsize = np.dtype(read_manifest(shards_dir)["dtype"]).itemsize
    return TokenShards(shards_dir, split, fetch=ShardFetcher(url, Path(shards_dir), itemsize))


def describe(url: str) -> str:
    """The dry run's line: where the shards will come from (nothing is fetched)."""
    return (f"token shards streamed from {url}: the manifest is read when training starts, each shard fetched into "
            f"{cache_root() / CACHE_DIR}/<manifest sha256>/ when first read")


@dataclass(frozen=True)
class ShardFetcher:
    """Brings one shard of the prepared folder at `url` into the cache folder, checked; a plain value, so that
    DataLoader workers receive it."""

    url: str
    folder: Path
    itemsize: int  # bytes per token

    def __call__(self, entry: dict[str, Any]) -> Path:
        target = self.folder / entry["file"]
        size = entry["tokens"] * self.itemsize
        if _is_cached(target, size):  # under its own name only once checked (below)
            return target
        # One download per node: the other ranks and workers that want this shard wait here, then find it cached.
        with open(self.folder / f".{entry['file']}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if _is_cached(target, size):
                return target
            remove_temporaries(self.folder, of=[entry["file"]])  # a crashed fetcher's; with the lock, nobody writes one
            fs, root = filesystem(self.url)
            _download(fs, f"{root.rstrip('/')}/{entry['file']}", target, self.url, entry.get("sha256"), size)
        return target


def _is_cached(path: Path, size: int) -> bool:
    return path.is_file() and path.stat().st_size == size


def _read_manifest(fs: Any, root: str, url: str) -> bytes:
    try:
        return fs.cat_file(f"{root}/{MANIFEST}")
    except FileNotFoundError:
        raise SlmkitError(
            f"data.shards_from={url} has no {MANIFEST}: it is not a prepared data folder, or its copy is unfinished "
            f"(the manifest is copied last). Point data.shards_from at a folder written by `slmkit data prepare` "
            f"(with data.publish_to=URL for an object store)") from None
    except store_errors() as error:
        raise unreachable(f"data.shards_from={url}", error) from None


def _download(fs: Any, remote: str, target: Path, url: str, sha256: Optional[str], size: Optional[int]) -> None:
    """Copies `remote` to `target` through a temporary that is renamed into place only when its sha256 (or, with
    none recorded, its size) is the manifest's; a mismatch is fetched once more, then refused with nothing kept, and
    a network error is retried TRIES times, waiting longer each time, then reported."""
    name = target.name
    mismatches, failures = 0, 0
    while True:
        digest, written = hashlib.sha256(), 0
        try:
            with atomic_path(target) as tmp:
                with open(tmp, "wb") as out:
                    for chunk in _remote_chunks(fs, remote, url, name):
                        digest.update(chunk)
                        out.write(chunk)
                        written += len(chunk)
                if (digest.hexdigest() != sha256) if sha256 is not None else (written != size):
                    raise _Mismatch  # atomic_path drops the temporary: the cache keeps no copy that failed the check
                fsync_file(tmp)
            return
        except _Transient as transient:
            failures += 1
            if failures == TRIES:
                raise unreachable(f"{name} at data.shards_from={url}", transient.error) from None
            wait = BACKOFF_SECONDS * 2 ** (failures - 1)
            log.warning("reading %s from %s failed (%s: %s); trying again in %.0f s", name, url,
                        type(transient.error).__name__, transient.error, wait)
            _sleep(wait)
        except _Mismatch:
            mismatches += 1
            if mismatches == ATTEMPTS:
                break
            log.warning("%s from %s does not match its manifest (sha256 %s, %d bytes); fetching it again",
                        name, url, digest.hexdigest(), written)
    expected = f"sha256 {sha256}" if sha256 is not None else f"{size} bytes"
    raise SlmkitError(
        f"{name} at data.shards_from={url} does not match its manifest: fetched {ATTEMPTS} times, it has sha256 "
        f"{digest.hexdigest()} ({written} bytes), the manifest says {expected}. The copy there is damaged or was "
        f"changed after its manifest was written, and nothing of it was kept: {REPUBLISH}")


class _Mismatch(Exception):
    """A download that differs from its manifest entry (never leaves `_download`)."""


class _Transient(Exception):
    """A read that failed on the way (a reset connection, a timeout): `_download` tries again before it reports
    `error`; never leaves `_download`."""

    def __init__(self, error: Exception):
        super().__init__(error)
        self.error = error


def _sleep(seconds: float) -> None:
    time.sleep(seconds)  # a function of its own, so that tests wait for nothing


def _remote_chunks(fs: Any, remote: str, url: str, name: str) -> Iterator[bytes]:
    try:
        with fs.open(remote, "rb") as source:
            while chunk := source.read(CHUNK_BYTES):
                yield chunk
    except FileNotFoundError:
        raise SlmkitError(f"data.shards_from={url} has no {name}, which its manifest lists: the copy there is "
                          f"incomplete; {REPUBLISH}") from None
    except OSError as error:
        raise _Transient(error) from None  # a reset connection or a timeout may pass: `_download` tries again
    except store_errors() as error:  # refused (ValueError, a client's own error): trying again would not help
        raise unreachable(f"{name} at data.shards_from={url}", error) from None
