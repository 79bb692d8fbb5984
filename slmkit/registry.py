"""Named registries of swappable parts (attention, positions, feed-forward, norms, task types, export formats).

A recipe picks a part by name; adding a variant is one function plus one `@REGISTRY.register("name")`, in slmkit or
in a plugin (see `slmkit.plugins`): every lookup first loads the installed plugins, so their parts are there too.
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from slmkit.errors import SlmkitError
from slmkit.plugins import REINSTALL, load_plugins, plugin_problem

T = TypeVar("T")


def did_you_mean(name: str, choices: list[str]) -> str:
    """A ' — did you mean X?' suffix for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" — did you mean {close[0]!r}?" if close else ""


class Registry(Generic[T]):
    """Maps names to implementations of one kind of part.

    `kind` names the part in error messages; `doc` says what an entry is and how it is called (the recipe guide
    shows it to whoever adds one).
    """

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

    def unregister(self, name: str) -> None:
        """Withdraws an entry: a test that registers a part for itself leaves the registry as it found it."""
        del self._entries[name]

    def get(self, name: str) -> T:
        if name not in self:
            raise SlmkitError(f"unknown {self.kind} {name!r}{self.choices_hint(name)}")
        return self._entries[name]

    def choices_hint(self, name: str) -> str:
        """'; choose one of: ...' with a did-you-mean for `name`, or why there is nothing to choose from."""
        names = self.names()
        if not names:
            return f"; no {self.kind} is registered at all: {plugin_problem() or 'no installed plugin provides one'}; {REINSTALL}"
        return f"{did_you_mean(name, names)}; choose one of: {', '.join(names)}"

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
