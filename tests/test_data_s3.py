"""The s3:// path end to end against a real S3 protocol server on this machine (moto's, no network): sources read
from a bucket, the prepared folder published to one and training's shards streamed back from it.

The memory:// and file:// tests elsewhere prove the logic; this one proves it on the store's own semantics (no
folders, only keys; listings by prefix; a missing bucket), through s3fs and botocore as a cluster would use them.
Skipped where moto or s3fs is not installed (both are in the `dev` extra).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path

import pytest

from test_data_remote import TOKENIZER, config, corpus  # noqa: F401 (corpus is a fixture: the same small mixed corpus)
from data_prep.pipeline import prepare
from slmkit.data import TokenShards
from slmkit.errors import SlmkitError
from slmkit.streamed import open_streamed, token_shards

pytest.importorskip("s3fs", reason="the s3:// test needs s3fs: pip install -e '.[dev]'")
moto_server = pytest.importorskip("moto.server", reason="the s3:// test needs moto's server: pip install -e '.[dev]'")

@pytest.fixture(scope="module")
def s3():
    """An S3 endpoint on localhost with one bucket; botocore finds it through AWS_ENDPOINT_URL, as it would a
    company's S3-compatible store (MinIO, Ceph)."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    saved = {key: os.environ.get(key) for key in
             ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("slmkit-test")
    yield fs
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def digests(folder: Path) -> dict[str, str]:
    """The shards and the tokenizer (the manifest names the sources where they were read, so it differs)."""
    names = ["tokenizer.json", *sorted(p.name for p in folder.glob("*.bin"))]
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in names}


def test_sources_on_s3_prepare_publish_and_stream_back_as_on_a_local_disk(tmp_path, corpus, s3, monkeypatch):
    monkeypatch.setenv("SLMKIT_CACHE", str(tmp_path / "cache"))
    local = prepare(config(corpus), TOKENIZER, tmp_path / "local", progress=False)
    s3.put(corpus["root"], "slmkit-test/mixed", recursive=True)
    sources = [dataclasses.replace(s, path=f"s3://slmkit-test/mixed/{s.path}") for s in corpus["sources"]]
    published = "s3://slmkit-test/prepared/legal"
    prepared = prepare(config(corpus, sources=sources, publish_to=published), TOKENIZER, tmp_path / "from-s3",
                       progress=False)
    assert digests(prepared.shards_dir) == digests(local.shards_dir)
    copied = {name: hashlib.sha256(s3.cat_file(f"slmkit-test/prepared/legal/{name}")).hexdigest()
              for name in digests(local.shards_dir)}
    assert copied == digests(local.shards_dir)
    assert s3.cat_file("slmkit-test/prepared/legal/manifest.json") == (prepared.shards_dir / "manifest.json").read_bytes()
    assert prepared.manifest["splits"] == local.manifest["splits"]
    assert not [key for key in s3.find("slmkit-test/prepared") if "probe" in key or "/work/" in key]

    streamed = open_streamed(published)
    assert streamed.manifest == prepared.manifest and not streamed.reused
    train, expected = token_shards(streamed.shards_dir, "train"), TokenShards(local.shards_dir, "train")
    assert len(train) == len(expected) > 1000
    for start in range(0, len(expected) - 64, 997):
        assert train.window(start, 64).tolist() == expected.window(start, 64).tolist()
    assert open_streamed(published).reused or len(list(streamed.shards_dir.glob("*.bin"))) < len(
        [key for key in s3.find("slmkit-test/prepared/legal") if key.endswith(".bin")])


def test_a_missing_bucket_is_one_clear_message(tmp_path, corpus, s3, monkeypatch):
    monkeypatch.setenv("SLMKIT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SlmkitError, match="cannot be written"):
        prepare(config(corpus, publish_to="s3://no-such-bucket-here/legal"), TOKENIZER, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    s3.invalidate_cache()
    assert not s3.exists("no-such-bucket-here")  # a mistyped bucket is not made (s3fs's makedirs would make it)
    with pytest.raises(SlmkitError, match=r"data.shards_from=s3://no-such-bucket-here/legal (has no manifest|cannot be reached)"):
        open_streamed("s3://no-such-bucket-here/legal")
    sources = [dataclasses.replace(s, path=f"s3://no-such-bucket-here/{s.path}") for s in corpus["sources"]]
    with pytest.raises(SlmkitError, match="no-such-bucket-here"):
        prepare(config(corpus, sources=sources), TOKENIZER, tmp_path / "out", progress=False)


def test_a_store_clients_own_error_is_one_message_too(monkeypatch):
    # some s3fs versions and code paths pass botocore's errors through untranslated (NoSuchBucket on closing a file)
    from botocore.exceptions import ClientError

    from data_prep import remote

    class Refusing:
        protocol = ("s3", "s3a")

        def open(self, *args, **kwargs):
            raise ClientError({"Error": {"Code": "NoSuchBucket", "Message": "The specified bucket does not exist"}},
                              "PutObject")

    monkeypatch.setattr(remote, "filesystem", lambda url: (Refusing(), "no-such-bucket-here/legal"))
    with pytest.raises(SlmkitError, match=r"publish_to=s3://no-such-bucket-here/legal cannot be written \(ClientError: "
                                          r".*NoSuchBucket"):
        remote.check_writable("s3://no-such-bucket-here/legal")
