"""Documented dataclass fields: every recipe key carries its own help text and, where it names a choice, its choices.

`slmkit recipes --keys` and the recipe guide (docs/recipe-guide.md) are generated from these, so each is written
once, here on the field.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import typing
from dataclasses import dataclass
from typing import Any, Iterator, Union

from slmkit.errors import SlmkitError
from slmkit.registry import Registry, did_you_mean

# A field's valid values: a fixed tuple of names, or "module:ATTRIBUTE" naming a Registry whose names are valid. The
# registry is named, not imported, because the modules that fill it often import the config that declares the field.
Choices = Union[tuple[str, ...], str, None]


def option(default: Any, doc: str, choices: Choices = None) -> Any:
    """A dataclass field with a default, a one-line description of what it controls, and its valid values.

    A doc never lists a registry's names by hand: the generated help appends them, so a new registration shows up.
    """
    metadata = {"doc": doc, "choices": choices}
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
    if isinstance(choices, str):
        registry = registry_named(choices)
        if value not in registry:
            raise SlmkitError(f"bad value {value!r} for {key}{registry.choices_hint(str(value))}")
    elif value not in choices:
        raise SlmkitError(
            f"bad value {value!r} for {key}{did_you_mean(str(value), list(choices))}; choose one of: {', '.join(choices)}"
        )


def check_choices(config: Any, prefix: str = "") -> None:
    """Rejects fields of a dataclass tree whose value is not among the field's choices; `prefix` names the tree."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_choices(value, prefix=f"{key}.")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    check_choices(item, prefix=f"{key}[{i}].")
        check_choice(key, value, f.metadata.get("choices"))


@dataclass(frozen=True)
class Key:
    """One documented recipe key: dotted name (`data.sources[].path` for a field of each list item), type, default."""

    key: str
    type_name: str
    default: Any
    doc: str
    choices: Choices

    def help(self) -> str:
        """The doc, followed by the registry's names when the choices come from one."""
        if isinstance(self.choices, str):
            return f"{self.doc} One of: {', '.join(registry_named(self.choices).names())}."
        return self.doc


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
        leaves.append(Key(full, _type_name(f), _default(f), field_doc, f.metadata.get("choices")))
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
