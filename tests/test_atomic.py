"""Atomic folder writes: a folder is replaced whole, in one step, so that no reader ever finds it missing."""

from __future__ import annotations

import os

import pytest

from slmkit import atomic
from slmkit.atomic import atomic_path


def test_a_folder_is_swapped_with_its_replacement_in_one_step(tmp_path, monkeypatch):
    target = tmp_path / "curated"
    target.mkdir()
    (target / "part-old").write_text("old")
    renamed = []
    real_replace = os.replace
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: renamed.append((a, b)) or real_replace(a, b))
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "part-new").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["part-new"]
    assert [p.name for p in tmp_path.iterdir()] == ["curated"]  # the old folder is gone, no temporaries stay
    if not renamed:  # renameat2 swapped the two: there was no moment without a `curated` folder
        return
    pytest.skip("this file system cannot swap two folders in one step; the two-rename fallback ran")


def test_a_failed_folder_write_leaves_the_old_folder_as_it_was(tmp_path):
    target = tmp_path / "curated"
    target.mkdir()
    (target / "part-old").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "part-new").write_text("new")
            raise RuntimeError("the corpus came out empty")
    assert sorted(p.name for p in target.iterdir()) == ["part-old"]
    assert [p.name for p in tmp_path.iterdir()] == ["curated"]
