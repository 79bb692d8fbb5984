"""`slmkit compare RUN_OR_STUDY... --html report.html`: one self-contained page (plotly's JavaScript embedded, no
network) with the loss curves of every group of runs overlaid (x: step, tokens, FLOPs or wall time; log axes;
smoothing; seeds of a group as a mean line with a ±1 std band), the table of final metrics (mean ± std, Welch's
p-value against the baseline), the config keys that differ, and each run's commit, version and machine.

Runs group by their seedless config hash (or by study cell). Each curve is reduced to bin means so the page stays
small whatever the runs logged: POINT_BUDGET points over all curves together.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from slmkit.atomic import atomic_write_text
from slmkit.errors import SlmkitError
from slmkit.provenance import UNHASHED_KEYS
from slmkit.research.results import RunResult, read_run
from slmkit.research.stats import REPORT_COLUMNS, CellStats, format_row

POINT_BUDGET = 6000  # points over all curves of the page: 20 groups x 2 curves get 150 each
MIN_POINTS, MAX_POINTS = 50, 1000
CURVES = ("train_loss", "val_loss")
X_AXES = {"step": "step", "tokens": "tokens", "flops": "training FLOPs", "wall_s": "wall time (s)"}


@dataclasses.dataclass
class Group:
    name: str
    runs: list[RunResult]


def plotly_js() -> str:
    try:
        from plotly.offline import get_plotlyjs
    except ImportError:
        raise SlmkitError("slmkit compare --html needs the package plotly: pip install 'slmkit[research]'") from None
    return get_plotlyjs()


def collect_groups(sources: list[str]) -> tuple[list[Group], str, list[str]]:
    """(groups, baseline group, metrics to tabulate) from run folders and study files; a study's cells are its groups
    and its baseline the baseline; loose runs group by config hash, the first group the baseline."""
    from slmkit.research.report import study_results
    from slmkit.research.study import load_study

    if not sources:
        raise SlmkitError("name what to compare: slmkit compare RUN_OR_STUDY... --html report.html")
    groups: dict[str, Group] = {}
    baseline, metrics = None, list(CURVES)
    loose: list[RunResult] = []
    for source in sources:
        path = Path(source)
        if path.is_file() and path.suffix in (".yaml", ".yml"):
            study = load_study(path, check_runs=False)
            for cell, runs in study_results(study).items():
                if runs:
                    groups[f"{study.config.name}/{cell}"] = Group(f"{study.config.name}/{cell}", runs)
            baseline = baseline or f"{study.config.name}/{study.baseline}"
            metrics += [m for m in study.config.metrics if m not in metrics]
        else:
            loose.append(read_run(path))
    by_hash: dict[str, list[RunResult]] = {}
    for run in loose:
        by_hash.setdefault(run.config.provenance.config_hash or str(run.folder), []).append(run)
    for config_hash, runs in by_hash.items():
        name = str(runs[0].folder) if len(runs) == 1 else f"{runs[0].config.name} ({config_hash[:8]}, {len(runs)} seeds)"
        groups[name] = Group(name, runs)
    if not groups:
        raise SlmkitError(f"nothing to compare in {', '.join(sources)}: no finished runs (run the study first)")
    _check_same_task([run for group in groups.values() for run in group.runs])
    for group in groups.values():
        for run in group.runs:
            metrics += [m for m in run.final_eval if m not in metrics]
    return list(groups.values()), baseline or next(iter(groups)), metrics


def _check_same_task(runs: list[RunResult]) -> None:
    def task(run: RunResult) -> tuple[str, str | None]:
        return run.config.objective.name, run.config.objective.task

    first = runs[0]
    for run in runs[1:]:
        if task(run) != task(first):
            raise SlmkitError(f"{run.folder} trains {'/'.join(filter(None, task(run)))} but {first.folder} trains "
                              f"{'/'.join(filter(None, task(first)))}: compare runs of one task")


def _curve(group: Group, metric: str) -> dict[str, Any] | None:
    """The group's mean and std over seeds at the steps every seed logged, with wall time per step (the seeds' mean)."""
    per_run = []
    for run in group.runs:
        steps = np.array([r["step"] for r in run.history if isinstance(r.get("wall_s"), (int, float))], dtype=float)
        walls = np.array([r["wall_s"] for r in run.history if isinstance(r.get("wall_s"), (int, float))], dtype=float)
        points = {r["step"]: float(r[metric]) for r in run.history if isinstance(r.get(metric), (int, float))}
        if points:
            wall = dict(zip(points, np.interp(list(points), steps, walls) if len(steps) else [math.nan] * len(points)))
            per_run.append((points, wall))
    if not per_run:
        return None
    common = sorted(set.intersection(*(set(points) for points, _ in per_run)))
    if not common:
        return None
    values = np.array([[points[s] for s in common] for points, _ in per_run])
    walls = np.array([[wall[s] for s in common] for _, wall in per_run])
    last = group.runs[0].history[-1] if group.runs[0].history else {}
    per_step = {key: last[key] / last["step"] for key in ("tokens", "flops") if last.get(key) and last.get("step")}
    return {"step": np.array(common, dtype=float), "wall_s": walls.mean(axis=0), "mean": values.mean(axis=0),
            "std": values.std(axis=0, ddof=1) if len(per_run) > 1 else None, "per_step": per_step, "n": len(per_run)}


def _bin_means(array: np.ndarray, points: int) -> np.ndarray:
    """The array in `points` bins of consecutive entries, each its mean (the last bin keeps the final value's region)."""
    if len(array) <= points:
        return array
    return np.array([chunk.mean() for chunk in np.array_split(array, points)])


def _rounded(array: np.ndarray | None) -> list[float | None] | None:
    if array is None:
        return None
    return [None if not math.isfinite(v) else float(f"{v:.5g}") for v in array.tolist()]


def curves_payload(groups: list[Group], metrics: list[str]) -> list[dict[str, Any]]:
    plots = []
    curves = {metric: [(group, _curve(group, metric)) for group in groups] for metric in metrics}
    curves = {metric: [(g, c) for g, c in entries if c is not None] for metric, entries in curves.items()}
    curves = {metric: entries for metric, entries in curves.items() if entries}
    total = sum(len(entries) for entries in curves.values())
    points = max(MIN_POINTS, min(MAX_POINTS, POINT_BUDGET // max(total, 1)))
    for metric, entries in curves.items():
        plots.append({"metric": metric, "groups": [{
            "name": group.name, "n": curve["n"], "per_step": curve["per_step"],
            **{key: _rounded(_bin_means(curve[key], points) if curve[key] is not None else None)
               for key in ("step", "wall_s", "mean", "std")},
        } for group, curve in entries]})
    return plots


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def config_diff(groups: list[Group]) -> tuple[list[str], list[list[str]]]:
    """(keys, one row per key: each group's value) for the config keys whose values differ; seeds and folders aside."""
    flat = [[_flat(dataclasses.asdict(run.config)) for run in group.runs] for group in groups]
    keys = sorted({key for runs in flat for run in runs for key in run})
    skipped = lambda key: any(key == k or key.startswith(k + ".") for k in UNHASHED_KEYS)  # noqa: E731
    rows = []
    for key in keys:
        if skipped(key):
            continue
        values = [[json.dumps(run.get(key)) for run in runs] for runs in flat]
        if len({v for column in values for v in column}) > 1:
            rows.append([key, *(" | ".join(dict.fromkeys(column)) for column in values)])
    return [group.name for group in groups], rows


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def final_metrics(groups: list[Group], baseline: str, metrics: list[str]) -> dict[str, list[CellStats]]:
    from slmkit.research.report import group_statistics

    return group_statistics({group.name: group.runs for group in groups}, metrics, baseline)


def final_metrics_text(sources: list[str]) -> str:
    """The page's statistics as Markdown tables, for the terminal."""
    from slmkit.research.report import markdown_table

    groups, baseline, metrics = collect_groups(sources)
    return "\n\n".join(f"## {metric}\n\n{markdown_table(rows)}" for metric, rows in final_metrics(groups, baseline, metrics).items())


def build_page(sources: list[str]) -> str:
    groups, baseline, metrics = collect_groups(sources)
    js = plotly_js()
    plots = curves_payload(groups, [m for m in dict.fromkeys([*CURVES, *metrics]) if not m.startswith("eval/")])
    sections = [f"<h3>{html.escape(metric)}</h3>" + _table(REPORT_COLUMNS, [format_row(row) for row in rows])
                for metric, rows in final_metrics(groups, baseline, metrics).items()]
    names, diff = config_diff(groups)
    info = [[str(run.folder), group.name, str(run.seed), str(run.history[-1]["step"] if run.history else 0),
             run.config.provenance.commit or "–", run.config.provenance.version or "–",
             run.config.provenance.machine or "–", run.config.provenance.config_hash or "–"]
            for group in groups for run in group.runs]
    data = json.dumps({"plots": plots, "axes": X_AXES}, separators=(",", ":")).replace("</", "<\\/")
    plot_divs = "".join(f'<div class="plot" id="plot-{i}"></div>' for i in range(len(plots)))
    return PAGE.format(
        title=html.escape(", ".join(sources)), plotly=js, data=data, plots=plot_divs, baseline=html.escape(baseline),
        metrics="".join(sections) or "<p>No final metrics.</p>",
        diff=_table(["key", *names], diff) if diff else "<p>The groups share every config key (seeds and folders aside).</p>",
        runs=_table(["run", "group", "seed", "steps", "commit", "version", "machine", "config hash"], info),
        script=SCRIPT)


def write_page(sources: list[str], out: str | Path) -> Path:
    out = Path(out)
    atomic_write_text(out, build_page(sources))
    return out


PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>slmkit compare: {title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }} table {{ border-collapse: collapse; margin: .5em 0 1.5em; font-size: 13px; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }} .plot {{ height: 420px; }}
#controls label {{ margin-right: 1.5em; }}
</style>
<script>{plotly}</script></head>
<body>
<h1>slmkit comparison</h1>
<p>{title}</p>
<div id="controls">
<label>x axis <select id="x-axis"></select></label>
<label><input type="checkbox" id="log-x"> log x</label>
<label><input type="checkbox" id="log-y"> log y</label>
<label>smoothing <input type="range" id="smoothing" min="0" max="0.99" step="0.01" value="0"> <span id="smoothing-value">0</span></label>
</div>
{plots}
<h2>Final metrics (baseline: {baseline})</h2>
<p>Mean ± standard deviation over seeds, the 95% t interval of the mean, and Welch's t-test against the baseline.</p>
{metrics}
<h2>Config keys that differ</h2>
{diff}
<h2>Runs</h2>
{runs}
<script type="application/json" id="slmkit-data">{data}</script>
<script>{script}</script>
</body></html>
"""

SCRIPT = """
const DATA = JSON.parse(document.getElementById("slmkit-data").textContent);
const COLORS = ["#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880", "#ff97ff", "#fecb52"];
const select = document.getElementById("x-axis");
for (const [key, label] of Object.entries(DATA.axes)) {
  const usable = DATA.plots.every(p => p.groups.every(g => key === "step" || key === "wall_s" ? g[key] : g.per_step[key]));
  if (usable) select.add(new Option(label, key));
}
function smooth(values, weight) {
  if (!values || weight <= 0) return values;
  let last = null;
  return values.map(v => (v === null ? v : (last = last === null ? v : last * weight + v * (1 - weight))));
}
function xs(group, axis) {
  if (axis === "step" || axis === "wall_s") return group[axis];
  return group.step.map(s => s * group.per_step[axis]);
}
function rgba(hex, alpha) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${n >> 16},${(n >> 8) & 255},${n & 255},${alpha})`;
}
function traces(plot, axis, weight) {
  const out = [];
  plot.groups.forEach((group, i) => {
    const color = COLORS[i % COLORS.length], x = xs(group, axis), mean = smooth(group.mean, weight);
    if (group.std) {
      const std = smooth(group.std, weight);
      out.push({x, y: mean.map((m, j) => m + std[j]), mode: "lines", line: {width: 0, color}, hoverinfo: "skip",
                showlegend: false, legendgroup: group.name});
      out.push({x, y: mean.map((m, j) => m - std[j]), mode: "lines", line: {width: 0, color}, fill: "tonexty",
                fillcolor: rgba(color, 0.2), hoverinfo: "skip", showlegend: false, legendgroup: group.name});
    }
    out.push({x, y: mean, mode: "lines", name: `${group.name} (${group.n} seed${group.n > 1 ? "s" : ""})`,
              line: {color}, legendgroup: group.name});
  });
  return out;
}
function draw() {
  const axis = select.value, weight = parseFloat(document.getElementById("smoothing").value);
  document.getElementById("smoothing-value").textContent = weight.toFixed(2);
  const logX = document.getElementById("log-x").checked, logY = document.getElementById("log-y").checked;
  return Promise.all(DATA.plots.map((plot, i) => Plotly.react(`plot-${i}`, traces(plot, axis, weight), {
    title: {text: plot.metric}, margin: {t: 40},
    xaxis: {title: {text: DATA.axes[axis]}, type: logX ? "log" : "linear"},
    yaxis: {title: {text: plot.metric}, type: logY ? "log" : "linear"},
  }, {responsive: true})));
}
for (const id of ["x-axis", "log-x", "log-y", "smoothing"]) document.getElementById(id).addEventListener("input", draw);
draw().then(() => document.body.setAttribute("data-plots-rendered", String(DATA.plots.length)));
"""
