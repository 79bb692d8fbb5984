"""Documented dataclass fields: every recipe key carries its own help text and its valid values (the choices of a
name, the range of a number).

`slmkit recipes --keys` and the recipe guide (docs/recipe-guide.md) are generated from these, and `check_values`
enforces them, so each is written once, here on the field.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import math
import typing
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Union

from slmkit.errors import SlmkitError
from slmkit.registry import Registry, did_you_mean

# A field's valid values: a fixed tuple of names, or "module:ATTRIBUTE" naming a Registry whose names are valid. The
# registry is named, not imported, because the modules that fill it often import the config that declares the field.
Choices = Union[tuple[str, ...], str, None]


@dataclass(frozen=True)
class Bounds:
    """The valid range of a number: `low`/`high` (None = unbounded), each included unless `*_open`; NaN and infinity
    are never valid. `also` holds special values outside the range (devices=-1 for all of them)."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    also: tuple[Any, ...] = ()

    def admits(self, value: Any) -> bool:
        if value in self.also:
            return True
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        low, high = _number(self.low), _number(self.high)
        if low is not None and high is not None:
            text = (f"between {low} and {high}" if not (self.low_open or self.high_open) else
                    f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}")
        elif low is not None:
            text = f"{'greater than' if self.low_open else 'at least'} {low}"
        elif high is not None:
            text = f"{'less than' if self.high_open else 'at most'} {high}"
        else:
            text = "a finite number"
        return text + "".join(f", or {value!r}" for value in self.also)


def _number(value: Optional[float]) -> Optional[str]:
    return None if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def at_least(low: float, also: tuple[Any, ...] = ()) -> Bounds:
    return Bounds(low=low, also=also)


def above(low: float) -> Bounds:
    return Bounds(low=low, low_open=True)


def between(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Bounds:
    return Bounds(low, high, low_open, high_open)


SEED = between(0, 2**32 - 1)  # what numpy and Lightning's seed_everything accept
FRACTION = between(0, 1)


def option(default: Any, doc: str, choices: Choices = None, bounds: Optional[Bounds] = None) -> Any:
    """A dataclass field with a default, a one-line description of what it controls, and its valid values: `choices`
    for a name, `bounds` for a number (None, where the type allows it, always means "unset").

    A doc never lists a registry's names or a range by hand: the generated help appends them.
    """
    metadata = {"doc": doc, "choices": choices, "bounds": bounds}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def registry_named(spec: str) -> Registry:
    """The Registry that a "module:ATTRIBUTE" choices spec names, imported now."""
    module, _, attribute = spec.partition(":")
    return getattr(importlib.import_module(module), attribute)


def check_choice(key: str, value: Any, choices: Choices) -> None:
    """Raises SlmkitError naming the valid values when `value` is not one of `choices`."""
    if choices is None:
        return
    if isinstance(value, list):  # a list of names: each one among the choices
        for item in value:
            check_choice(key, item, choices)
        return
    if isinstance(choices, str):
        registry = registry_named(choices)
        if value not in registry:
            raise SlmkitError(f"bad value {value!r} for {key}{registry.choices_hint(str(value))}")
    elif value not in choices:
        raise SlmkitError(
            f"bad value {value!r} for {key}{did_you_mean(str(value), list(choices))}; choose one of: {', '.join(choices)}"
        )


def check_bounds(key: str, value: Any, bounds: Optional[Bounds], doc: str = "") -> None:
    """Raises SlmkitError naming the valid range when the number `value` lies outside `bounds` (None passes)."""
    if bounds is None or value is None or bounds.admits(value):
        return
    raise SlmkitError(f"{key} is {value!r}; it must be {bounds}" + (f" — {doc}" if doc else ""))


def check_values(config: Any, prefix: str = "") -> None:
    """Rejects fields of a dataclass tree whose value is not among the field's choices or outside its bounds;
    `prefix` names the tree (`data.`)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_values(value, prefix=f"{key}.")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    check_values(item, prefix=f"{key}[{i}].")
        check_choice(key, value, f.metadata.get("choices"))
        check_bounds(key, value, f.metadata.get("bounds"), f.metadata.get("doc", ""))


@dataclass(frozen=True)
class Key:
    """One documented recipe key: dotted name (`data.sources[].path` for a field of each list item), type, default."""

    key: str
    type_name: str
    default: Any
    doc: str
    choices: Choices
    bounds: Optional[Bounds] = None

    def help(self) -> str:
        """The doc, followed by the registry's names when the choices come from one, and the valid range."""
        text = self.doc
        if isinstance(self.choices, str):
            text += f" One of: {', '.join(registry_named(self.choices).names())}."
        if self.bounds is not None:
            text += f" Valid: {self.bounds}."
        return text


@dataclass(frozen=True)
class Section:
    """The leaf keys of one dataclass in the tree: `data`, `data.clean`, `data.sources[]` (each list item), ..."""

    key: str  # "" for the root
    doc: str
    keys: list[Key]


def sections(config_class: type, key: str = "", doc: str = "") -> Iterator[Section]:
    """Every dataclass of the tree, depth first: its own leaf keys, then its nested dataclasses and list items."""
    hints = typing.get_type_hints(config_class)
    prefix = f"{key}." if key else ""
    leaves: list[Key] = []
    nested: list[tuple[type, str, str]] = []
    for f in dataclasses.fields(config_class):
        full, hint, field_doc = f"{prefix}{f.name}", hints[f.name], f.metadata.get("doc", "")
        if dataclasses.is_dataclass(hint):
            nested.append((hint, full, field_doc))
            continue
        leaves.append(Key(full, _type_name(f), _default(f), field_doc, f.metadata.get("choices"), f.metadata.get("bounds")))
        item = typing.get_args(hint)[0] if typing.get_origin(hint) is list else None
        if item is not None and dataclasses.is_dataclass(item):
            nested.append((item, f"{full}[]", field_doc))
    yield Section(key, doc, leaves)
    for nested_class, nested_key, nested_doc in nested:
        yield from sections(nested_class, nested_key, nested_doc)


def documented_keys(config_class: type) -> Iterator[Key]:
    """Every leaf key of a dataclass tree, list items' fields included."""
    for section in sections(config_class):
        yield from section.keys


def _type_name(f: dataclasses.Field) -> str:
    # Annotations stay strings (`from __future__ import annotations`): shown as written, e.g. Optional[int].
    return (f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))).replace("typing.", "")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def render_guide(config_class: type, title: str, intro: str) -> str:
    """A Markdown guide to every key of the tree, one table per section, and the registries that name choices."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [f"# {title}", "", intro, ""]
    registries: dict[str, list[str]] = {}
    for section in sections(config_class):
        if not section.keys:
            continue
        lines += [f"## `{section.key}`" if section.key else "## Top level", ""]
        if section.doc:
            lines += [section.doc, ""]
        lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for key in section.keys:
            lines.append(f"| `{key.key}` | {cell(key.type_name)} | `{cell(repr(key.default))}` | {cell(key.help())} |")
            if isinstance(key.choices, str):
                registries.setdefault(key.choices, []).append(key.key)
        lines.append("")
    lines += ["## Registries", "",
              "A key whose values come from a registry accepts every registered name: a new variant is one function "
              "and one `@REGISTRY.register(\"name\")`, in slmkit or in a plugin.", ""]
    for spec, keys in registries.items():
        registry = registry_named(spec)
        lines += [f"### {registry.kind} (`{spec}`)", ""]
        if registry.doc:
            lines += [registry.doc, ""]
        lines += [f"Names: {', '.join(f'`{name}`' for name in registry.names())}. "
                  f"Chosen by {', '.join(f'`{key}`' for key in keys)}.", ""]
    return "\n".join(lines).rstrip("\n") + "\n"
