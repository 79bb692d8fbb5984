"""Documented dataclass fields: every recipe key carries its own help text.

`slmkit recipes --keys` and the recipe guide are generated from these docs, so they are written once, here.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Iterator


def option(default: Any, doc: str, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field with a default and a one-line description of what it controls.

    `choices` lists the valid values of a string field; validation rejects anything else with the list.
    """
    metadata = {"doc": doc, "choices": choices}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def documented_keys(config_class: type, prefix: str = "") -> Iterator[tuple[str, str, Any, str]]:
    """Yields (dotted key, type name, default, doc) for every leaf field of a dataclass tree."""
    for f in dataclasses.fields(config_class):
        key = f"{prefix}{f.name}"
        nested = f.type if isinstance(f.type, type) else None
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        )
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            yield from documented_keys(type(default), prefix=f"{key}.")
            continue
        if nested is not None and dataclasses.is_dataclass(nested):
            yield from documented_keys(nested, prefix=f"{key}.")
            continue
        type_name = getattr(f.type, "__name__", str(f.type)).replace("typing.", "")
        yield key, type_name, default, f.metadata.get("doc", "")
