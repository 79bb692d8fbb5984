"""Recipes: Hydra configs in recipes/ composed from groups (model, tokenizer, data, optim, trainer) plus overrides.

`resolve_recipe("legal-tiny", ["trainer=deepspeed-z2", "model.n_layer=4"])` -> a validated RunConfig. Group choices
go to Hydra's compose; dotted keys are applied on the typed schema so a typo is caught with a did-you-mean.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from importlib import resources
from pathlib import Path
from typing import Iterator, Sequence

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf

from slmkit.config import RunConfig, build_config, load_run_config, yaml_problem
from slmkit.errors import SlmkitError
from slmkit.registry import did_you_mean
from slmkit.tokenizer import check_extension

GROUPS = ("model", "tokenizer", "data", "optim", "trainer")


def recipes_dir() -> Path:
    """$SLMKIT_RECIPES, else the recipes shipped with slmkit (the repo's recipes/ folder, packaged in the wheel)."""
    override = os.environ.get("SLMKIT_RECIPES")
    if override:
        return Path(override)
    return Path(str(resources.files("slmkit") / "recipes"))


def recipe_names() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (recipes_dir() / group).glob("*.yaml"))


def split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """(group choices like `trainer=deepspeed-z2`, dotted value overrides like `trainer.max_steps=3`)."""
    groups, values = [], []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        (groups if key in GROUPS else values).append(override)
    return groups, values


def resolve_recipe(name: str, overrides: Sequence[str] = (), follow_init_from: bool = True) -> RunConfig:
    """The recipe composed with its group choices and key overrides, validated.

    With init_from, the model section and the tokenizer start from the source run's (the recipe and the overrides
    may still set keys on top); follow_init_from=False skips reading the source run (listing recipes).
    """
    group_choices, values = split_overrides(overrides)
    raw = recipe_file_layer(Path(name), group_choices) if is_recipe_file(name) else _composed(name, group_choices)
    raw.setdefault("name", Path(name).stem if is_recipe_file(name) else name)
    config = build_config(RunConfig, raw, overrides=values)
    if follow_init_from and (config.init_from or config.distill.teacher):
        # What the run starts from lies under the recipe: the teacher's tokenizer (and its model section, when the
        # student starts from the teacher's layers), then the init_from run's model and tokenizer. The distillation
        # objective refuses a student whose tokenizer then differs from its teacher's.
        from slmkit.checkpoint.starting_point import starting_point

        lowest = []
        if config.distill.teacher:
            from slmkit.distill.teacher import teacher_layer

            lowest.append(teacher_layer(config))
        from slmkit.checkpoint.hf_import import check_import_fits, import_layer, is_transformers_source

        # A transformers model (a folder or hf:ORG/NAME) is read through its family's row of the export table.
        imported = is_transformers_source(config.init_from)
        source = starting_point(config.init_from, "init_from") if config.init_from and not imported else None
        if imported:
            lowest.append(import_layer(config))
        if source is not None:
            lowest.append(source.layer(model=True))
        config = build_config(RunConfig, *lowest, raw, overrides=values)
        if imported:
            check_import_fits(config)
        if source is not None:
            source.check_same_tokenizer(Path(config.tokenizer.path))
    if follow_init_from or not config.init_from:
        check_extension(config.tokenizer)  # a domain vocabulary needs a BPE tokenizer to start from, before any work
    # vocab_size 0 means "the tokenizer's size", resolved when the tokenizer exists; check everything else now.
    dataclasses.replace(config.model, vocab_size=max(config.model.vocab_size, 1)).validate()
    return config


def _composed(name: str, group_choices: list[str]) -> dict:
    """A recipe of recipes/ composed by Hydra with its group choices, as plain data (interpolations kept)."""
    names = recipe_names()
    if name not in names:
        raise SlmkitError(f"unknown recipe {name!r}{did_you_mean(name, names)}; available: {', '.join(names)} (see `slmkit recipes`)")
    for choice in group_choices:
        group, _, option = choice.partition("=")
        options = group_options(group)
        if option not in options:
            raise SlmkitError(f"unknown {group} {option!r}{did_you_mean(option, options)}; choose one of: {', '.join(options)}")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(recipes_dir().resolve()), version_base=None):
            composed = compose(config_name=name, overrides=list(group_choices))
    except HydraException as err:
        raise SlmkitError(f"recipe {name!r} does not compose: {str(err).splitlines()[0]}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = mark.name if mark is not None and mark.name else f"a file of recipe {name!r}"
        raise SlmkitError(f"{where} is not valid YAML ({yaml_problem(err)}): fix it, or restore the recipe file") from None
    finally:
        GlobalHydra.instance().clear()
    return OmegaConf.to_container(composed, resolve=False)


def is_recipe_file(name: str) -> bool:
    """recipe=PATH: a YAML file (such as the best configuration `slmkit tune` writes) rather than a name in recipes/."""
    return name.endswith((".yaml", ".yml")) or "/" in name or os.sep in name


def recipe_file_layer(path: Path, group_choices: list[str]) -> dict:
    """A recipe file used as written: every key of the config it sets (recipes/ composition does not apply)."""
    if not path.is_file():
        raise SlmkitError(f"recipe={path}: no such file; name a recipe from `slmkit recipes` or the path of a recipe YAML")
    if group_choices:
        raise SlmkitError(f"recipe={path} is a file, used as written, so group choices ({group_choices[0]}) cannot "
                          "compose it: set the keys instead (e.g. trainer.strategy=ddp)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise SlmkitError(f"recipe={path} is not valid YAML ({yaml_problem(err)})") from None
    if not isinstance(raw, dict):
        raise SlmkitError(f"recipe={path} holds no mapping of keys: it is not a recipe")
    if "defaults" in raw:
        raise SlmkitError(f"recipe={path}: a recipe file outside recipes/ cannot compose groups (defaults:); put it in "
                          "recipes/ (or $SLMKIT_RECIPES) and name it, or write out every key")
    return raw


def expand_sweep(overrides: Sequence[str]) -> Iterator[list[str]]:
    """Hydra sweep syntax over any key: `optim.lr=1e-3,3e-4 model.n_layer=range(2,6,2)` -> each combination."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as err:
        raise SlmkitError(f"cannot parse overrides: {str(err).splitlines()[0]}") from None
    axes = [
        [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override() else [o.input_line]
        for o in parsed
    ]
    for combination in itertools.product(*axes):
        yield list(combination)


def count_parameters(config: RunConfig) -> tuple[int, bool]:
    """(parameter count, exact) of the recipe's model, built on the meta device so nothing is allocated.

    A recipe that takes its vocabulary from the tokenizer (model.vocab_size: 0) is counted without embeddings.
    """
    import torch

    from slmkit.model import Model

    model_config = config.model
    exact = model_config.vocab_size > 0
    if not exact:
        model_config = dataclasses.replace(model_config, vocab_size=1)
    with torch.device("meta"):
        model = Model(model_config)
    return model.num_parameters(non_embedding=not exact), exact


def format_count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def list_recipes(show_keys: bool = False) -> str:
    from slmkit.options import documented_keys

    rows = []
    for name in recipe_names():
        # A run from trained weights takes its model from a run that may not exist yet: name it instead.
        config = resolve_recipe(name, follow_init_from=False)
        m, t = config.model, config.trainer
        if config.init_from:
            params, model, tokenizer = "-", f"from {config.init_from}", "the init_from run's"
        elif config.distill.init_from_teacher:
            params, model, tokenizer = "-", f"{m.n_layer} layers of {config.distill.teacher}", "the teacher's"
        else:
            count, exact = count_parameters(config)
            params = format_count(count) + ("" if exact else " + emb")
            model = f"{m.n_layer}x{m.d_model} {m.positions}/{m.ffn}/{m.norm}" + (f" kv={m.kv_heads}" if m.kv_heads != m.n_head else "") + ("" if m.causal else " encoder")
            tokenizer = f"{config.tokenizer.kind} {config.tokenizer.vocab_size if config.tokenizer.kind != 'char' else 'chars'}"
        if config.objective.task:
            data = f"task {config.objective.task}"
        else:
            data = f"{len(config.data.sources)} source(s): " + ", ".join(s.name or s.path or s.hf_dataset or "?" for s in config.data.sources[:2]) \
                + (", ..." if len(config.data.sources) > 2 else "")
        rows.append((name, config.objective.name, params, model, tokenizer,
                     f"{t.strategy}{'-z' + str(t.zero_stage) if t.strategy == 'deepspeed' else ''} {t.precision}", data))
    header = ("recipe", "objective", "params", "model", "tokenizer", "trainer", "data")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    lines.append("")
    lines.append("groups (choose with group=option): " + "; ".join(f"{g}: {', '.join(group_options(g))}" for g in GROUPS))
    if show_keys:
        lines.append("")
        lines.append("keys (override with key=value):")
        for key in documented_keys(RunConfig):
            lines.append(f"  {key.key} ({key.type_name}, default {key.default!r}): {key.help()}")
    return "\n".join(lines)


GUIDE_INTRO = """Every key a recipe can set, generated from the config dataclasses (`slmkit/config.py`, `slmkit/data_config.py`,
`slmkit/model/config.py`): regenerate with `slmkit recipes --guide > docs/recipe-guide.md` after changing a field,
never edit by hand.

A recipe is a YAML file in `recipes/` composed from groups (`model`, `tokenizer`, `data`, `optim`, `trainer`);
`slmkit train recipe=NAME group=option key=value ...` picks group options and sets any key below on top.
`data.sources[].path` is the `path` of each item of the `data.sources` list."""


def recipe_guide() -> str:
    """docs/recipe-guide.md: every recipe key with type, default and meaning, and the registries of named parts."""
    from slmkit.options import render_guide

    return render_guide(RunConfig, "Recipe guide", GUIDE_INTRO)
