"""`slmkit compare --html`: one self-contained page of curves, statistics, config diff and provenance, small and
quick for many long runs, and checked in a real browser (headless Chromium): every plot drawn, no network request."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from slmkit.cli import main
from slmkit.config import save_run_config
from slmkit.provenance import with_provenance
from slmkit.recipe import resolve_recipe
from slmkit.research.page import build_page, write_page

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def fake_run(folder: Path, *overrides: str, seed: int = 0, steps: int = 100, val_every: int = 10, finished: bool = True) -> Path:
    """A run folder as training leaves it (config with provenance, metrics.jsonl), with a made-up decreasing loss."""
    folder.mkdir(parents=True)
    config = with_provenance(resolve_recipe("legal-tiny", [*overrides, f"trainer.seed={seed}", f"out_dir={folder}"]))
    save_run_config(config, folder / "config.yaml")
    lr = config.optim.lr
    records = []
    for step in range(1, steps + 1):
        loss = 8 * math.exp(-step * lr * 5) + 2 + 0.01 * ((seed * 7 + step) % 5)
        record = {"step": step, "tokens": step * 256, "flops": step * 256 * 1e6, "wall_s": step * 0.1 + seed * 0.01,
                  "train_loss": loss}
        if step % val_every == 0 or step == steps:
            record["val_loss"] = loss + 0.1
        records.append(record)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if finished:
        (folder / "model.safetensors").write_bytes(b"")
    return folder


def fake_study(tmp_path: Path) -> Path:
    study = {"name": "lr", "recipe": "legal-tiny", "runs_root": str(tmp_path / "runs"), "seeds": 3,
             "cells": {"slow": ["optim.lr=1e-3"], "fast": ["optim.lr=3e-3"]}, "metrics": ["val_loss"]}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    for cell, lr in (("slow", "1e-3"), ("fast", "3e-3")):
        for seed in range(3):
            fake_run(tmp_path / "runs" / "lr" / cell / f"seed-{seed}", f"optim.lr={lr}", seed=seed)
    return path


def page_data(page: str) -> dict:
    return json.loads(re.search(r'<script type="application/json" id="slmkit-data">(.*?)</script>', page, re.S).group(1))


def test_seeds_draw_as_one_mean_with_a_band_and_the_tables_compare_cells(tmp_path):
    page = build_page([str(fake_study(tmp_path))])
    plots = {p["metric"]: p for p in page_data(page)["plots"]}
    assert set(plots) == {"train_loss", "val_loss"}
    groups = {g["name"]: g for g in plots["val_loss"]["groups"]}
    assert set(groups) == {"lr/slow", "lr/fast"} and groups["lr/slow"]["n"] == 3
    assert groups["lr/slow"]["std"] is not None and groups["lr/slow"]["per_step"] == {"tokens": 256.0, "flops": 256e6}
    assert "<th>p (Welch)</th>" in page and "baseline: lr/slow" in page
    diff = re.search(r"Config keys that differ</h2>(.*?)<h2>", page, re.S).group(1)
    assert "optim.lr" in diff and "trainer.seed" not in diff and "model.n_layer" not in diff
    assert page.count("<td>unknown</td>") + page.count("<td>0.1.0</td>") >= 6  # each run's version (and commit) listed


def test_loose_runs_group_by_config_and_one_seed_has_no_test(tmp_path, capsys):
    a = [str(fake_run(tmp_path / f"a{seed}", "optim.lr=1e-3", seed=seed)) for seed in range(2)]
    b = str(fake_run(tmp_path / "b", "optim.lr=3e-3"))
    assert main(["compare", *a, b]) == 0
    out = capsys.readouterr().out
    assert "legal-tiny (" in out and "2 seeds)" in out and "no test possible" in out


def test_twenty_runs_of_ten_thousand_points_make_a_small_page_quickly(tmp_path):
    runs = [str(fake_run(tmp_path / f"run{i}", f"optim.lr={(i + 1) * 1e-4:.1e}", steps=10_000)) for i in range(20)]
    start = time.perf_counter()
    out = write_page(runs, tmp_path / "report.html")
    elapsed = time.perf_counter() - start
    assert elapsed < 10, f"the page took {elapsed:.1f} s to build"
    assert out.stat().st_size < 5_000_000, f"{out.stat().st_size:,} bytes"
    groups = page_data(out.read_text())["plots"][0]["groups"]
    assert len(groups) == 20 and all(len(g["step"]) <= 150 for g in groups)


@pytest.mark.parametrize("make, message", [
    (lambda tmp: [str(fake_run(tmp / "a")), str(tmp)], "is not an slmkit run folder"),
    (lambda tmp: [str(fake_run(tmp / "a")), str(fake_run(tmp / "b", "objective.name=masked_lm", "model.causal=false",
                                                        "tokenizer.special_tokens=[<|endoftext|>,<|mask|>]"))],
     "compare runs of one task"),
])
def test_compare_refuses_what_cannot_be_compared(tmp_path, capsys, make, message):
    assert main(["compare", *make(tmp_path), "--html", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not (tmp_path / "r.html").exists()


# --- in a real browser -------------------------------------------------------------------------------------------

def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no Chromium on this machine: `make test` installs Debian's chromium (apt-get install chromium)")


def open_in_browser(page: Path, folder: Path) -> tuple[str, list[str]]:
    """(the DOM after the page's scripts ran, the URLs the page requested from the network) in headless Chromium."""
    net_log = folder / "net-log.json"
    command = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={folder / 'profile'}", f"--log-net-log={net_log}",
               "--virtual-time-budget=15000", "--dump-dom", page.resolve().as_uri()]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
    log = json.loads(net_log.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    # The browser's own background requests carry no page origin; the page's carry file:// in their isolation key.
    requested = [event["params"]["url"] for event in log["events"]
                 if event["type"] == start_job and "file://" in event["params"].get("network_isolation_key", "")
                 and not event["params"]["url"].startswith("file:")]
    return dom, requested


def test_the_page_renders_every_plot_offline_in_chromium(tmp_path):
    page = write_page([str(fake_study(tmp_path))], tmp_path / "report.html")
    dom, requested = open_in_browser(page, tmp_path / "browser")
    assert requested == []
    plots = len(page_data(page.read_text())["plots"])
    assert f'data-plots-rendered="{plots}"' in dom
    for i in range(plots):
        drawn = re.search(rf'<div class="plot js-plotly-plot" id="plot-{i}".*?</div></div></div>', dom, re.S)
        assert drawn and "main-svg" in drawn.group(0) and "scatterlayer" in drawn.group(0), f"plot {i} not drawn"
    screenshot = tmp_path / "report.png"
    subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'browser' / 'profile'}",
                    "--virtual-time-budget=15000", "--window-size=1280,1600", f"--screenshot={screenshot}",
                    page.resolve().as_uri()], capture_output=True, timeout=120)
    assert screenshot.stat().st_size > 10_000


def test_the_browser_check_sees_a_request_the_page_makes(tmp_path):
    page = tmp_path / "online.html"
    page.write_text('<html><body><img src="http://127.0.0.1:9/x.png"></body></html>')
    _, requested = open_in_browser(page, tmp_path / "browser")
    assert requested == ["http://127.0.0.1:9/x.png"]
