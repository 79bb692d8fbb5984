"""Named registries of swappable parts (attention, positions, feed-forward, norms, task types, export formats).

A recipe picks a part by name; adding a variant is one function plus one `@REGISTRY.register("name")`.
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from slmkit.errors import SlmkitError

T = TypeVar("T")


def did_you_mean(name: str, choices: list[str]) -> str:
    """A ' — did you mean X?' suffix for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" — did you mean {close[0]!r}?" if close else ""


class Registry(Generic[T]):
    """Maps names to implementations of one kind of part; `kind` names that part in error messages."""

    def __init__(self, kind: str, doc: str = ""):
        self.kind = kind
        self.doc = doc
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise SlmkitError(
                f"unknown {self.kind} {name!r}{did_you_mean(name, self.names())}; "
                f"choose one of: {', '.join(self.names())}"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
