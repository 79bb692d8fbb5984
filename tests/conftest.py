"""Shared fixtures: where the development corpora live, and skipping of GPU-only tests on CPU machines."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_root() -> Path:
    """The ../shared data folder (SLMKIT_SHARED overrides); tests fail loudly if it is missing."""
    return Path(os.environ.get("SLMKIT_SHARED", REPO_ROOT.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    root = shared_root()
    if not (root / "corpora").is_dir():
        pytest.fail(f"shared data not found at {root}: set SLMKIT_SHARED to the folder holding corpora/ and eval/")
    os.environ.setdefault("SLMKIT_SHARED", str(root))  # the built-in task files read it
    return root


@pytest.fixture(scope="session")
def legal_corpus(shared_dir: Path) -> Path:
    return shared_dir / "corpora" / "legal"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Prepared data and tokenizers go to a per-session temporary cache, never beside the sources or in $HOME."""
    monkeypatch.setenv("SLMKIT_CACHE", str(tmp_path_factory.getbasetemp() / "slmkit-cache"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread; more only contend with each other (and with other test processes).
    Modules of tiny-model tests take it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
