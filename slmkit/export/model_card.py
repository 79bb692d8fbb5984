"""Writes the README.md model card of an export from the run that produced it.

It states the recipe, the architecture and how it maps, the data manifest summary, eval results and the export's own
figures; whatever the run folder does not hold (no manifest, no eval/) is said to be absent, never invented.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slmkit.checkpoint.run_folder import RunFolder
from slmkit.config import RunConfig
from slmkit.data import RUN_MANIFEST


def model_card(config: RunConfig, run_dir: Path, export: dict[str, Any]) -> str:
    """The card's Markdown; `export` holds format, class/arch, dtype, files, size and any measured figures."""
    m = config.model
    lines = [
        f"# {config.name}",
        "",
        f"A {_size(export.get('parameters'))} {'causal' if m.causal else 'bidirectional'} transformer trained with slmkit "
        f"(recipe `{config.name}`, objective `{config.objective.name}`"
        + (f" on task `{config.objective.task}`" if config.objective.task else "")
        + (f", from the weights of `{config.init_from}`" if config.init_from else ", from scratch")
        + f"), exported as {export['format']}."
        + (f" Labels, in output order: {', '.join(f'`{label}`' for label in config.objective.labels)}." if config.objective.labels else ""),
        "",
        "## Use",
        "",
        *export.get("usage", []),
        "",
        "## Architecture",
        "",
        "| part | value |",
        "|---|---|",
        f"| layers / d_model / heads / kv heads | {m.n_layer} / {m.d_model} / {m.n_head} / {m.kv_heads} |",
        f"| context (block_size) | {m.block_size} |",
        f"| vocabulary | {m.vocab_size} |",
        f"| positions | {m.positions}" + (f" (theta {m.rope_theta:g})" if m.positions == "rope" else "") + " |",
        f"| feed-forward | {m.ffn}, hidden {m.ffn_hidden_size} |",
        f"| norm | {m.norm} (eps {m.norm_eps:g}) |",
        f"| sliding window | {m.sliding_window or 'none'} |",
        f"| qk-norm / bias / tied embeddings | {m.qk_norm} / {m.bias} / {m.tie_embeddings} |",
    ]
    for key, value in export.get("details", {}).items():
        lines.append(f"| {key} | {value} |")
    lines += ["", "## Training data", "", *_data_section(config, run_dir), "", "## Evaluation", "", *_eval_section(run_dir)]
    lines += ["", "## Training", "", *_training_section(config, run_dir, export.get("step"))]
    return "\n".join(lines) + "\n"


def _size(parameters: int | None) -> str:
    if not parameters:
        return "small"
    return f"{parameters / 1e6:.1f}M-parameter"


def _data_section(config: RunConfig, run_dir: Path) -> list[str]:
    sources = [s.name or s.path or s.hf_dataset or "?" for s in config.data.sources]
    lines = [f"Sources in the recipe: {', '.join(f'`{s}`' for s in sources) if sources else 'none recorded'}."]
    manifest_path = RunFolder(run_dir).data_manifest  # training copies the manifest of its token shards there
    if not manifest_path.is_file():
        return lines + ["", f"The run folder has no {RUN_MANIFEST}, so token counts are not reported."]
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        return lines + ["", f"The data manifest at `{manifest_path}` could not be read ({err})."]
    lines += ["", "| split | documents | tokens |", "|---|---|---|"]
    for split, info in manifest.get("splits", {}).items():
        lines.append(f"| {split} | {info.get('documents', '?')} | {info.get('tokens', '?')} |")
    lines += ["", f"Vocabulary {manifest.get('vocab_size', '?')}, tokenizer sha256 `{str(manifest.get('tokenizer_sha256', '?'))[:16]}`."]
    return lines


def _eval_section(run_dir: Path) -> list[str]:
    reports = sorted((run_dir / "eval").glob("*.json")) if (run_dir / "eval").is_dir() else []
    if not reports:
        return ["No evaluation reports were found in the run folder (`eval/*.json`)."]
    lines = ["| report | metric | value |", "|---|---|---|"]
    for path in reports:
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            lines.append(f"| {path.stem} | (unreadable) | |")
            continue
        for metric, value in _numbers(report):
            lines.append(f"| {path.stem} | {metric} | {value:.4g} |")
    return lines


def _numbers(report: Any, prefix: str = "", depth: int = 0) -> list[tuple[str, float]]:
    """Numeric leaves of a report, as dotted names, at most three levels deep (reports nest task -> metric)."""
    if isinstance(report, bool):
        return []
    if isinstance(report, (int, float)):
        return [(prefix or "value", float(report))]
    if isinstance(report, dict) and depth < 3:
        found = []
        for key, value in report.items():
            found += _numbers(value, f"{prefix}.{key}" if prefix else str(key), depth + 1)
        return found
    return []


def _training_section(config: RunConfig, run_dir: Path, step: int | None) -> list[str]:
    t, o = config.trainer, config.optim
    lines = []
    if step is not None and step < t.max_steps:
        lines += [f"**Unfinished: the run stopped at step {step} of the {t.max_steps} it planned. These are the weights "
                  f"of its checkpoint at step {step}, not a final model.**", ""]
    steps = f"{step} steps" if step is not None else f"{t.max_steps} steps planned (the weights do not record their step)"
    lines.append(
        f"{steps}, micro-batch {t.micro_batch_size} x accumulation {t.grad_accum}, precision {t.precision}, "
        f"AdamW lr {o.lr:g} ({o.schedule}, warmup {o.warmup_steps}), weight decay {o.weight_decay:g}."
    )
    last_val = _last_metric(RunFolder(run_dir).metrics, "val_loss")
    if last_val is not None:
        lines.append(f"Final validation loss: {last_val:.4f}.")
    return lines


def _last_metric(path: Path, name: str) -> float | None:
    if not path.is_file():
        return None
    value = None
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        for key in (name, name.replace("_", "/")):
            if isinstance(record.get(key), (int, float)):
                value = float(record[key])
    return value
